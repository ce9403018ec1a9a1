package profile

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// Issue is one problem validation found.
type Issue struct {
	// Severity is error or warning.
	Severity string
	// Code is from the FHIR IssueType value set: required, structure,
	// value, code-invalid, invariant, not-supported.
	Code string
	// Expression is the FHIRPath location of the element
	// ("Observation.status", "Patient.extension[0].extension").
	Expression string
	Message    string
}

// Options says what Validate checks.
type Options struct {
	// Core checks the resource against the core definition of its type.
	Core bool
	// Profiles checks the resource against the profiles its meta.profile
	// declares; an unknown one is a warning.
	Profiles bool
	// Extra are more profiles to check against (the profile parameter of
	// $validate); an unknown one is an error.
	Extra []string
}

// maxDepth bounds how deep validation descends into nested elements.
const maxDepth = 64

// typeOf maps a choice suffix (DateTime) to its type (dateTime).
func typeOf(suffix string) string { return spec.DataTypes[suffix] }

// Validate checks resource (decoded with UseNumber) and returns every
// issue found, in document order.
func (s *Set) Validate(resource map[string]any, o Options) []Issue {
	rt, _ := resource["resourceType"].(string)
	w := &walker{set: s, root: resource}
	if o.Core {
		if st := s.core[rt]; st != nil {
			w.against(resource, st, rt, 0)
		}
	}
	var profiles []string
	if o.Profiles {
		if meta, ok := resource["meta"].(map[string]any); ok {
			ps, _ := meta["profile"].([]any)
			for i, p := range ps {
				url, _ := p.(string)
				st := s.Structure(url)
				switch {
				case st == nil:
					w.add("warning", "not-supported", fmt.Sprintf("%s.meta.profile[%d]", rt, i),
						fmt.Sprintf("profile %s is not known to the server: not checked", url))
				case s.core[st.Type] == st:
					// The core definition, checked above.
				default:
					profiles = append(profiles, url)
				}
			}
		}
	}
	for _, url := range o.Extra {
		st := s.Structure(url)
		if st == nil {
			w.add("error", "not-supported", rt, fmt.Sprintf("profile %s is not known to the server", url))
			continue
		}
		profiles = append(profiles, url)
	}
	for _, url := range profiles {
		st := s.Structure(url)
		if st.Type != rt {
			w.add("error", "invalid", rt, fmt.Sprintf("profile %s is for %s, not %s", url, st.Type, rt))
			continue
		}
		w.against(resource, st, rt, 0)
	}
	return w.issues
}

type walker struct {
	set    *Set
	root   map[string]any
	issues []Issue
	seen   map[Issue]bool
}

func (w *walker) add(severity, code, expr, msg string) {
	is := Issue{Severity: severity, Code: code, Expression: expr, Message: msg}
	if w.seen[is] {
		return
	}
	if w.seen == nil {
		w.seen = map[Issue]bool{}
	}
	w.seen[is] = true
	w.issues = append(w.issues, is)
}

// against checks v (a resource, or a value of a data type) against st:
// the invariants of its root, then its elements.
func (w *walker) against(res map[string]any, st *Structure, expr string, depth int) {
	w.invariants(st.root, res, st.Type, expr)
	w.object(res, st.root, expr, depth)
}

// value is one occurrence of an element: its JSON value, and for a
// primitive the object of its "_name" sibling.
type value struct {
	v    any
	ext  map[string]any
	typ  string // the type of a choice element's value, from its name
	expr string
}

// object checks the children of obj against the element e.
func (w *walker) object(obj map[string]any, e *elem, expr string, depth int) {
	if depth > maxDepth {
		w.add("error", "structure", expr, "elements nest too deep")
		return
	}
	for _, g := range e.groups {
		vals, mixed := w.collect(obj, g, expr)
		b := g.base
		if len(vals) < b.min {
			w.add("error", "required", expr+"."+g.name,
				fmt.Sprintf("%s: minimum required = %d, but only found %d", b.path, b.min, len(vals)))
		}
		if b.max >= 0 && len(vals) > b.max && !mixed {
			w.add("error", "structure", expr+"."+g.name,
				fmt.Sprintf("%s: maximum allowed = %d, but found %d", b.path, b.max, len(vals)))
		}
		for _, v := range vals {
			w.value(v, b, depth)
		}
		if len(g.slices) > 0 && b.slicing != nil {
			w.slices(g, vals, expr, depth)
		}
	}
}

// collect gathers the occurrences of g's element in obj; mixed reports
// that a choice element was given in more than one type (an issue added
// here).
func (w *walker) collect(obj map[string]any, g *group, expr string) (vals []value, mixed bool) {
	if !g.choice {
		return occurrences(obj, g.name, "", expr), false
	}
	var keys []string
	for k := range obj {
		if len(k) > len(g.name) && strings.HasPrefix(k, g.name) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []value
	var found []string
	for _, k := range keys {
		if len(k) <= len(g.name) || !strings.HasPrefix(k, g.name) || !unicode.IsUpper(rune(k[len(g.name)])) {
			continue
		}
		suffix := k[len(g.name):]
		typ := typeOf(suffix)
		if typ == "" {
			continue // not a type: an element of its own, or unknown (the schema's)
		}
		if !allows(g.base.types, typ) {
			w.add("error", "structure", expr+"."+k,
				fmt.Sprintf("%s: type %s is not allowed here (allowed: %s)", g.base.path, typ, typeList(g.base.types)))
			continue
		}
		found = append(found, k)
		out = append(out, occurrences(obj, k, typ, expr)...)
	}
	if len(found) > 1 {
		w.add("error", "structure", expr+"."+g.name,
			fmt.Sprintf("%s: only one type may be given, found %s", g.base.path, strings.Join(found, ", ")))
	}
	return out, len(found) > 1
}

func allows(types []TypeRef, typ string) bool {
	for _, t := range types {
		if t.Code == typ {
			return true
		}
	}
	return false
}

func typeList(types []TypeRef) string {
	var s []string
	for _, t := range types {
		s = append(s, t.Code)
	}
	return strings.Join(s, ", ")
}

// occurrences returns the values of member name of obj (and of "_name").
func occurrences(obj map[string]any, name, typ, expr string) []value {
	v, hasV := obj[name]
	x, hasX := obj["_"+name]
	if !hasV && !hasX {
		return nil
	}
	arr, isArr := v.([]any)
	xarr, isXArr := x.([]any)
	if !isArr && !isXArr {
		if v == nil && x == nil {
			return nil
		}
		xm, _ := x.(map[string]any)
		return []value{{v: v, ext: xm, typ: typ, expr: expr + "." + name}}
	}
	n := max(len(arr), len(xarr))
	out := make([]value, 0, n)
	for i := 0; i < n; i++ {
		var val value
		if i < len(arr) {
			val.v = arr[i]
		}
		if i < len(xarr) {
			val.ext, _ = xarr[i].(map[string]any)
		}
		if val.v == nil && val.ext == nil {
			continue
		}
		val.typ = typ
		val.expr = expr + "." + name + "[" + strconv.Itoa(i) + "]"
		out = append(out, val)
	}
	return out
}

// value checks one occurrence against the element e.
func (w *walker) value(v value, e *elem, depth int) {
	typ := v.typ
	if typ == "" && len(e.types) == 1 {
		typ = e.types[0].Code
	}
	if v.v != nil {
		if e.fixed != nil && !equalJSON(v.v, e.fixed) {
			w.add("error", "value", v.expr, fmt.Sprintf("%s: value must be exactly %s", e.path, compact(e.fixed)))
		}
		if e.pattern != nil && !matches(v.v, e.pattern) {
			w.add("error", "value", v.expr, fmt.Sprintf("%s: value must match %s", e.path, compact(e.pattern)))
		}
		if e.valueSet != "" {
			w.binding(v.v, typ, e, v.expr)
		}
		w.invariants(e, v.v, typ, v.expr)
	}
	if m, ok := v.v.(map[string]any); ok {
		if !hasContent(m) {
			w.add("error", "invariant", v.expr, "ele-1: All FHIR elements must have a @value or children")
			return
		}
		w.children(m, e, typ, v.expr, depth)
	}
	if v.ext != nil {
		if !hasContent(v.ext) {
			w.add("error", "invariant", v.expr, "ele-1: All FHIR elements must have a @value or children")
			return
		}
		if st := w.set.core[typ]; st != nil {
			w.object(v.ext, st.root, v.expr, depth+1)
		}
	}
}

// children checks the members of m, an occurrence of e of type typ.
func (w *walker) children(m map[string]any, e *elem, typ, expr string, depth int) {
	if typ == "Resource" || spec.IsResourceType(typ) {
		rt, _ := m["resourceType"].(string)
		if st := w.set.core[rt]; st != nil {
			w.against(m, st, expr, depth+1)
		}
		return
	}
	if len(e.groups) > 0 && (len(e.types) <= 1 || e.contentRef != "") {
		w.object(m, e, expr, depth+1)
		return
	}
	if len(e.types) == 1 {
		for _, p := range e.types[0].Profile {
			if st := w.set.Structure(p); st != nil && st.Type == typ {
				w.against(m, st, expr, depth+1)
				return
			}
		}
	}
	if st := w.set.core[typ]; st != nil {
		w.against(m, st, expr, depth+1)
	}
}

func hasContent(m map[string]any) bool {
	for k := range m {
		if k != "id" {
			return true
		}
	}
	return false
}

func (w *walker) invariants(e *elem, v any, typ, expr string) {
	for _, inv := range e.invariants {
		if !inv.expr.Holds(w.root, v, typ, typeOf) {
			w.add("error", "invariant", expr, inv.key+": "+inv.human)
		}
	}
}

// binding checks v against e's required value set, by the R4 rules for
// each type: a code, string or uri must be one of its codes; a Coding's
// system and code must be; a CodeableConcept needs one such Coding.
func (w *walker) binding(v any, typ string, e *elem, expr string) {
	codes, ok := w.set.codes[e.valueSet]
	if !ok {
		return // not expandable offline: see Unexpandable
	}
	switch typ {
	case "code", "string", "uri":
		s, ok := v.(string)
		if ok && !codes.has("", s) {
			w.add("error", "code-invalid", expr, fmt.Sprintf("%s: %q is not in the value set %s", e.path, s, e.valueSet))
		}
	case "Coding":
		m, _ := v.(map[string]any)
		if c := codingOf(m); c != "" && !inCodes(codes, m) {
			w.add("error", "code-invalid", expr, fmt.Sprintf("%s: %s is not in the value set %s", e.path, c, e.valueSet))
		}
	case "CodeableConcept":
		m, _ := v.(map[string]any)
		cs, _ := m["coding"].([]any)
		var tried []string
		for _, c := range cs {
			cm, _ := c.(map[string]any)
			if inCodes(codes, cm) {
				return
			}
			if s := codingOf(cm); s != "" {
				tried = append(tried, s)
			}
		}
		if len(tried) == 0 {
			w.add("error", "code-invalid", expr, fmt.Sprintf("%s: no code given, and one from the value set %s is required", e.path, e.valueSet))
			return
		}
		w.add("error", "code-invalid", expr, fmt.Sprintf("%s: none of the codes %s is in the value set %s", e.path, strings.Join(tried, ", "), e.valueSet))
	}
}

func codingOf(m map[string]any) string {
	code, _ := m["code"].(string)
	if code == "" {
		return ""
	}
	sys, _ := m["system"].(string)
	return sys + "#" + code
}

func inCodes(codes Codes, m map[string]any) bool {
	code, _ := m["code"].(string)
	sys, _ := m["system"].(string)
	return code != "" && sys != "" && codes.has(sys, code)
}

// slices assigns the occurrences of g to its slices and checks each
// slice's cardinality, the occurrences against the slice's definition,
// and, for closed slicing, that each occurrence is in a slice.
func (w *walker) slices(g *group, vals []value, expr string, depth int) {
	disc := g.base.slicing.Discriminator
	counts := make([]int, len(g.slices))
	usable := make([]bool, len(g.slices))
	expected := make([][]any, len(g.slices))
	for i, sl := range g.slices {
		expected[i], usable[i] = w.expectations(sl, disc)
	}
	for _, v := range vals {
		matched := false
		for i, sl := range g.slices {
			if !usable[i] || !w.inSlice(v.v, disc, expected[i]) {
				continue
			}
			counts[i]++
			matched = true
			sv := v
			w.value(sv, sl, depth)
			break
		}
		if !matched && g.base.slicing.Rules == "closed" && usable[0] {
			w.add("error", "structure", v.expr, fmt.Sprintf("%s: matches none of the slices, and the slicing is closed", g.base.path))
		}
	}
	for i, sl := range g.slices {
		if !usable[i] {
			continue
		}
		if counts[i] < sl.min {
			w.add("error", "required", expr+"."+g.name,
				fmt.Sprintf("%s:%s: minimum required = %d, but only found %d", sl.path, sl.sliceName, sl.min, counts[i]))
		}
		if sl.max >= 0 && counts[i] > sl.max {
			w.add("error", "structure", expr+"."+g.name,
				fmt.Sprintf("%s:%s: maximum allowed = %d, but found %d", sl.path, sl.sliceName, sl.max, counts[i]))
		}
	}
}

// expectations returns, for each discriminator, the value a member of the
// slice sl has at the discriminator's path; false when a discriminator is
// of a type other than value and pattern, or sl fixes no value there.
func (w *walker) expectations(sl *elem, disc []struct {
	Type string `json:"type"`
	Path string `json:"path"`
}) ([]any, bool) {
	if len(disc) == 0 {
		return nil, false
	}
	out := make([]any, len(disc))
	for i, d := range disc {
		if d.Type != "value" && d.Type != "pattern" {
			return nil, false
		}
		v, ok := w.expectedAt(sl, d.Path)
		if !ok {
			return nil, false
		}
		out[i] = v
	}
	return out, true
}

func (w *walker) expectedAt(sl *elem, path string) (any, bool) {
	cur := sl
	segs := []string{}
	if path != "$this" {
		segs = strings.Split(path, ".")
	}
	for i, seg := range segs {
		if v := fixedOrPattern(cur); v != nil {
			return navigate(v, segs[i:])
		}
		g := cur.byName[seg]
		if g == nil {
			// An extension slice names its extension by profile.
			if seg == "url" && i == len(segs)-1 && len(cur.types) == 1 && cur.types[0].Code == "Extension" && len(cur.types[0].Profile) == 1 {
				return cur.types[0].Profile[0], true
			}
			if seg == "url" && i == len(segs)-1 {
				for _, t := range cur.types {
					for _, p := range t.Profile {
						if st := w.set.Structure(p); st != nil {
							if u := st.root.byName["url"]; u != nil && u.base.fixed != nil {
								return u.base.fixed, true
							}
						}
					}
				}
			}
			return nil, false
		}
		cur = g.base
	}
	if v := fixedOrPattern(cur); v != nil {
		return v, true
	}
	return nil, false
}

func fixedOrPattern(e *elem) any {
	if e.fixed != nil {
		return e.fixed
	}
	return e.pattern
}

// navigate follows segs into a JSON value; arrays yield their first item.
func navigate(v any, segs []string) (any, bool) {
	for _, s := range segs {
		if a, ok := v.([]any); ok {
			if len(a) == 0 {
				return nil, false
			}
			v = a[0]
		}
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[s]; !ok {
			return nil, false
		}
	}
	return v, true
}

// inSlice reports whether v has, for each discriminator, the expected
// value at its path (for a repeating path, one of the values).
func (w *walker) inSlice(v any, disc []struct {
	Type string `json:"type"`
	Path string `json:"path"`
}, expected []any) bool {
	for i, d := range disc {
		var found []any
		if d.Path == "$this" {
			found = []any{v}
		} else {
			found = collectPath(v, strings.Split(d.Path, "."), nil)
		}
		ok := false
		for _, f := range found {
			if matches(f, expected[i]) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func collectPath(v any, segs []string, out []any) []any {
	if a, ok := v.([]any); ok {
		for _, x := range a {
			out = collectPath(x, segs, out)
		}
		return out
	}
	if len(segs) == 0 {
		return append(out, v)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return out
	}
	x, ok := m[segs[0]]
	if !ok {
		return out
	}
	return collectPath(x, segs[1:], out)
}

// matches reports whether v has every member of pattern p: objects
// member by member, arrays by each item of p matching some item of v,
// primitives by equality.
func matches(v, p any) bool {
	switch p := p.(type) {
	case map[string]any:
		m, ok := v.(map[string]any)
		if !ok {
			return false
		}
		for k, pv := range p {
			if !matches(m[k], pv) {
				return false
			}
		}
		return true
	case []any:
		a, ok := v.([]any)
		if !ok {
			a = []any{v}
		}
	next:
		for _, pi := range p {
			for _, vi := range a {
				if matches(vi, pi) {
					continue next
				}
			}
			return false
		}
		return true
	}
	return equalJSON(v, p)
}

// equalJSON compares two decoded JSON values; numbers by value.
func equalJSON(a, b any) bool {
	switch a := a.(type) {
	case map[string]any:
		m, ok := b.(map[string]any)
		if !ok || len(m) != len(a) {
			return false
		}
		for k, v := range a {
			if !equalJSON(v, m[k]) {
				return false
			}
		}
		return true
	case []any:
		x, ok := b.([]any)
		if !ok || len(x) != len(a) {
			return false
		}
		for i := range a {
			if !equalJSON(a[i], x[i]) {
				return false
			}
		}
		return true
	case json.Number:
		n, ok := b.(json.Number)
		if !ok {
			return false
		}
		x, err1 := strconv.ParseFloat(string(a), 64)
		y, err2 := strconv.ParseFloat(string(n), 64)
		return err1 == nil && err2 == nil && x == y
	}
	return a == b
}

func compact(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
