// Package fhirpath evaluates the subset of FHIRPath that the R4
// SearchParameter expressions use, over resources decoded by encoding/json
// (with UseNumber): element paths, "|" unions, indexers, where(...),
// ofType(T), "as T", "is T", resolve(), exists(), empty(), first(), not(),
// "=", "!=", "and" and "or".
//
// Choice elements ("Observation.value") are found under their typed JSON
// names ("valueQuantity"); the nodes they yield carry the type (Quantity),
// which ofType and the search indexer use.
package fhirpath

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// Node is one value an expression yields: a JSON value (map[string]any,
// string, json.Number, bool) and, where known, its FHIR type name
// ("Quantity", "dateTime", "Reference", a resource type).
type Node struct {
	V    any
	Type string
}

// Expr is a parsed expression. It is safe for concurrent use.
type Expr struct {
	src  string
	root node
}

// String returns the source of the expression.
func (e *Expr) String() string { return e.src }

// TypeNames tells the evaluator which suffixes of choice element names are
// FHIR types (valueQuantity is value of type Quantity; valueSet is not a
// choice). It returns the canonical type name, or "" when s is not a type.
// The default knows no type; the search package installs the generated list.
type TypeNames func(suffix string) string

// Parse compiles src. The error names the offset of what it could not read.
func Parse(src string) (*Expr, error) { return parse(src, false) }

// parse compiles src in the search subset, or with full in the language of
// invariants (see ParseInvariant).
func parse(src string, full bool) (*Expr, error) {
	p := &parser{src: src, full: full}
	p.next()
	n, err := p.expr(0)
	if err != nil {
		return nil, err
	}
	if p.tok.kind != tEOF {
		return nil, p.errorf("unexpected %q", p.tok.text)
	}
	return &Expr{src: src, root: n}, nil
}

// MustParse is Parse that panics on error, for expressions known to be valid.
func MustParse(src string) *Expr {
	e, err := Parse(src)
	if err != nil {
		panic(err)
	}
	return e
}

// Eval evaluates e with resource (a decoded JSON object) as the context.
// typeOf maps choice suffixes to type names (nil: no choice elements are
// recognized). Nested arrays are flattened, as FHIRPath collections are.
func (e *Expr) Eval(resource any, typeOf TypeNames) []Node {
	rt, _ := resourceType(resource)
	root := Node{V: resource, Type: rt}
	ctx := &evalCtx{typeOf: typeOf, resource: root, context: root}
	return e.root.eval(ctx, []Node{root}, true)
}

type evalCtx struct {
	typeOf TypeNames
	// resource and context are %resource and %context (invariants).
	resource, context Node
}

func resourceType(v any) (string, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		return "", false
	}
	s, ok := m["resourceType"].(string)
	return s, ok
}

// node is a compiled expression node. root tells whether the input is the
// evaluation's root (where a leading type name filters rather than
// navigates).
type node interface {
	eval(ctx *evalCtx, in []Node, root bool) []Node
}

type (
	identNode struct{ name string }
	chainNode struct {
		left  node
		right node // evaluated on left's output, not as root
	}
	unionNode struct{ parts []node }
	indexNode struct {
		left node
		i    int
	}
	funcNode struct {
		name string
		args []node
		typ  string // for ofType
	}
	typeOpNode struct {
		left node
		op   string // "is" or "as"
		typ  string
	}
	binaryNode struct {
		op          string
		left, right node
	}
	literalNode struct{ v Node }
	thisNode    struct{}
)

func (n identNode) eval(ctx *evalCtx, in []Node, root bool) []Node {
	if root && isTypeName(n.name) {
		var out []Node
		for _, x := range in {
			if rt, ok := resourceType(x.V); ok && (rt == n.name || n.name == "Resource" || n.name == "DomainResource") {
				out = append(out, x)
			}
		}
		return out
	}
	var out []Node
	for _, x := range in {
		out = child(ctx, out, x, n.name)
	}
	return out
}

func isTypeName(s string) bool {
	return s != "" && unicode.IsUpper(rune(s[0]))
}

// child appends the values of element name of x.
func child(ctx *evalCtx, out []Node, x Node, name string) []Node {
	m, ok := x.V.(map[string]any)
	if !ok {
		return out
	}
	if v, ok := m[name]; ok {
		return appendFlat(out, v, "")
	}
	if ctx.typeOf == nil {
		return out
	}
	for k, v := range m {
		if len(k) > len(name) && strings.HasPrefix(k, name) && unicode.IsUpper(rune(k[len(name)])) {
			if t := ctx.typeOf(k[len(name):]); t != "" {
				out = appendFlat(out, v, t)
			}
		}
	}
	return out
}

func appendFlat(out []Node, v any, typ string) []Node {
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			out = appendFlat(out, e, typ)
		}
	case nil:
	default:
		if typ == "" {
			if rt, ok := resourceType(v); ok {
				typ = rt
			}
		}
		out = append(out, Node{V: v, Type: typ})
	}
	return out
}

func (n chainNode) eval(ctx *evalCtx, in []Node, root bool) []Node {
	return n.right.eval(ctx, n.left.eval(ctx, in, root), false)
}

func (n unionNode) eval(ctx *evalCtx, in []Node, root bool) []Node {
	var out []Node
	for _, p := range n.parts {
		out = append(out, p.eval(ctx, in, root)...)
	}
	return out
}

func (n indexNode) eval(ctx *evalCtx, in []Node, root bool) []Node {
	l := n.left.eval(ctx, in, root)
	if n.i < 0 || n.i >= len(l) {
		return nil
	}
	return l[n.i : n.i+1]
}

func (n literalNode) eval(*evalCtx, []Node, bool) []Node { return []Node{n.v} }

func (thisNode) eval(_ *evalCtx, in []Node, _ bool) []Node { return in }

func boolNode(b bool) []Node { return []Node{{V: b, Type: "boolean"}} }

// truth is FHIRPath's singleton evaluation of a collection as a boolean:
// empty is false (for where), a single boolean is itself, anything else
// non-empty is true.
func truth(c []Node) bool {
	if len(c) == 0 {
		return false
	}
	if len(c) == 1 {
		if b, ok := c[0].V.(bool); ok {
			return b
		}
	}
	return true
}

func (n funcNode) eval(ctx *evalCtx, in []Node, _ bool) []Node {
	switch n.name {
	case "where":
		var out []Node
		for _, x := range in {
			if truth(n.args[0].eval(ctx, []Node{x}, false)) {
				out = append(out, x)
			}
		}
		return out
	case "ofType":
		return ofType(in, n.typ)
	case "exists":
		return boolNode(len(in) > 0)
	case "empty":
		return boolNode(len(in) == 0)
	case "not":
		return boolNode(!truth(in))
	case "first":
		if len(in) == 0 {
			return nil
		}
		return in[:1]
	case "resolve":
		var out []Node
		for _, x := range in {
			if t := referenceType(x.V); t != "" {
				out = append(out, Node{V: x.V, Type: t})
			}
		}
		return out
	}
	return n.evalFull(ctx, in)
}

// referenceType returns the resource type a Reference (or a reference
// string) points to: "Patient" for "Patient/1", "http://x/fhir/Patient/1"
// or "Patient/1/_history/2".
func referenceType(v any) string {
	s, ok := v.(string)
	if !ok {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		if s, ok = m["reference"].(string); !ok {
			if t, ok := m["type"].(string); ok {
				return t
			}
			return ""
		}
	}
	typ, _ := ReferenceParts(s)
	return typ
}

// ReferenceParts splits a literal reference into resource type and id:
// "Patient/1", "Patient/1/_history/2", "https://host/fhir/Patient/1". It
// returns "", "" for other references (contained "#x", urn:uuid:…).
func ReferenceParts(s string) (typ, id string) {
	if i := strings.Index(s, "/_history/"); i >= 0 {
		s = s[:i]
	}
	j := strings.LastIndexByte(s, '/')
	if j <= 0 || j == len(s)-1 {
		return "", ""
	}
	id = s[j+1:]
	rest := s[:j]
	k := strings.LastIndexByte(rest, '/')
	typ = rest[k+1:]
	if !isTypeName(typ) || strings.ContainsAny(typ, ":.") {
		return "", ""
	}
	return typ, id
}

func ofType(in []Node, typ string) []Node {
	var out []Node
	for _, x := range in {
		if sameType(x.Type, typ) {
			out = append(out, x)
		}
	}
	return out
}

// sameType compares type names ignoring the case of the first letter, so
// that "dateTime" matches the choice suffix "DateTime".
func sameType(a, b string) bool {
	if a == "" || b == "" || len(a) != len(b) {
		return false
	}
	return unicode.ToLower(rune(a[0])) == unicode.ToLower(rune(b[0])) && a[1:] == b[1:]
}

func (n typeOpNode) eval(ctx *evalCtx, in []Node, root bool) []Node {
	l := n.left.eval(ctx, in, root)
	if n.op == "as" {
		return ofType(l, n.typ)
	}
	if len(l) != 1 {
		return nil
	}
	return boolNode(sameType(l[0].Type, n.typ))
}

func (n binaryNode) eval(ctx *evalCtx, in []Node, root bool) []Node {
	l := n.left.eval(ctx, in, root)
	switch n.op {
	case "and":
		if !truth(l) {
			return boolNode(false)
		}
		return boolNode(truth(n.right.eval(ctx, in, root)))
	case "or":
		if truth(l) {
			return boolNode(true)
		}
		return boolNode(truth(n.right.eval(ctx, in, root)))
	case "=", "!=":
	default:
		return n.evalFull(ctx, l, n.right.eval(ctx, in, root))
	}
	r := n.right.eval(ctx, in, root)
	if len(l) == 0 || len(r) == 0 {
		return nil
	}
	eq := len(l) == len(r)
	for i := 0; eq && i < len(l); i++ {
		eq = equalValues(l[i].V, r[i].V)
	}
	if n.op == "!=" {
		eq = !eq
	}
	return boolNode(eq)
}

func equalValues(a, b any) bool {
	switch a := a.(type) {
	case string:
		s, ok := b.(string)
		return ok && a == s
	case bool:
		v, ok := b.(bool)
		return ok && a == v
	case json.Number:
		v, ok := b.(json.Number)
		if !ok {
			return false
		}
		x, err1 := strconv.ParseFloat(string(a), 64)
		y, err2 := strconv.ParseFloat(string(v), 64)
		return err1 == nil && err2 == nil && x == y
	}
	return false
}

// parser

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tString
	tNumber
	tPunct
)

type token struct {
	kind tokKind
	text string
	pos  int
}

type parser struct {
	src string
	pos int
	tok token
	err error
	// full accepts the larger language of ParseInvariant.
	full bool
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("fhirpath: offset %d of %q: %s", p.tok.pos, p.src, fmt.Sprintf(format, args...))
}

func (p *parser) next() {
	s := p.src
	for p.pos < len(s) && (s[p.pos] == ' ' || s[p.pos] == '\t' || s[p.pos] == '\n' || s[p.pos] == '\r') {
		p.pos++
	}
	start := p.pos
	if p.pos >= len(s) {
		p.tok = token{tEOF, "", start}
		return
	}
	c := s[p.pos]
	switch {
	case c == '_' || c == '$' || unicode.IsLetter(rune(c)):
		p.pos++
		for p.pos < len(s) && (s[p.pos] == '_' || unicode.IsLetter(rune(s[p.pos])) || unicode.IsDigit(rune(s[p.pos]))) {
			p.pos++
		}
		p.tok = token{tIdent, s[start:p.pos], start}
	case c == '`':
		end := strings.IndexByte(s[p.pos+1:], '`')
		if end < 0 {
			p.tok = token{tPunct, "`", start}
			p.pos = len(s)
			return
		}
		p.tok = token{tIdent, s[p.pos+1 : p.pos+1+end], start}
		p.pos += end + 2
	case c == '\'':
		var b strings.Builder
		p.pos++
		for p.pos < len(s) && s[p.pos] != '\'' {
			if s[p.pos] == '\\' && p.pos+1 < len(s) {
				p.pos++
			}
			b.WriteByte(s[p.pos])
			p.pos++
		}
		if p.pos >= len(s) {
			p.err = fmt.Errorf("fhirpath: unterminated string at offset %d of %q", start, s)
			p.tok = token{tEOF, "", start}
			return
		}
		p.pos++
		p.tok = token{tString, b.String(), start}
	case unicode.IsDigit(rune(c)):
		for p.pos < len(s) && (unicode.IsDigit(rune(s[p.pos])) || s[p.pos] == '.') {
			p.pos++
		}
		p.tok = token{tNumber, s[start:p.pos], start}
	case c == '%' && p.full && p.pos+1 < len(s) && (s[p.pos+1] == '_' || unicode.IsLetter(rune(s[p.pos+1]))):
		p.pos++
		for p.pos < len(s) && (s[p.pos] == '_' || unicode.IsLetter(rune(s[p.pos])) || unicode.IsDigit(rune(s[p.pos]))) {
			p.pos++
		}
		p.tok = token{tIdent, s[start:p.pos], start}
	case (c == '!' || c == '<' || c == '>') && p.pos+1 < len(s) && s[p.pos+1] == '=':
		p.pos += 2
		p.tok = token{tPunct, s[start:p.pos], start}
	default:
		p.pos++
		p.tok = token{tPunct, string(c), start}
	}
}

// binaryPrec is the precedence of a binary operator, lowest first (0: not
// an operator). Search expressions know or, and, =, !=, |, is and as;
// invariants (full) all of FHIRPath's but ~, !~, *, /, div and mod.
func binaryPrec(t token, full bool) int {
	if t.kind == tIdent {
		switch t.text {
		case "or":
			return 2
		case "and":
			return 3
		case "is", "as":
			return 8
		}
		if full {
			switch t.text {
			case "implies":
				return 1
			case "xor":
				return 2
			case "in", "contains":
				return 4
			}
		}
		return 0
	}
	if t.kind == tPunct {
		switch t.text {
		case "=", "!=":
			return 5
		case "|":
			return 7
		}
		if full {
			switch t.text {
			case "<", ">", "<=", ">=":
				return 6
			case "+", "-", "&":
				return 9
			}
		}
	}
	return 0
}

func (p *parser) expr(minPrec int) (node, error) {
	left, err := p.invocation()
	if err != nil {
		return nil, err
	}
	for {
		prec := binaryPrec(p.tok, p.full)
		if prec == 0 || prec <= minPrec {
			return left, p.err
		}
		op := p.tok.text
		p.next()
		if op == "is" || op == "as" {
			if p.tok.kind != tIdent {
				return nil, p.errorf("type name expected after %q", op)
			}
			typ := p.tok.text
			p.next()
			for p.tok.kind == tPunct && p.tok.text == "." { // FHIR.Quantity
				p.next()
				typ = p.tok.text
				p.next()
			}
			left = typeOpNode{left: left, op: op, typ: typ}
			continue
		}
		right, err := p.expr(prec)
		if err != nil {
			return nil, err
		}
		if op == "|" {
			if u, ok := left.(unionNode); ok {
				u.parts = append(u.parts, right)
				left = u
			} else {
				left = unionNode{parts: []node{left, right}}
			}
			continue
		}
		left = binaryNode{op: op, left: left, right: right}
	}
}

func (p *parser) invocation() (node, error) {
	n, err := p.primary()
	if err != nil {
		return nil, err
	}
	for p.tok.kind == tPunct && (p.tok.text == "." || p.tok.text == "[") {
		if p.tok.text == "[" {
			p.next()
			if p.tok.kind != tNumber {
				return nil, p.errorf("index expected")
			}
			i, err := strconv.Atoi(p.tok.text)
			if err != nil {
				return nil, p.errorf("bad index %q", p.tok.text)
			}
			p.next()
			if !p.punct("]") {
				return nil, p.errorf("']' expected")
			}
			n = indexNode{left: n, i: i}
			continue
		}
		p.next()
		if p.tok.kind != tIdent {
			return nil, p.errorf("name expected after '.'")
		}
		name := p.tok.text
		p.next()
		var right node = identNode{name}
		if p.tok.kind == tPunct && p.tok.text == "(" {
			if right, err = p.call(name); err != nil {
				return nil, err
			}
		}
		n = chainNode{left: n, right: right}
	}
	return n, p.err
}

func (p *parser) punct(s string) bool {
	if p.tok.kind == tPunct && p.tok.text == s {
		p.next()
		return true
	}
	return false
}

// knownFuncs are the functions of search expressions and their number of
// arguments.
var knownFuncs = map[string]int{
	"where": 1, "ofType": 1, "exists": 0, "empty": 0, "not": 0, "first": 0, "resolve": 0,
}

// call parses the argument list of function name; the current token is "(".
func (p *parser) call(name string) (node, error) {
	nargs, ok := knownFuncs[name]
	lo, hi := nargs, nargs
	if p.full {
		ar, known := fullFuncs[name]
		if !known {
			return nil, p.errorf("unsupported function %s()", name)
		}
		ok, lo, hi = true, ar[0], ar[1]
	}
	if !ok {
		return nil, p.errorf("unsupported function %s()", name)
	}
	p.next()
	f := funcNode{name: name}
	if name == "ofType" || name == "is" || name == "as" {
		if p.tok.kind != tIdent {
			return nil, p.errorf("type name expected in ofType()")
		}
		f.typ = p.tok.text
		p.next()
		for p.punct(".") {
			f.typ = p.tok.text
			p.next()
		}
	} else {
		for p.tok.kind != tPunct || p.tok.text != ")" {
			a, err := p.expr(0)
			if err != nil {
				return nil, err
			}
			f.args = append(f.args, a)
			if !p.punct(",") {
				break
			}
		}
		if len(f.args) < lo || len(f.args) > hi {
			return nil, p.errorf("%s() takes %d to %d arguments", name, lo, hi)
		}
	}
	if !p.punct(")") {
		return nil, p.errorf("')' expected")
	}
	return f, nil
}

func (p *parser) primary() (node, error) {
	t := p.tok
	switch t.kind {
	case tIdent:
		p.next()
		switch t.text {
		case "true", "false":
			return literalNode{Node{V: t.text == "true", Type: "boolean"}}, nil
		case "$this":
			return thisNode{}, nil
		}
		if t.text[0] == '%' {
			return varNode{t.text[1:]}, nil
		}
		if p.tok.kind == tPunct && p.tok.text == "(" {
			return p.call(t.text)
		}
		return identNode{t.text}, nil
	case tString:
		p.next()
		return literalNode{Node{V: t.text, Type: "string"}}, nil
	case tNumber:
		p.next()
		if strings.HasSuffix(t.text, ".") {
			return nil, p.errorf("bad number %q", t.text)
		}
		return literalNode{Node{V: json.Number(t.text), Type: "decimal"}}, nil
	case tPunct:
		if t.text == "(" {
			p.next()
			n, err := p.expr(0)
			if err != nil {
				return nil, err
			}
			if !p.punct(")") {
				return nil, p.errorf("')' expected")
			}
			return n, nil
		}
	}
	if p.err != nil {
		return nil, p.err
	}
	if t.kind == tEOF {
		return nil, p.errorf("unexpected end")
	}
	return nil, p.errorf("unexpected %q", t.text)
}
