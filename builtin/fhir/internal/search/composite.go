package search

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/fhirpath"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// Composite parameters (code-value-quantity=http://loinc.org|8480-6$gt100)
// match a resource when one element instance their expression selects (the
// Observation itself, one Observation.component, one useContext) matches
// every component. Their index rows are kept in the tables of their
// components' types, under keys that fold in the value of the first
// component (a token or a reference, compared for equality) and, with
// more than two components, the instance:
//
//   - two components: the rows of the second one, with Param
//     Key + "\x1f" + first;
//   - more: the rows of component j (1, 2, …) of instance n, with Param
//     Key + "\x1f" + first + "\x1f" + j + "\x1f" + n, so that a store finds
//     the other components of the instance whose component 1 matched by
//     swapping the "1" for their j (see CompositeKey).
//
// first is one of the forms of the first component's value that a search
// may name (see firstKeys): any system and the code, the system and the
// code, the system and any code; a reference's type and id, its id, or its
// URL.

const (
	compositeSep = "\x1f"
	// anyPart stands for "any system" ("any type") in a first key.
	anyPart = "\x1e"
	// maxFirstKey bounds the first keys indexed: the rows of a longer
	// value are left out, and a search for one finds nothing, on every
	// store alike (PostgreSQL cuts index keys at 1,000 bytes).
	maxFirstKey = 400
)

// component is one part of a composite parameter, compiled.
type component struct {
	spec.Component
	expr *fhirpath.Expr
	// onResource: the expression starts at the resource, not the instance.
	onResource bool
}

func newComposite(cp spec.CompositeParam) (*Param, error) {
	e, err := fhirpath.Parse(cp.Expression)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cp.URL, err)
	}
	p := &Param{SearchParam: spec.SearchParam{Resource: cp.Resource, Code: cp.Code, Type: TypeComposite,
		Expression: cp.Expression, URL: cp.URL}, expr: e, key: cp.Resource + "." + cp.Code}
	for i, c := range cp.Components {
		src, onResource := strings.CutPrefix(c.Expression, "%resource.")
		if onResource {
			src = cp.Resource + "." + src
		}
		ce, err := fhirpath.Parse(src)
		if err != nil {
			return nil, fmt.Errorf("%s component %s: %w", cp.URL, c.Code, err)
		}
		if i == 0 && c.Type != TypeToken && c.Type != TypeReference {
			return nil, fmt.Errorf("%s: the first component is a %s, not a token or reference", cp.URL, c.Type)
		}
		p.comps = append(p.comps, component{Component: c, expr: ce, onResource: onResource})
	}
	if len(p.comps) < 2 {
		return nil, fmt.Errorf("%s: fewer than two components", cp.URL)
	}
	return p, nil
}

// Components returns the components of a composite parameter (none for
// other parameters).
func (p *Param) Components() []spec.Component {
	out := make([]spec.Component, len(p.comps))
	for i, c := range p.comps {
		out[i] = c.Component
	}
	return out
}

// IsCompositeKey reports whether the index key p (an entry's Param) holds
// rows of a composite parameter.
func IsCompositeKey(p string) bool { return strings.Contains(p, compositeSep) }

// HasComposites reports whether resource type typ has composite
// parameters.
func HasComposites(typ string) bool {
	for _, p := range Params(typ) {
		if p.Type == TypeComposite {
			return true
		}
	}
	return false
}

// CompositeKey is the Param under which a store finds the rows of
// component j (from 1) that match composite value v of p: with two
// components, the exact key; with more, the prefix that the instance
// number follows.
func CompositeKey(p *Param, v Value, j int) string {
	k := p.key + compositeSep + firstKey(p.comps[0].Type, v.Parts[0])
	if len(p.comps) == 2 {
		return k
	}
	return k + compositeSep + strconv.Itoa(j) + compositeSep
}

// firstKey is the key of a search value of the first component.
func firstKey(typ string, v Value) string {
	if typ == TypeReference {
		switch {
		case v.URL != "":
			return v.URL
		case v.RefType != "":
			return v.RefType + "/" + v.RefID
		default:
			return anyPart + "/" + v.RefID
		}
	}
	switch {
	case v.AnySystem:
		return anyPart + "|" + v.Code
	case v.Code == "":
		return v.System + "|" + anyPart
	default:
		return v.System + "|" + v.Code
	}
}

// firstKeys returns the keys under which a search finds the first
// component's values e (of one instance), each once.
func firstKeys(typ string, e *Entries) []string {
	var out []string
	seen := map[string]bool{}
	add := func(k string) {
		if len(k) <= maxFirstKey && !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	if typ == TypeReference {
		for _, r := range e.Refs {
			if r.URL != "" {
				add(r.URL)
				continue
			}
			add(r.Type + "/" + r.ID)
			add(anyPart + "/" + r.ID)
		}
		return out
	}
	for _, t := range e.Tokens {
		if t.Code == "" {
			continue
		}
		add(anyPart + "|" + t.Code)
		add(t.System + "|" + t.Code)
		if t.System != "" {
			add(t.System + "|" + anyPart)
		}
	}
	return out
}

// entries returns the index entries (under Param "") of component c for
// one instance.
func (c *component) entries(resource any, instance fhirpath.Node) *Entries {
	e := &Entries{}
	root := instance.V
	if c.onResource {
		root = resource
	}
	for _, n := range c.expr.Eval(root, typeNames) {
		e.addTyped(c.Type, "", n)
	}
	return e
}

// addComposite adds the rows of composite parameter p (see above).
func (e *Entries) addComposite(p *Param, resource any) {
	for n, inst := range p.Eval(resource) {
		firsts := firstKeys(p.comps[0].Type, p.comps[0].entries(resource, inst))
		if len(firsts) == 0 {
			continue
		}
		rest := make([]*Entries, len(p.comps))
		for j := 1; j < len(p.comps); j++ {
			rest[j] = p.comps[j].entries(resource, inst)
		}
		for _, f := range firsts {
			for j := 1; j < len(p.comps); j++ {
				k := p.key + compositeSep + f
				if len(p.comps) > 2 {
					k += compositeSep + strconv.Itoa(j) + compositeSep + strconv.Itoa(n)
				}
				e.appendAs(k, rest[j])
			}
		}
	}
}

// appendAs appends the entries of o under Param k.
func (e *Entries) appendAs(k string, o *Entries) {
	e.addRekeyed(o, func(string) (string, bool) { return k, true })
}

// parseComposite parses one value of composite parameter p: one value per
// component, joined by "$"; prefixes apply to the components of ordered
// types.
func parseComposite(p *Param, s string) (Value, error) {
	v := Value{Raw: s}
	parts := splitAt(s, '$')
	if len(parts) != len(p.comps) {
		names := make([]string, len(p.comps))
		for i, c := range p.comps {
			names[i] = c.Code
		}
		return v, fmt.Errorf("composite %q: want %s", s, strings.Join(names, "$"))
	}
	for i, c := range p.comps {
		cl := Clause{Name: c.Code, Type: c.Type}
		if parts[i] == "" {
			return v, fmt.Errorf("composite %q: empty %s", s, c.Code)
		}
		pv, err := cl.parseValue(parts[i])
		if err != nil {
			return v, fmt.Errorf("composite %s: %w", c.Code, err)
		}
		if i == 0 && c.Type == TypeToken && pv.Code == "" && pv.System == "" {
			return v, fmt.Errorf("composite %q: %s needs a system or a code", s, c.Code)
		}
		v.Parts = append(v.Parts, pv)
	}
	return v, nil
}
