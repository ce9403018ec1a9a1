package profile

import (
	"fmt"
	"sort"
	"strings"
)

// CodeSystem is the part of a CodeSystem resource that expansion reads.
type CodeSystem struct {
	URL     string    `json:"url"`
	Content string    `json:"content"`
	Concept []Concept `json:"concept"`
}

// Concept is a code of a code system with the codes under it.
type Concept struct {
	Code    string    `json:"code"`
	Concept []Concept `json:"concept,omitempty"`
}

// ValueSet is the part of a ValueSet resource that expansion reads.
type ValueSet struct {
	URL     string `json:"url"`
	Compose *struct {
		Include []Include `json:"include"`
		Exclude []Include `json:"exclude"`
	} `json:"compose"`
	Expansion *struct {
		Contains []Contains `json:"contains"`
	} `json:"expansion"`
}

// Contains is a code of a ValueSet's expansion.
type Contains struct {
	System   string     `json:"system"`
	Code     string     `json:"code"`
	Contains []Contains `json:"contains"`
}

// Include is a part of a ValueSet's composition.
type Include struct {
	System  string `json:"system"`
	Concept []struct {
		Code string `json:"code"`
	} `json:"concept"`
	Filter []struct {
		Property string `json:"property"`
		Op       string `json:"op"`
		Value    string `json:"value"`
	} `json:"filter"`
	ValueSet []string `json:"valueSet"`
}

// Codes is an expanded value set: its codes by system.
type Codes map[string][]string

// has reports whether code of system is in c; an empty system matches a
// code of any system (elements of type code carry none).
func (c Codes) has(system, code string) bool {
	if system != "" {
		return contains(c[system], code)
	}
	for _, codes := range c {
		if contains(codes, code) {
			return true
		}
	}
	return false
}

func contains(sorted []string, code string) bool {
	i := sort.SearchStrings(sorted, code)
	return i < len(sorted) && sorted[i] == code
}

// Terminology is what expansion looks value sets and code systems up in.
type Terminology struct {
	ValueSets   map[string]*ValueSet
	CodeSystems map[string]*CodeSystem
}

// Expand expands the value set url offline: from its expansion if it has
// one, else from its composition, each include being a list of codes, a
// whole code system of complete content, an is-a or descendent-of filter
// on one, or other value sets. It returns an error saying why when it
// cannot (an unknown value set or code system, another filter).
func (t *Terminology) Expand(url string) (Codes, error) {
	return t.expand(url, 0)
}

func (t *Terminology) expand(url string, depth int) (Codes, error) {
	url, _, _ = strings.Cut(url, "|")
	if depth > 8 {
		return nil, fmt.Errorf("value set %s: includes nest too deep", url)
	}
	vs := t.ValueSets[url]
	if vs == nil {
		return nil, fmt.Errorf("value set %s is not known", url)
	}
	set := map[string]map[string]bool{}
	add := func(system, code string) {
		if set[system] == nil {
			set[system] = map[string]bool{}
		}
		set[system][code] = true
	}
	switch {
	case vs.Compose != nil:
		for _, inc := range vs.Compose.Include {
			codes, err := t.include(url, inc, depth)
			if err != nil {
				return nil, err
			}
			for sys, cs := range codes {
				for _, c := range cs {
					add(sys, c)
				}
			}
		}
		for _, exc := range vs.Compose.Exclude {
			codes, err := t.include(url, exc, depth)
			if err != nil {
				return nil, err
			}
			for sys, cs := range codes {
				for _, c := range cs {
					delete(set[sys], c)
				}
			}
		}
	case vs.Expansion != nil:
		var walk func([]Contains)
		walk = func(cs []Contains) {
			for _, c := range cs {
				if c.Code != "" {
					add(c.System, c.Code)
				}
				walk(c.Contains)
			}
		}
		walk(vs.Expansion.Contains)
	default:
		return nil, fmt.Errorf("value set %s has neither a composition nor an expansion", url)
	}
	out := Codes{}
	for sys, cs := range set {
		for c := range cs {
			out[sys] = append(out[sys], c)
		}
		sort.Strings(out[sys])
	}
	return out, nil
}

func (t *Terminology) include(url string, inc Include, depth int) (Codes, error) {
	var out Codes
	if inc.System != "" {
		out = Codes{}
		switch {
		case len(inc.Concept) > 0:
			if len(inc.Filter) > 0 {
				return nil, fmt.Errorf("value set %s: concepts and filters in one include", url)
			}
			for _, c := range inc.Concept {
				out[inc.System] = append(out[inc.System], c.Code)
			}
		default:
			cs := t.CodeSystems[inc.System]
			if cs == nil {
				return nil, fmt.Errorf("value set %s: code system %s is not known", url, inc.System)
			}
			if cs.Content != "complete" {
				return nil, fmt.Errorf("value set %s: code system %s is not complete (%s)", url, inc.System, cs.Content)
			}
			roots := cs.Concept
			for _, f := range inc.Filter {
				if f.Property != "concept" || f.Op != "is-a" && f.Op != "descendent-of" {
					return nil, fmt.Errorf("value set %s: filter %s %s is not supported", url, f.Property, f.Op)
				}
				c := findConcept(roots, f.Value)
				if c == nil {
					return nil, fmt.Errorf("value set %s: code %s not in %s", url, f.Value, inc.System)
				}
				if f.Op == "is-a" {
					roots = []Concept{*c}
				} else {
					roots = c.Concept
				}
			}
			var walk func([]Concept)
			walk = func(cs []Concept) {
				for _, c := range cs {
					out[inc.System] = append(out[inc.System], c.Code)
					walk(c.Concept)
				}
			}
			walk(roots)
		}
	}
	for _, ref := range inc.ValueSet {
		codes, err := t.expand(ref, depth+1)
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = codes
			continue
		}
		// An include with a system and value sets is their intersection.
		for sys, cs := range out {
			var kept []string
			for _, c := range cs {
				if codes.has(sys, c) {
					kept = append(kept, c)
				}
			}
			out[sys] = kept
		}
	}
	for sys := range out {
		sort.Strings(out[sys])
	}
	return out, nil
}

func findConcept(cs []Concept, code string) *Concept {
	for i := range cs {
		if cs[i].Code == code {
			return &cs[i]
		}
		if c := findConcept(cs[i].Concept, code); c != nil {
			return c
		}
	}
	return nil
}
