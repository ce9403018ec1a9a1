package search

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// MaxChainDepth is the most references one parameter may follow, counting
// each link of a chain (subject:Patient.general-practitioner.name follows
// two) and each _has: a deeper parameter is an *Error.
const MaxChainDepth = 4

// TypeChain is the Type of a chained or reverse-chained clause.
const TypeChain = "chain"

// Chain is the inner search of a chained clause
// (subject:Patient.name=peter) or of a reverse-chained one
// (_has:Observation:patient:code=1234-5).
type Chain struct {
	// Rev is false for a chain: the clause matches the resources whose
	// Param, a reference parameter of the searched type, points at a
	// match of one of Queries. Rev is true for _has: the clause matches
	// the resources that a match of Queries[0] points at through Param, a
	// reference parameter of Queries[0].Type.
	Rev   bool
	Param *Param
	// Queries are the inner searches, one per resource type a chain may
	// lead to (that defines the next parameter), and one for _has. Each
	// has one clause. Access control sets their Compartment and
	// Alternatives, so that the inner search only sees what the caller
	// may read.
	Queries []*Query
}

// unknownParam is a parameter that the searched type does not define: an
// *Error in strict handling, ignored in lenient handling.
type unknownParam struct{ msg string }

func (e *unknownParam) Error() string { return e.msg }

// parseClause returns the clause of parameter name (with its modifier,
// chain or _has) on typ, without values. depth is the number of
// references followed to reach typ.
func parseClause(typ, name string, depth int) (Clause, error) {
	if rest, ok := strings.CutPrefix(name, "_has:"); ok {
		return parseHas(typ, name, rest, depth)
	}
	if i := strings.IndexByte(name, '.'); i >= 0 {
		return parseChain(typ, name, name[:i], name[i+1:], depth)
	}
	return parseLeaf(typ, name)
}

func tooDeep(depth int) error {
	if depth >= MaxChainDepth {
		return fmt.Errorf("chains and _has may follow at most %d references", MaxChainDepth)
	}
	return nil
}

// parseChain parses link.rest: link is a reference parameter of typ with
// an optional :Type, rest the parameter of the target.
func parseChain(typ, name, link, rest string, depth int) (Clause, error) {
	if err := tooDeep(depth); err != nil {
		return Clause{}, err
	}
	code, mod, _ := strings.Cut(link, ":")
	p, ok := Lookup(typ, code)
	if !ok {
		return Clause{}, &unknownParam{fmt.Sprintf("unknown search parameter %q for %s", code, typ)}
	}
	if p.Type != TypeReference {
		return Clause{}, fmt.Errorf("%s is a %s parameter: only reference parameters can be chained", code, p.Type)
	}
	if rest == "" {
		return Clause{}, fmt.Errorf("a chain needs a parameter after %q", link+".")
	}
	targets := p.Target
	switch {
	case mod != "":
		if !isTarget(p, mod) {
			return Clause{}, fmt.Errorf(":%s is not a resource type %s.%s refers to", mod, typ, code)
		}
		targets = []string{mod}
	case len(targets) == 0:
		targets = spec.ResourceTypes
	}
	ch := &Chain{Param: p}
	for _, t := range targets {
		if !spec.IsResourceType(t) {
			continue
		}
		in, err := parseClause(t, rest, depth+1)
		var u *unknownParam
		if errors.As(err, &u) && mod == "" && len(targets) > 1 {
			continue // a target type that does not define rest
		}
		if err != nil {
			return Clause{}, err
		}
		ch.Queries = append(ch.Queries, &Query{Type: t, Clauses: []Clause{in}})
	}
	if len(ch.Queries) == 0 {
		return Clause{}, &unknownParam{fmt.Sprintf("no resource type that %s.%s refers to defines %q", typ, code, rest)}
	}
	return Clause{Param: p, Name: name, Type: TypeChain, Chain: ch}, nil
}

// parseHas parses Type:param:rest of _has:Type:param:rest: resources of
// Type whose reference parameter param points at typ and that match rest.
func parseHas(typ, name, what string, depth int) (Clause, error) {
	if err := tooDeep(depth); err != nil {
		return Clause{}, err
	}
	parts := strings.SplitN(what, ":", 3)
	if len(parts) != 3 || parts[2] == "" {
		return Clause{}, fmt.Errorf("want _has:Type:reference-parameter:parameter")
	}
	if !spec.IsResourceType(parts[0]) {
		return Clause{}, fmt.Errorf("_has: unknown resource type %q", parts[0])
	}
	p, ok := Lookup(parts[0], parts[1])
	if !ok || p.Type != TypeReference {
		return Clause{}, fmt.Errorf("_has: %s has no reference parameter %q", parts[0], parts[1])
	}
	if !isTarget(p, typ) {
		return Clause{}, fmt.Errorf("_has: %s.%s does not refer to %s", parts[0], parts[1], typ)
	}
	in, err := parseClause(parts[0], parts[2], depth+1)
	if err != nil {
		return Clause{}, err
	}
	ch := &Chain{Rev: true, Param: p, Queries: []*Query{{Type: parts[0], Clauses: []Clause{in}}}}
	return Clause{Param: p, Name: name, Type: TypeChain, Chain: ch}, nil
}

// parseLeaf parses a parameter with its modifier.
func parseLeaf(typ, name string) (Clause, error) {
	code, mod, _ := strings.Cut(name, ":")
	c, ok := clauseFor(typ, code)
	if !ok {
		return Clause{}, &unknownParam{fmt.Sprintf("unknown search parameter %q for %s", code, typ)}
	}
	if mod != "" && !slices.Contains(modifiers[c.Type], mod) &&
		!(c.Type == TypeReference && c.Param != nil && isTarget(c.Param, mod)) {
		return Clause{}, fmt.Errorf("modifier :%s is not supported on %s parameters", mod, c.Type)
	}
	if mod == "of-type" {
		if !IsIdentifier(c.Param) {
			return Clause{}, fmt.Errorf("modifier :of-type applies to identifier parameters only")
		}
		c.Param = ofTypeParam(c.Param)
	}
	c.Modifier = mod
	return c, nil
}

// fill parses one value (a comma-separated list) of the parameter into c,
// or into the innermost clauses of its chain.
func (c *Clause) fill(raw string, opt *Options) error {
	if c.Chain != nil {
		for _, q := range c.Chain.Queries {
			q.Now, q.Count = opt.Now, opt.DefaultCount
			if err := q.Clauses[0].fill(raw, opt); err != nil {
				return err
			}
		}
		return nil
	}
	if err := c.parseValues(raw); err != nil {
		return err
	}
	if c.Type == TypeReference && len(opt.LocalBases) > 0 {
		c.addLocal(opt.LocalBases)
	}
	return nil
}
