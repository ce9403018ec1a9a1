// Package confyaml decodes YAML nodes into Go structs strictly: an unknown
// key, a duplicate key or a value of the wrong kind is an error that names the
// file, the line, the column and the dotted key path. It also records where
// every key was found, so that later validation can point at the same place.
//
// Keys that begin with "x-" are ignored, so a file can hold YAML anchors
// for reuse (x-defaults: &defaults …).
//
// Supported targets: structs (fields by `yaml:"name"` tag, `yaml:",inline"`
// for embedded structs, `yaml:"-"` to skip), pointers, slices, maps with
// string keys, strings, bools, integers, floats, time.Duration (Go syntax,
// "250ms"), yaml.Node (kept raw, for decoding later), and any type that
// implements encoding.TextUnmarshaler for scalar values.
package confyaml

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Pos is a place in a config file.
type Pos struct {
	Line, Column int
}

// Error is a decoding or validation error at a place in a file.
type Error struct {
	File string
	Pos  Pos
	Key  string // dotted path, e.g. routes[1].upstream
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Pos.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Pos.Line)
		if e.Pos.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Pos.Column)
		}
	}
	if e.Key != "" {
		b.WriteString(": ")
		b.WriteString(e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Decoder decodes nodes of one file and records the position of every key.
type Decoder struct {
	File      string
	Positions map[string]Pos
	errs      []error
}

// NewDecoder returns a decoder for nodes read from file.
func NewDecoder(file string) *Decoder {
	return &Decoder{File: file, Positions: map[string]Pos{}}
}

// Parse reads one YAML document. An empty document yields a nil node. A
// syntax error is reported at the line where the document stops being
// valid YAML (see locate), with the column of that line's first character.
func Parse(file string, data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		e := parseError(file, err)
		if pos, ok := locate(data, e.Pos.Line, e.Err.Error()); ok {
			e.Pos = pos
		}
		return nil, e
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

// maxLocateLines bounds the work locate does (it parses up to this many
// prefixes); on a longer file the error keeps yaml.v3's line.
const maxLocateLines = 1000

// locate finds where a syntax error is. yaml.v3 reports the line where the
// enclosing block began (a bad indent on line 6 of a list that starts on
// line 2 is "line 2"), so the error is found again by parsing ever longer
// prefixes of the file: the first prefix that fails with the same message
// ends on the offending line. A prefix that fails differently (cut inside a
// quoted scalar, say) is passed over. The search starts at from, the line
// yaml.v3 named, since the error cannot come before the block it is in.
func locate(data []byte, from int, msg string) (Pos, bool) {
	lines := strings.SplitAfter(string(data), "\n")
	from = max(from, 1)
	if len(lines)-from > maxLocateLines {
		return Pos{}, false
	}
	var prefix strings.Builder
	for i, l := range lines {
		prefix.WriteString(l)
		if i+1 < from {
			continue
		}
		var doc yaml.Node
		err := yaml.Unmarshal([]byte(prefix.String()), &doc)
		if err == nil || parseError("", err).Err.Error() != msg {
			continue
		}
		col := 1 + len(l) - len(strings.TrimLeft(l, " \t"))
		return Pos{Line: i + 1, Column: col}, true
	}
	return Pos{}, false
}

// parseError turns yaml.v3's "yaml: line N: msg" into an *Error.
func parseError(file string, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.Index(rest, ": "); i > 0 {
			if n, e := strconv.Atoi(rest[:i]); e == nil {
				line, msg = n, rest[i+2:]
			}
		}
	}
	return &Error{File: file, Pos: Pos{Line: line}, Err: errors.New(msg)}
}

// Errorf records an error at node n for key.
func (d *Decoder) Errorf(n *yaml.Node, key, format string, args ...any) {
	d.errs = append(d.errs, d.At(n, key, fmt.Errorf(format, args...)))
}

// At wraps err with the place of node n (which may be nil) and key.
func (d *Decoder) At(n *yaml.Node, key string, err error) *Error {
	p := d.Positions[key]
	if n != nil {
		p = Pos{n.Line, n.Column}
	}
	return &Error{File: d.File, Pos: p, Key: key, Err: err}
}

// AtKey wraps err with the recorded place of key. When the key was not in the
// file, the closest recorded parent key is used.
func (d *Decoder) AtKey(key string, err error) *Error {
	k := key
	for k != "" {
		if p, ok := d.Positions[k]; ok {
			return &Error{File: d.File, Pos: p, Key: key, Err: err}
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return &Error{File: d.File, Key: key, Err: err}
}

// Add records an error made elsewhere.
func (d *Decoder) Add(err error) { d.errs = append(d.errs, err) }

// Count returns how many errors were recorded so far.
func (d *Decoder) Count() int { return len(d.errs) }

// Err returns every error recorded so far, in file order, joined, or nil.
func (d *Decoder) Err() error {
	errs := append([]error(nil), d.errs...)
	line := func(err error) int {
		var e *Error
		if errors.As(err, &e) && e.Pos.Line > 0 {
			return e.Pos.Line
		}
		return math.MaxInt
	}
	sort.SliceStable(errs, func(i, j int) bool { return line(errs[i]) < line(errs[j]) })
	return errors.Join(errs...)
}

// Decode decodes n into out, a non-nil pointer. Keys are recorded under
// prefix. Errors are collected; Decode returns them joined.
func (d *Decoder) Decode(n *yaml.Node, out any, prefix string) error {
	before := len(d.errs)
	v := reflect.ValueOf(out)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return fmt.Errorf("confyaml: decode target must be a non-nil pointer, got %T", out)
	}
	if n != nil {
		d.value(n, v.Elem(), prefix)
	}
	return errors.Join(d.errs[before:]...)
}

var (
	durationType        = reflect.TypeFor[time.Duration]()
	nodeType            = reflect.TypeFor[yaml.Node]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func (d *Decoder) value(n *yaml.Node, v reflect.Value, key string) {
	n = resolveAlias(n)
	if _, seen := d.Positions[key]; !seen || key == "" {
		d.Positions[key] = Pos{n.Line, n.Column}
	}
	if v.Type() == nodeType {
		v.Set(reflect.ValueOf(*n))
		return
	}
	if isNull(n) {
		v.SetZero()
		return
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.value(n, v.Elem(), key)
		return
	}
	if n.Kind == yaml.ScalarNode && reflect.PointerTo(v.Type()).Implements(textUnmarshalerType) {
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.Errorf(n, key, "%v", err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.structValue(n, v, key)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.Errorf(n, key, "expected a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.value(c, s.Index(i), fmt.Sprintf("%s[%d]", key, i))
		}
		v.Set(s)
	case reflect.Map:
		if v.Type().Key().Kind() != reflect.String {
			d.Errorf(n, key, "confyaml: unsupported map key type %s", v.Type().Key())
			return
		}
		pairs := d.mappingPairs(n, key)
		if pairs == nil && n.Kind != yaml.MappingNode {
			return
		}
		m := reflect.MakeMapWithSize(v.Type(), len(pairs))
		for _, p := range pairs {
			ev := reflect.New(v.Type().Elem()).Elem()
			d.value(p.val, ev, join(key, p.key.Value))
			m.SetMapIndex(reflect.ValueOf(p.key.Value).Convert(v.Type().Key()), ev)
		}
		v.Set(m)
	case reflect.Interface:
		var x any
		if err := n.Decode(&x); err != nil {
			d.Errorf(n, key, "%v", err)
			return
		}
		if x != nil {
			v.Set(reflect.ValueOf(x))
		}
	default:
		d.scalar(n, v, key)
	}
}

type pair struct{ key, val *yaml.Node }

// mappingPairs returns the key/value pairs of a mapping node, resolving
// merge keys (<<) and reporting duplicate keys.
func (d *Decoder) mappingPairs(n *yaml.Node, key string) []pair {
	if n.Kind != yaml.MappingNode {
		d.Errorf(n, key, "expected a mapping, got %s", kindName(n))
		return nil
	}
	var out []pair
	seen := map[string]bool{}
	var merged []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			src := resolveAlias(val)
			var srcs []*yaml.Node
			if src.Kind == yaml.SequenceNode {
				for _, s := range src.Content {
					srcs = append(srcs, resolveAlias(s))
				}
			} else {
				srcs = []*yaml.Node{src}
			}
			for _, s := range srcs {
				merged = append(merged, d.mappingPairs(s, key)...)
			}
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.Errorf(k, key, "mapping keys must be scalars")
			continue
		}
		if seen[k.Value] {
			d.Errorf(k, join(key, k.Value), "duplicate key")
			continue
		}
		seen[k.Value] = true
		out = append(out, pair{k, val})
	}
	for _, p := range merged {
		if !seen[p.key.Value] {
			seen[p.key.Value] = true
			out = append(out, p)
		}
	}
	return out
}

type fieldInfo struct {
	index []int
}

func structFields(t reflect.Type) map[string]fieldInfo {
	fields := map[string]fieldInfo{}
	var walk func(t reflect.Type, index []int)
	walk = func(t reflect.Type, index []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			tag := f.Tag.Get("yaml")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(append([]int(nil), index...), i)
			if strings.Contains(opts, "inline") && f.Type.Kind() == reflect.Struct {
				walk(f.Type, idx)
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			fields[name] = fieldInfo{index: idx}
		}
	}
	walk(t, nil)
	return fields
}

func (d *Decoder) structValue(n *yaml.Node, v reflect.Value, key string) {
	pairs := d.mappingPairs(n, key)
	if pairs == nil {
		return
	}
	fields := structFields(v.Type())
	for _, p := range pairs {
		if strings.HasPrefix(p.key.Value, "x-") {
			continue // extension keys hold YAML anchors for reuse
		}
		k := join(key, p.key.Value)
		f, ok := fields[p.key.Value]
		if !ok {
			d.Positions[k] = Pos{p.key.Line, p.key.Column}
			d.errs = append(d.errs, &Error{File: d.File, Pos: Pos{p.key.Line, p.key.Column}, Key: k,
				Err: unknownKeyError(p.key.Value, fields)})
			continue
		}
		d.Positions[k] = Pos{p.key.Line, p.key.Column}
		d.value(p.val, v.FieldByIndex(f.index), k)
	}
}

func unknownKeyError(k string, fields map[string]fieldInfo) error {
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	best, bestDist := "", 3
	for _, name := range names {
		if dist := editDistance(k, name); dist < bestDist {
			best, bestDist = name, dist
		}
	}
	if best != "" {
		return fmt.Errorf("unknown key %q (did you mean %q?)", k, best)
	}
	return fmt.Errorf("unknown key %q (known keys: %s)", k, strings.Join(names, ", "))
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

func (d *Decoder) scalar(n *yaml.Node, v reflect.Value, key string) {
	if n.Kind != yaml.ScalarNode {
		d.Errorf(n, key, "expected %s, got %s", typeName(v.Type()), kindName(n))
		return
	}
	s := n.Value
	if v.Type() == durationType {
		dur, err := time.ParseDuration(s)
		if err != nil {
			d.Errorf(n, key, "invalid duration %q (use Go syntax such as 500ms, 10s, 5m)", s)
			return
		}
		v.SetInt(int64(dur))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			d.Errorf(n, key, "expected true or false, got %q", s)
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, err := strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 0, v.Type().Bits())
		if err != nil {
			d.Errorf(n, key, "expected an integer, got %q", s)
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		i, err := strconv.ParseUint(strings.ReplaceAll(s, "_", ""), 0, v.Type().Bits())
		if err != nil {
			d.Errorf(n, key, "expected a non-negative integer, got %q", s)
			return
		}
		v.SetUint(i)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(s, v.Type().Bits())
		if err != nil || math.IsNaN(f) {
			d.Errorf(n, key, "expected a number, got %q", s)
			return
		}
		v.SetFloat(f)
	default:
		d.Errorf(n, key, "confyaml: unsupported type %s", v.Type())
	}
}

func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return "a scalar"
}
