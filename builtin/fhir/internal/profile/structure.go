// Package profile validates resources against StructureDefinitions: the
// core definitions of R4's resources and data types (generated into the
// spec package by ../gen) and the snapshot profiles of FHIR packages a
// user supplies. It checks cardinality, fixed and pattern values, choice
// types, required bindings to value sets it can expand offline, slicing by
// value and pattern discriminators, and the invariants whose FHIRPath the
// fhirpath package evaluates.
package profile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/fhirpath"
)

// StructureDefinition is the part of a StructureDefinition resource that
// validation reads. Encoding it again keeps only that part (the generator
// writes the core definitions so).
type StructureDefinition struct {
	ResourceType   string `json:"resourceType,omitempty"`
	URL            string `json:"url"`
	Version        string `json:"version,omitempty"`
	Type           string `json:"type"`
	Kind           string `json:"kind"`
	Abstract       bool   `json:"abstract,omitempty"`
	Derivation     string `json:"derivation,omitempty"`
	BaseDefinition string `json:"baseDefinition,omitempty"`
	FHIRVersion    string `json:"fhirVersion,omitempty"`
	Snapshot       *struct {
		Element []ElementDefinition `json:"element"`
	} `json:"snapshot,omitempty"`
}

// ElementDefinition is the part of an ElementDefinition that validation
// reads.
type ElementDefinition struct {
	ID               string       `json:"id,omitempty"`
	Path             string       `json:"path"`
	SliceName        string       `json:"sliceName,omitempty"`
	Min              int          `json:"min,omitempty"`
	Max              string       `json:"max,omitempty"`
	Type             []TypeRef    `json:"type,omitempty"`
	ContentReference string       `json:"contentReference,omitempty"`
	Slicing          *Slicing     `json:"slicing,omitempty"`
	Binding          *Binding     `json:"binding,omitempty"`
	Constraint       []Constraint `json:"constraint,omitempty"`
	// Fixed and Pattern hold fixed[x] and pattern[x] as sent; FixedKey and
	// PatternKey their JSON names (fixedUri, patternCodeableConcept).
	Fixed      json.RawMessage `json:"-"`
	FixedKey   string          `json:"-"`
	Pattern    json.RawMessage `json:"-"`
	PatternKey string          `json:"-"`
}

// TypeRef is one allowed type of an element.
type TypeRef struct {
	Code    string   `json:"code"`
	Profile []string `json:"profile,omitempty"`
}

// Slicing says how the repetitions of an element are told apart.
type Slicing struct {
	Discriminator []struct {
		Type string `json:"type"`
		Path string `json:"path"`
	} `json:"discriminator,omitempty"`
	Rules string `json:"rules,omitempty"`
}

// Binding ties a coded element to a value set.
type Binding struct {
	Strength string `json:"strength"`
	ValueSet string `json:"valueSet,omitempty"`
}

// Constraint is an invariant.
type Constraint struct {
	Key        string `json:"key"`
	Severity   string `json:"severity"`
	Human      string `json:"human,omitempty"`
	Expression string `json:"expression,omitempty"`
}

type elementAlias ElementDefinition

// UnmarshalJSON reads an element, fixed[x] and pattern[x] included, and
// turns the FHIRPath system types of primitive values
// (http://hl7.org/fhirpath/System.String) into "" (a leaf).
func (e *ElementDefinition) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, (*elementAlias)(e)); err != nil {
		return err
	}
	if bytes.Contains(b, []byte(`"fixed`)) || bytes.Contains(b, []byte(`"pattern`)) {
		var all map[string]json.RawMessage
		if err := json.Unmarshal(b, &all); err != nil {
			return err
		}
		for k, v := range all {
			switch {
			case strings.HasPrefix(k, "fixed") && len(k) > 5:
				e.Fixed, e.FixedKey = v, k
			case strings.HasPrefix(k, "pattern") && len(k) > 7:
				e.Pattern, e.PatternKey = v, k
			}
		}
	}
	for i, t := range e.Type {
		if strings.HasPrefix(t.Code, "http://hl7.org/fhirpath/System.") {
			e.Type[i].Code = ""
		}
	}
	return nil
}

// MarshalJSON writes the element back, fixed[x] and pattern[x] included.
func (e ElementDefinition) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(elementAlias(e))
	if err != nil {
		return nil, err
	}
	b = b[:len(b)-1]
	for _, kv := range []struct {
		k string
		v json.RawMessage
	}{{e.FixedKey, e.Fixed}, {e.PatternKey, e.Pattern}} {
		if kv.k == "" {
			continue
		}
		var c bytes.Buffer
		if err := json.Compact(&c, kv.v); err != nil {
			return nil, err
		}
		b = append(b, ',')
		b = strconv.AppendQuote(b, kv.k)
		b = append(b, ':')
		b = append(b, c.Bytes()...)
	}
	return append(b, '}'), nil
}

// Structure is a StructureDefinition compiled for validation.
type Structure struct {
	URL  string
	Type string
	Kind string
	root *elem
	// Skipped lists the invariants of the definition that are not
	// evaluated, with why.
	Skipped []string
}

// elem is one element of a structure with its children grouped by name.
type elem struct {
	id, path   string
	sliceName  string
	min, max   int // max -1: unbounded
	types      []TypeRef
	contentRef string
	slicing    *Slicing
	valueSet   string // of a required binding, without version
	invariants []invariant
	fixed      any
	pattern    any
	groups     []*group
	byName     map[string]*group
}

// group is an element and its slices.
type group struct {
	name   string // JSON name; a choice element's without [x]
	choice bool
	base   *elem
	slices []*elem
}

type invariant struct {
	key, human string
	expr       *fhirpath.Expr
}

// skippedFuncs explain why an invariant that uses them is not evaluated.
var skippedFuncs = []struct{ fn, why string }{
	{"resolve()", "needs the referenced resource"},
	{"descendants()", "needs the types of all descendants"},
	{"memberOf(", "needs a terminology server"},
	{"conformsTo(", "needs profile resolution inside FHIRPath"},
	{"htmlChecks()", "XHTML rules are not checked"},
	{"now()", "depends on the date"},
	{"today()", "depends on the date"},
}

// CompileInvariant compiles a constraint's expression, or says why it is
// not evaluated.
func CompileInvariant(expr string) (*fhirpath.Expr, string) {
	for _, s := range skippedFuncs {
		if strings.Contains(expr, s.fn) {
			return nil, "uses " + strings.TrimSuffix(s.fn, "(") + ": " + s.why
		}
	}
	e, err := fhirpath.ParseInvariant(expr)
	if err != nil {
		return nil, err.Error()
	}
	return e, ""
}

// Compile builds the validation form of sd, which must have a snapshot.
func Compile(sd *StructureDefinition) (*Structure, error) {
	if sd.Snapshot == nil || len(sd.Snapshot.Element) == 0 {
		return nil, fmt.Errorf("StructureDefinition %s has no snapshot", sd.URL)
	}
	s := &Structure{URL: sd.URL, Type: sd.Type, Kind: sd.Kind}
	byID := map[string]*elem{}
	for i := range sd.Snapshot.Element {
		ed := &sd.Snapshot.Element[i]
		e, err := s.compileElement(ed)
		if err != nil {
			return nil, fmt.Errorf("%s: element %s: %w", sd.URL, ed.Path, err)
		}
		if i == 0 {
			s.root = e
			byID[e.id] = e
			continue
		}
		dot := strings.LastIndexByte(e.id, '.')
		if dot < 0 {
			continue
		}
		parent := byID[e.id[:dot]]
		byID[e.id] = e
		if parent == nil {
			continue
		}
		seg := e.id[dot+1:]
		name, slice, sliced := strings.Cut(seg, ":")
		if sliced && strings.Contains(slice, "/") {
			continue // re-slicing is not supported
		}
		base, choice := strings.CutSuffix(name, "[x]")
		if parent.byName == nil {
			parent.byName = map[string]*group{}
		}
		g := parent.byName[base]
		if g == nil {
			g = &group{name: base, choice: choice}
			parent.byName[base] = g
			parent.groups = append(parent.groups, g)
		}
		if sliced {
			g.slices = append(g.slices, e)
		} else {
			g.base = e
		}
	}
	// Elements of a contentReference share the children of the element
	// they refer to.
	for _, e := range byID {
		if e.contentRef != "" && len(e.groups) == 0 {
			ref := e.contentRef[strings.IndexByte(e.contentRef, '#')+1:]
			if r := byID[ref]; r != nil {
				e.groups, e.byName = r.groups, r.byName
				if len(e.types) == 0 {
					e.types = r.types
				}
			}
		}
	}
	for _, e := range byID {
		kept := e.groups[:0]
		for _, g := range e.groups {
			if g.base != nil {
				kept = append(kept, g)
			} else {
				delete(e.byName, g.name)
			}
		}
		e.groups = kept
	}
	if s.root == nil {
		return nil, fmt.Errorf("StructureDefinition %s has no root element", sd.URL)
	}
	return s, nil
}

func (s *Structure) compileElement(ed *ElementDefinition) (*elem, error) {
	e := &elem{id: ed.ID, path: ed.Path, sliceName: ed.SliceName, min: ed.Min, max: -1,
		types: ed.Type, contentRef: ed.ContentReference, slicing: ed.Slicing}
	if e.id == "" {
		e.id = e.path
	}
	if ed.Max != "" && ed.Max != "*" {
		n, err := strconv.Atoi(ed.Max)
		if err != nil {
			return nil, fmt.Errorf("bad max %q", ed.Max)
		}
		e.max = n
	}
	if b := ed.Binding; b != nil && b.Strength == "required" && b.ValueSet != "" {
		e.valueSet, _, _ = strings.Cut(b.ValueSet, "|")
	}
	var err error
	if ed.Fixed != nil {
		if e.fixed, err = decodeValue(ed.Fixed); err != nil {
			return nil, fmt.Errorf("%s: %w", ed.FixedKey, err)
		}
	}
	if ed.Pattern != nil {
		if e.pattern, err = decodeValue(ed.Pattern); err != nil {
			return nil, fmt.Errorf("%s: %w", ed.PatternKey, err)
		}
	}
	for _, c := range ed.Constraint {
		if c.Severity != "error" || c.Key == "ele-1" || c.Expression == "" {
			continue // ele-1 is checked natively
		}
		x, why := CompileInvariant(c.Expression)
		if x == nil {
			s.Skipped = append(s.Skipped, c.Key+": "+why)
			continue
		}
		e.invariants = append(e.invariants, invariant{key: c.Key, human: c.Human, expr: x})
	}
	return e, nil
}

func decodeValue(raw []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	err := d.Decode(&v)
	return v, err
}
