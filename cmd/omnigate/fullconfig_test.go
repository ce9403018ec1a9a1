package main

import (
	"encoding"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/omnigate/omnigate/builtin/fhir"
	"github.com/omnigate/omnigate/gateway"
)

// TestFullConfigShowsEverySetting: examples/configs/full.yaml is the
// reference of every setting, so every key of the gateway's config, of the
// FHIR server's and of every plugin type's must appear in it — as a key
// where it belongs, or, for an alternative that cannot be set together
// with the one shown (redis.cluster beside redis.url), in a comment
// ("# cluster: …"). A field added to a config struct without a line here
// fails this test.
func TestFullConfigShowsEverySetting(t *testing.T) {
	const file = "../../examples/configs/full.yaml"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	root := doc.Content[0]
	w := &shownWalker{commented: commentedKeys(string(data))}
	w.check("", reflect.TypeOf(gateway.Config{}), []*yaml.Node{root})
	w.check("fhir", reflect.TypeOf(fhir.Config{}), []*yaml.Node{mapValue(root, "fhir")})

	// Plugins: every registered type has at least one instance, and the
	// instances of a type together show every key of its config.
	byType := map[string][]*yaml.Node{}
	if plugins := mapValue(root, "plugins"); plugins != nil {
		for i := 0; i+1 < len(plugins.Content); i += 2 {
			inst := plugins.Content[i+1]
			if typ := mapValue(inst, "type"); typ != nil {
				byType[typ.Value] = append(byType[typ.Value], inst)
			}
		}
	}
	for _, typ := range gateway.PluginTypes() {
		if strings.HasPrefix(typ, "test") {
			continue
		}
		cfg, _ := gateway.PluginConfig(typ)
		if len(byType[typ]) == 0 {
			// A type whose instance cannot be checked as it is (its
			// file must exist) may be shown commented out: the block is
			// uncommented and checked like the others.
			inst, err := commentedInstance(string(data), typ)
			if err != nil {
				w.missing = append(w.missing, fmt.Sprintf("plugins: no plugin of type %s (%v)", typ, err))
				continue
			}
			byType[typ] = []*yaml.Node{inst}
		}
		w.check("plugins.<"+typ+">", reflect.TypeOf(cfg), byType[typ])
	}
	sort.Strings(w.missing)
	for _, m := range w.missing {
		t.Errorf("%s does not show %s", file, m)
	}
}

type shownWalker struct {
	commented map[string]bool
	missing   []string
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	nodeType     = reflect.TypeOf(yaml.Node{})
	textType     = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
)

// check reports every key of struct type typ that none of the mapping
// nodes holds (nor a comment names), and recurses into the nodes that do.
func (w *shownWalker) check(path string, typ reflect.Type, nodes []*yaml.Node) {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct {
		return
	}
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if opts == "inline" || f.Anonymous && name == "" {
			w.check(path, f.Type, nodes)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		key := strings.TrimPrefix(path+"."+name, ".")
		var values []*yaml.Node
		for _, n := range nodes {
			if v := mapValue(n, name); v != nil {
				values = append(values, v)
			}
		}
		if len(values) == 0 {
			if !w.commented[name] {
				w.missing = append(w.missing, key)
			}
			continue
		}
		w.checkValue(key, f.Type, values)
	}
}

// checkValue recurses into what a field holds: a struct, a pointer to
// one, a list of them or a map of them.
func (w *shownWalker) checkValue(key string, typ reflect.Type, values []*yaml.Node) {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ == durationType || typ == nodeType || reflect.PointerTo(typ).Implements(textType) {
		return
	}
	switch typ.Kind() {
	case reflect.Struct:
		w.check(key, typ, kind(values, yaml.MappingNode))
	case reflect.Slice:
		var items []*yaml.Node
		for _, v := range kind(values, yaml.SequenceNode) {
			items = append(items, v.Content...)
		}
		if len(items) > 0 {
			w.checkValue(key+"[]", typ.Elem(), items)
		}
	case reflect.Map:
		var items []*yaml.Node
		for _, v := range kind(values, yaml.MappingNode) {
			for i := 1; i < len(v.Content); i += 2 {
				items = append(items, v.Content[i])
			}
		}
		if len(items) > 0 {
			w.checkValue(key+".*", typ.Elem(), items)
		}
	}
}

func kind(nodes []*yaml.Node, k yaml.Kind) []*yaml.Node {
	var out []*yaml.Node
	for _, n := range nodes {
		if n.Kind == yaml.AliasNode {
			n = n.Alias
		}
		if n.Kind == k {
			out = append(out, n)
		}
	}
	return out
}

// mapValue returns the value of key in mapping n, following merge keys.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil {
		return nil
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
		if n.Content[i].Value == "<<" {
			if v := mapValue(n.Content[i+1], key); v != nil {
				return v
			}
		}
	}
	return nil
}

var commentedKeyRE = regexp.MustCompile(`(?m)#\s*(?:-\s*)?([a-z_][a-z0-9_]*):`)

// commentedKeys lists the keys that comments show ("# cluster: …").
func commentedKeys(s string) map[string]bool {
	keys := map[string]bool{}
	for _, m := range commentedKeyRE.FindAllStringSubmatch(s, -1) {
		keys[m[1]] = true
	}
	return keys
}

// commentedInstance finds a plugin instance of type typ shown commented
// out ("  # name:" then "  #   type: typ" and its keys, each line one level
// deeper) and returns its config as a node.
func commentedInstance(file, typ string) (*yaml.Node, error) {
	lines := strings.Split(file, "\n")
	uncomment := func(l string) (string, bool) {
		t := strings.TrimLeft(l, " ")
		if !strings.HasPrefix(t, "# ") {
			return "", false
		}
		return l[:len(l)-len(t)] + t[2:], true
	}
	indent := func(l string) int { return len(l) - len(strings.TrimLeft(l, " ")) }
	typeRE := regexp.MustCompile(`^\s*type:\s*` + regexp.QuoteMeta(typ) + `\s*(#.*)?$`)
	for i := 1; i < len(lines); i++ {
		l, ok := uncomment(lines[i])
		if !ok || !typeRE.MatchString(l) {
			continue
		}
		name, ok := uncomment(lines[i-1])
		if !ok || !strings.HasSuffix(strings.TrimSpace(name), ":") {
			continue
		}
		block := []string{name}
		for _, next := range lines[i:] {
			u, ok := uncomment(next)
			if !ok || indent(u) <= indent(name) {
				break
			}
			block = append(block, u)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(strings.Join(block, "\n")), &doc); err != nil {
			return nil, fmt.Errorf("the commented-out instance does not parse: %w", err)
		}
		m := doc.Content[0]
		if m.Kind != yaml.MappingNode || len(m.Content) != 2 {
			return nil, fmt.Errorf("the commented-out instance is not one mapping")
		}
		return m.Content[1], nil
	}
	return nil, fmt.Errorf("none, not even commented out")
}
