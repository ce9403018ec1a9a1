package profile

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"sort"
	"strings"
	"sync"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// Set is the structures and expanded value sets validation knows. It is
// safe for concurrent use once built.
type Set struct {
	byURL map[string]*Structure
	// core holds the core definitions by type name (Patient, Period,
	// string).
	core  map[string]*Structure
	codes map[string]Codes
	// unexpandable holds the value sets of required bindings that could
	// not be expanded offline, with why.
	unexpandable map[string]string
}

// Tables is the form the generator writes the core definitions in: the
// compiled-for-validation subset of each StructureDefinition, and the
// expansions of the value sets of their required bindings.
type Tables struct {
	Structures   []*StructureDefinition `json:"structures"`
	ValueSets    map[string]Codes       `json:"valueSets"`
	Unexpandable map[string]string      `json:"unexpandable"`
}

// Core returns the set of the core R4 definitions, built on first use
// from the tables embedded in the spec package.
var Core = sync.OnceValues(func() (*Set, error) {
	zr, err := gzip.NewReader(bytes.NewReader(spec.ConformanceTables))
	if err != nil {
		return nil, fmt.Errorf("open core definitions: %w", err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("read core definitions: %w", err)
	}
	var t Tables
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("decode core definitions: %w", err)
	}
	return NewCore(&t)
})

// NewCore builds a set from core tables.
func NewCore(t *Tables) (*Set, error) {
	s := &Set{byURL: map[string]*Structure{}, core: map[string]*Structure{},
		codes: t.ValueSets, unexpandable: t.Unexpandable}
	if s.codes == nil {
		s.codes = map[string]Codes{}
	}
	if s.unexpandable == nil {
		s.unexpandable = map[string]string{}
	}
	for _, sd := range t.Structures {
		st, err := Compile(sd)
		if err != nil {
			return nil, err
		}
		s.byURL[st.URL] = st
		if sd.Derivation != "constraint" {
			s.core[st.Type] = st
		}
	}
	return s, nil
}

// Resources is what a FHIR package contributes: profiles, and the value
// sets and code systems their bindings need.
type Resources struct {
	Structures  []*StructureDefinition
	ValueSets   []*ValueSet
	CodeSystems []*CodeSystem
	// Skipped lists the StructureDefinitions left out, with why.
	Skipped []string
}

// With returns a copy of s that also knows res's StructureDefinitions
// (each must have a snapshot) and value sets (expanded now; those that
// cannot be expanded offline are recorded, see Unexpandable).
func (s *Set) With(res *Resources) (*Set, error) {
	n := &Set{byURL: maps.Clone(s.byURL), core: s.core, codes: maps.Clone(s.codes), unexpandable: maps.Clone(s.unexpandable)}
	for _, sd := range res.Structures {
		st, err := Compile(sd)
		if err != nil {
			return nil, err
		}
		n.byURL[st.URL] = st
	}
	t := &Terminology{ValueSets: map[string]*ValueSet{}, CodeSystems: map[string]*CodeSystem{}}
	for _, vs := range res.ValueSets {
		t.ValueSets[vs.URL] = vs
	}
	for _, cs := range res.CodeSystems {
		t.CodeSystems[cs.URL] = cs
	}
	for _, vs := range res.ValueSets {
		codes, err := t.Expand(vs.URL)
		if err != nil {
			n.unexpandable[vs.URL] = err.Error()
			continue
		}
		n.codes[vs.URL] = codes
		delete(n.unexpandable, vs.URL)
	}
	return n, nil
}

// Structure returns the structure of canonical url (a "|version" suffix
// ignored), or nil.
func (s *Set) Structure(url string) *Structure {
	url, _, _ = strings.Cut(url, "|")
	return s.byURL[url]
}

// Profiles lists the URLs of the structures the set knows besides the core
// definitions, sorted.
func (s *Set) Profiles() []string {
	var out []string
	for u, st := range s.byURL {
		if s.core[st.Type] != st {
			out = append(out, u)
		}
	}
	sort.Strings(out)
	return out
}

// Unexpandable returns the value sets of bindings that validation skips
// because they cannot be expanded offline, with why.
func (s *Set) Unexpandable() map[string]string { return maps.Clone(s.unexpandable) }
