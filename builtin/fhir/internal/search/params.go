// Package search defines the search parameters the server indexes, extracts
// index entries from resources at write time, and parses search queries.
// The store turns a parsed Query into its own query language.
package search

import (
	"sort"
	"strings"
	"sync"

	"github.com/omnigate/omnigate/builtin/fhir/internal/fhirpath"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// Parameter types.
const (
	TypeString    = "string"
	TypeToken     = "token"
	TypeReference = "reference"
	TypeDate      = "date"
	TypeNumber    = "number"
	TypeQuantity  = "quantity"
	TypeURI       = "uri"
	// TypeComposite parameters combine the values of other parameters
	// found in one element instance (see composite.go).
	TypeComposite = "composite"
)

// Param is a search parameter of one resource type with its compiled
// expression.
type Param struct {
	spec.SearchParam
	expr *fhirpath.Expr
	key  string
	// ident is set for token parameters on Identifier elements.
	ident bool
	// comps are the components of a composite parameter.
	comps []component
}

// Key is "Type.code", the name the store indexes the parameter's values
// under.
func (p *Param) Key() string { return p.key }

var (
	tableOnce sync.Once
	table     map[string]map[string]*Param
	ordered   map[string][]*Param
)

func loadTable() {
	table = map[string]map[string]*Param{}
	ordered = map[string][]*Param{}
	for _, sp := range spec.SearchParams {
		e, err := fhirpath.Parse(sp.Expression)
		if err != nil { // the generator keeps only expressions that parse
			panic("search: generated expression does not parse: " + err.Error())
		}
		p := &Param{SearchParam: sp, expr: e, key: sp.Resource + "." + sp.Code,
			ident: sp.Type == TypeToken && strings.Contains(strings.ToLower(sp.Expression), "identifier")}
		if table[sp.Resource] == nil {
			table[sp.Resource] = map[string]*Param{}
		}
		table[sp.Resource][sp.Code] = p
		ordered[sp.Resource] = append(ordered[sp.Resource], p)
	}
	for _, cp := range spec.CompositeParams {
		p, err := newComposite(cp)
		if err != nil { // the generator keeps only expressions that parse
			panic("search: generated composite does not parse: " + err.Error())
		}
		if table[cp.Resource] == nil {
			table[cp.Resource] = map[string]*Param{}
		}
		table[cp.Resource][cp.Code] = p
		ordered[cp.Resource] = append(ordered[cp.Resource], p)
	}
	for _, ps := range ordered {
		sort.Slice(ps, func(i, j int) bool { return ps[i].Code < ps[j].Code })
	}
}

// Lookup returns the parameter code of resource type typ.
func Lookup(typ, code string) (*Param, bool) {
	tableOnce.Do(loadTable)
	p, ok := table[typ][code]
	return p, ok
}

// Params returns the parameters of resource type typ, sorted by code. The
// slice must not be modified.
func Params(typ string) []*Param {
	tableOnce.Do(loadTable)
	return ordered[typ]
}

// typeNames recognizes choice element suffixes for the evaluator.
func typeNames(suffix string) string { return spec.DataTypes[suffix] }

// Eval evaluates the parameter's expression on a decoded resource.
func (p *Param) Eval(resource any) []fhirpath.Node {
	return p.expr.Eval(resource, typeNames)
}
