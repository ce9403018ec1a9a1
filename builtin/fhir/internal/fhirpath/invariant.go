package fhirpath

import (
	"encoding/json"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// fullFuncs are the functions ParseInvariant accepts, with their least and
// most number of arguments. Left out on purpose: resolve() (no store to
// resolve in), descendants() (the types of the values it yields are not
// known), memberOf(), conformsTo(), htmlChecks(), now() and today() (an
// answer that depends on the date).
var fullFuncs = map[string][2]int{
	"where": {1, 1}, "ofType": {1, 1}, "is": {1, 1}, "as": {1, 1},
	"exists": {0, 1}, "empty": {0, 0}, "not": {0, 0}, "all": {1, 1},
	"first": {0, 0}, "last": {0, 0}, "tail": {0, 0}, "single": {0, 0},
	"count": {0, 0}, "distinct": {0, 0}, "isDistinct": {0, 0},
	"select": {1, 1}, "children": {0, 0}, "iif": {2, 3}, "trace": {1, 2},
	"hasValue": {0, 0}, "startsWith": {1, 1}, "endsWith": {1, 1},
	"contains": {1, 1}, "matches": {1, 1}, "length": {0, 0},
	"toInteger": {0, 0}, "toString": {0, 0}, "substring": {1, 2},
	"combine": {1, 1}, "union": {1, 1}, "intersect": {1, 1}, "exclude": {1, 1},
	"allTrue": {0, 0}, "allFalse": {0, 0}, "anyTrue": {0, 0}, "anyFalse": {0, 0},
	"lower": {0, 0}, "upper": {0, 0},
}

// ParseInvariant compiles src in the larger subset of FHIRPath that
// StructureDefinition constraints use: besides what Parse accepts, the
// operators implies, xor, in, contains, <, >, <=, >=, +, - and &, the
// variables %resource, %context and %ucum, and the functions listed in
// fullFuncs. Anything else is an error, so that a caller can skip the
// constraint rather than evaluate it wrongly.
func ParseInvariant(src string) (*Expr, error) { return parse(src, true) }

// Holds evaluates e as an invariant of value (an element of resource):
// value is the context ($this, %context), resource is %resource. It reports
// false only when the result is the single boolean false; an empty result
// (the expression cannot be decided) holds.
func (e *Expr) Holds(resource, value any, typ string, typeOf TypeNames) bool {
	rt, _ := resourceType(resource)
	ctx := &evalCtx{typeOf: typeOf, resource: Node{V: resource, Type: rt}, context: Node{V: value, Type: typ}}
	out := e.root.eval(ctx, []Node{ctx.context}, true)
	if len(out) != 1 {
		return true
	}
	b, ok := out[0].V.(bool)
	return !ok || b
}

type varNode struct{ name string }

func (n varNode) eval(ctx *evalCtx, _ []Node, _ bool) []Node {
	switch n.name {
	case "resource", "rootResource":
		return []Node{ctx.resource}
	case "context":
		return []Node{ctx.context}
	case "ucum":
		return []Node{{V: "http://unitsofmeasure.org", Type: "string"}}
	}
	return nil
}

func numNode(i int) []Node { return []Node{{V: json.Number(strconv.Itoa(i)), Type: "integer"}} }

func strNode(s string) []Node { return []Node{{V: s, Type: "string"}} }

// single returns the one primitive of c, or false when c is not one.
func singleValue(c []Node) (any, bool) {
	if len(c) != 1 {
		return nil, false
	}
	if _, ok := c[0].V.(map[string]any); ok {
		return nil, false
	}
	return c[0].V, true
}

func singleString(c []Node) (string, bool) {
	v, ok := singleValue(c)
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	return s, ok
}

var regexps sync.Map // pattern -> *regexp.Regexp or nil

func compiled(pattern string) *regexp.Regexp {
	if r, ok := regexps.Load(pattern); ok {
		re, _ := r.(*regexp.Regexp)
		return re
	}
	re, err := regexp.Compile("^(?:" + pattern + ")$")
	if err != nil {
		re = nil
	}
	regexps.Store(pattern, re)
	return re
}

// evalFull evaluates the functions that only invariants use.
func (n funcNode) evalFull(ctx *evalCtx, in []Node) []Node {
	arg := func(i int, focus []Node) []Node { return n.args[i].eval(ctx, focus, false) }
	switch n.name {
	case "is":
		if len(in) != 1 {
			return nil
		}
		return boolNode(sameType(in[0].Type, n.typ) || isResourceNamed(in[0].V, n.typ))
	case "as":
		return ofType(in, n.typ)
	case "exists":
		if len(n.args) == 0 {
			return boolNode(len(in) > 0)
		}
		for _, x := range in {
			if truth(arg(0, []Node{x})) {
				return boolNode(true)
			}
		}
		return boolNode(false)
	case "all":
		for _, x := range in {
			if !truth(arg(0, []Node{x})) {
				return boolNode(false)
			}
		}
		return boolNode(true)
	case "last":
		if len(in) == 0 {
			return nil
		}
		return in[len(in)-1:]
	case "tail":
		if len(in) < 2 {
			return nil
		}
		return in[1:]
	case "single":
		if len(in) != 1 {
			return nil
		}
		return in
	case "count":
		return numNode(len(in))
	case "distinct":
		return distinct(in)
	case "isDistinct":
		return boolNode(len(distinct(in)) == len(in))
	case "select":
		var out []Node
		for _, x := range in {
			out = append(out, arg(0, []Node{x})...)
		}
		return out
	case "children":
		var out []Node
		for _, x := range in {
			if m, ok := x.V.(map[string]any); ok {
				for k, v := range m {
					if k != "resourceType" {
						out = appendFlat(out, v, "")
					}
				}
			}
		}
		return out
	case "iif":
		if truth(arg(0, in)) {
			return arg(1, in)
		}
		if len(n.args) == 3 {
			return arg(2, in)
		}
		return nil
	case "trace":
		return in
	case "hasValue":
		_, ok := singleValue(in)
		return boolNode(ok)
	case "startsWith", "endsWith", "contains", "matches":
		s, ok := singleString(in)
		t, ok2 := singleString(arg(0, []Node{ctx.context}))
		if !ok || !ok2 {
			return nil
		}
		switch n.name {
		case "startsWith":
			return boolNode(strings.HasPrefix(s, t))
		case "endsWith":
			return boolNode(strings.HasSuffix(s, t))
		case "contains":
			return boolNode(strings.Contains(s, t))
		}
		re := compiled(t)
		if re == nil {
			return nil
		}
		return boolNode(re.MatchString(s))
	case "length":
		s, ok := singleString(in)
		if !ok {
			return nil
		}
		return numNode(len([]rune(s)))
	case "lower", "upper":
		s, ok := singleString(in)
		if !ok {
			return nil
		}
		if n.name == "lower" {
			return strNode(strings.ToLower(s))
		}
		return strNode(strings.ToUpper(s))
	case "toInteger":
		v, ok := singleValue(in)
		if !ok {
			return nil
		}
		var s string
		switch v := v.(type) {
		case string:
			s = v
		case json.Number:
			s = string(v)
		case bool:
			if v {
				return numNode(1)
			}
			return numNode(0)
		}
		i, err := strconv.Atoi(s)
		if err != nil {
			return nil
		}
		return numNode(i)
	case "toString":
		v, ok := singleValue(in)
		if !ok {
			return nil
		}
		switch v := v.(type) {
		case string:
			return strNode(v)
		case json.Number:
			return strNode(string(v))
		case bool:
			return strNode(strconv.FormatBool(v))
		}
		return nil
	case "substring":
		s, ok := singleString(in)
		start, ok2 := intOf(arg(0, []Node{ctx.context}))
		if !ok || !ok2 {
			return nil
		}
		r := []rune(s)
		if start < 0 || start >= len(r) {
			return nil
		}
		end := len(r)
		if len(n.args) == 2 {
			l, ok := intOf(arg(1, []Node{ctx.context}))
			if !ok {
				return nil
			}
			end = min(len(r), start+max(l, 0))
		}
		return strNode(string(r[start:end]))
	case "combine":
		return append(append([]Node(nil), in...), arg(0, []Node{ctx.context})...)
	case "union":
		return distinct(append(append([]Node(nil), in...), arg(0, []Node{ctx.context})...))
	case "intersect", "exclude":
		other := arg(0, []Node{ctx.context})
		var out []Node
		for _, x := range distinct(in) {
			found := false
			for _, y := range other {
				if equalValues(x.V, y.V) {
					found = true
					break
				}
			}
			if found == (n.name == "intersect") {
				out = append(out, x)
			}
		}
		return out
	case "allTrue", "allFalse", "anyTrue", "anyFalse":
		want := n.name == "allTrue" || n.name == "anyTrue"
		all := strings.HasPrefix(n.name, "all")
		for _, x := range in {
			b, ok := x.V.(bool)
			match := ok && b == want
			if all && !match {
				return boolNode(false)
			}
			if !all && match {
				return boolNode(true)
			}
		}
		return boolNode(all)
	}
	return nil
}

func isResourceNamed(v any, typ string) bool {
	rt, ok := resourceType(v)
	return ok && rt == typ
}

func intOf(c []Node) (int, bool) {
	v, ok := singleValue(c)
	if !ok {
		return 0, false
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(string(n))
	return i, err == nil
}

// distinct keeps the first of equal primitives; objects are kept as they
// are (they are never equal to one another here).
func distinct(in []Node) []Node {
	var out []Node
next:
	for _, x := range in {
		if _, obj := x.V.(map[string]any); !obj {
			for _, y := range out {
				if equalValues(x.V, y.V) {
					continue next
				}
			}
		}
		out = append(out, x)
	}
	return out
}

// evalFull evaluates the binary operators that only invariants use, l and
// r being the operands' values.
func (n binaryNode) evalFull(_ *evalCtx, l, r []Node) []Node {
	switch n.op {
	case "implies":
		if len(l) == 0 {
			if truth(r) && len(r) > 0 {
				return boolNode(true)
			}
			return nil
		}
		if !truth(l) {
			return boolNode(true)
		}
		if len(r) == 0 {
			return nil
		}
		return boolNode(truth(r))
	case "xor":
		if len(l) == 0 || len(r) == 0 {
			return nil
		}
		return boolNode(truth(l) != truth(r))
	case "in", "contains":
		item, coll := l, r
		if n.op == "contains" {
			item, coll = r, l
		}
		if len(item) == 0 {
			return nil
		}
		if len(item) != 1 {
			return nil
		}
		for _, y := range coll {
			if equalValues(item[0].V, y.V) {
				return boolNode(true)
			}
		}
		return boolNode(false)
	case "&":
		a, _ := singleString(l)
		b, _ := singleString(r)
		return strNode(a + b)
	case "+", "-":
		a, aok := singleValue(l)
		b, bok := singleValue(r)
		if !aok || !bok {
			return nil
		}
		if as, ok := a.(string); ok && n.op == "+" {
			bs, ok := b.(string)
			if !ok {
				return nil
			}
			return strNode(as + bs)
		}
		x, y, ok := numbers(a, b)
		if !ok {
			return nil
		}
		if n.op == "+" {
			x.Add(x, y)
		} else {
			x.Sub(x, y)
		}
		out := x.RatString()
		if !x.IsInt() {
			out = strings.TrimRight(x.FloatString(20), "0")
		}
		return []Node{{V: json.Number(out), Type: "decimal"}}
	case "<", ">", "<=", ">=":
		a, aok := singleValue(l)
		b, bok := singleValue(r)
		if !aok || !bok {
			return nil
		}
		c, ok := compare(a, b)
		if !ok {
			return nil
		}
		switch n.op {
		case "<":
			return boolNode(c < 0)
		case ">":
			return boolNode(c > 0)
		case "<=":
			return boolNode(c <= 0)
		}
		return boolNode(c >= 0)
	}
	return nil
}

func numbers(a, b any) (*big.Rat, *big.Rat, bool) {
	an, ok1 := a.(json.Number)
	bn, ok2 := b.(json.Number)
	if !ok1 || !ok2 {
		return nil, nil, false
	}
	x, ok1 := new(big.Rat).SetString(string(an))
	y, ok2 := new(big.Rat).SetString(string(bn))
	return x, y, ok1 && ok2
}

// compare orders two numbers, or two strings of the same length (dates and
// times of the same precision and form order as strings; other pairs of
// strings are not compared, so that such a comparison yields empty).
func compare(a, b any) (int, bool) {
	if x, y, ok := numbers(a, b); ok {
		return x.Cmp(y), true
	}
	as, ok1 := a.(string)
	bs, ok2 := b.(string)
	if !ok1 || !ok2 || len(as) != len(bs) {
		return 0, false
	}
	return strings.Compare(as, bs), true
}
