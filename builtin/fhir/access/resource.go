package access

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// Resource is one decoded FHIR resource, for checking it against a
// Decision outside a store: in front of an upstream server, the authz
// plugin checks what the server answers (and what a client writes) with
// it. Decode it once and ask it several questions.
type Resource struct {
	// Type and ID are the resource's resourceType and id ("" when the
	// resource has none yet, as in a create).
	Type, ID string

	tree         any
	compartments []string
	compDone     bool
	index        *search.Entries
}

// ErrNotResource is returned (wrapped) by DecodeResource for JSON that is
// not a FHIR resource.
var ErrNotResource = errors.New("not a FHIR resource")

// DecodeResource decodes the JSON of a resource. It fails on malformed
// JSON, on an object with a key twice (parsers differ on which one wins:
// the one checked must be the one stored), and (with ErrNotResource) on
// JSON that is not an object with a known resourceType.
func DecodeResource(body []byte) (*Resource, error) {
	if err := CheckJSON(body); err != nil {
		return nil, fmt.Errorf("decode resource: %w", err)
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	var tree any
	if err := d.Decode(&tree); err != nil {
		return nil, fmt.Errorf("decode resource: %w", err)
	}
	if d.More() {
		return nil, fmt.Errorf("decode resource: data after the resource: %w", ErrNotResource)
	}
	m, ok := tree.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("a JSON %T: %w", tree, ErrNotResource)
	}
	typ, _ := m["resourceType"].(string)
	if !spec.IsResourceType(typ) {
		return nil, fmt.Errorf("resourceType %q: %w", typ, ErrNotResource)
	}
	id, _ := m["id"].(string)
	return &Resource{Type: typ, ID: id, tree: tree}, nil
}

// CheckJSON reports malformed JSON, data after the first value, and an
// object with a key twice, even in another case ("subject" and
// "Subject"): parsers differ on which of two keys wins, and some match
// keys without regard to case, so a document checked by one and read by
// another must have neither.
func CheckJSON(body []byte) error {
	d := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		obj  bool
		keys map[string]bool
		key  bool // the next token of an object is a key
	}
	var stack []*frame
	for {
		t, err := d.Token()
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		if err != nil {
			return err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.obj && top.key {
			if k, ok := t.(string); ok {
				k = strings.ToLower(k)
				if top.keys[k] {
					return fmt.Errorf("key %q appears twice in an object", k)
				}
				top.keys[k] = true
				top.key = false
				continue
			}
		}
		switch t {
		case json.Delim('{'):
			stack = append(stack, &frame{obj: true, keys: map[string]bool{}, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) == 0 { // the document's value ended
			if len(bytes.TrimLeft(body[d.InputOffset():], " \t\r\n")) > 0 {
				return errors.New("data after the JSON value")
			}
			return nil
		}
		if stack[len(stack)-1].obj {
			stack[len(stack)-1].key = true // a value ended: a key comes next
		}
	}
}

// Compartments returns the ids of the patients whose compartment holds the
// resource (see the package function Compartments).
func (r *Resource) Compartments() []string {
	if !r.compDone {
		r.compDone = true
		if InCompartment(r.Type) {
			r.compartments = search.Compartments(r.Type, r.ID, r.tree)
		}
	}
	return r.compartments
}

// InCompartmentOf reports whether the resource is in the Patient
// compartment of patient.
func (r *Resource) InCompartmentOf(patient string) bool {
	return patient != "" && slices.Contains(r.Compartments(), patient)
}

// Matches reports whether the resource matches filter, a v2 scope
// constraint: every parameter (ANDed), each with any of its
// comma-separated values. It evaluates the parameters the way the embedded
// server indexes them, for the kinds SMART v2 constraints use: token
// (code, system|code, |code, system|), reference, string (starts with,
// or :exact), uri, and _id, without other modifiers. Any other parameter
// gives an error: such a constraint cannot be checked outside a store,
// and callers must refuse what they cannot check.
func (r *Resource) Matches(filter url.Values) (bool, error) {
	q, err := parseFilter(r.Type, filter)
	if err != nil {
		return false, err
	}
	if r.index == nil {
		r.index = search.Index(r.Type, r.ID, r.tree)
	}
	for _, c := range q.Clauses {
		if !clauseMatches(c, r.ID, r.index) {
			return false, nil
		}
	}
	return true, nil
}

// MatchesAny reports whether the resource matches any of filters (the
// alternatives of Decision.Filters); true when filters is empty.
func (r *Resource) MatchesAny(filters []url.Values) (bool, error) {
	if len(filters) == 0 {
		return true, nil
	}
	for _, f := range filters {
		ok, err := r.Matches(f)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

// Admits reports whether d lets its holder see or leave the resource: in
// the compartment d confines to, and matching one of d's filters. The
// reason says why not. A refused decision admits nothing.
func (d Decision) Admits(r *Resource) (bool, string) {
	if !d.Allowed {
		return false, d.Reason
	}
	if d.Compartment != "" && !r.InCompartmentOf(d.Compartment) {
		return false, r.Type + " is outside the patient's compartment"
	}
	ok, err := r.MatchesAny(d.Filters)
	if err != nil {
		return false, "the scope constraint cannot be checked: " + err.Error()
	}
	if !ok {
		return false, r.Type + " does not match the scope's constraint"
	}
	return true, ""
}

// CheckFilter reports whether Resource.Matches can evaluate filter on
// resources of type typ, and if not, why.
func CheckFilter(typ string, filter url.Values) error {
	_, err := parseFilter(typ, filter)
	return err
}

func parseFilter(typ string, filter url.Values) (*search.Query, error) {
	for name := range filter {
		code, mod, _ := strings.Cut(name, ":")
		if mod != "" && mod != "exact" {
			return nil, fmt.Errorf("%s: the modifier :%s is not supported in constraints", name, mod)
		}
		if code == "_id" {
			continue
		}
		p, ok := search.Lookup(typ, code)
		if !ok {
			return nil, fmt.Errorf("%s is not a search parameter of %s", code, typ)
		}
		switch p.Type {
		case search.TypeToken, search.TypeReference, search.TypeURI:
			if mod != "" {
				return nil, fmt.Errorf("%s: :%s applies to string parameters only", name, mod)
			}
		case search.TypeString:
		default:
			return nil, fmt.Errorf("%s is a %s parameter; constraints may use token, reference, string and uri parameters", code, p.Type)
		}
	}
	q, err := search.Parse(typ, filter, search.Options{})
	if err != nil {
		return nil, err
	}
	return q, nil
}

func clauseMatches(c search.Clause, id string, e *search.Entries) bool {
	for _, v := range c.Values {
		if valueMatches(c, v, id, e) {
			return true
		}
	}
	return false
}

func valueMatches(c search.Clause, v search.Value, id string, e *search.Entries) bool {
	if c.Name == "_id" {
		return v.Code == id
	}
	key := c.Param.Key()
	switch c.Type {
	case search.TypeToken:
		for _, t := range e.Tokens {
			if t.Param != key || t.Code == "" && v.Code != "" {
				continue
			}
			if (v.Code == "" || t.Code == v.Code) && (v.AnySystem || t.System == v.System) {
				return true
			}
		}
	case search.TypeReference:
		for _, rf := range e.Refs {
			if rf.Param != key {
				continue
			}
			if v.URL != "" {
				if rf.URL == v.URL {
					return true
				}
				continue
			}
			if rf.ID == v.RefID && (v.RefType == "" || rf.Type == v.RefType) {
				return true
			}
		}
	case search.TypeString:
		for _, s := range e.Strings {
			if s.Param != key {
				continue
			}
			if c.Modifier == "exact" && s.Exact == v.Str || c.Modifier == "" && strings.HasPrefix(s.Norm, v.Str) {
				return true
			}
		}
	case search.TypeURI:
		for _, u := range e.URIs {
			if u.Param == key && u.Value == v.Str {
				return true
			}
		}
	}
	return false
}

// ReferenceTargets returns the resource types the reference search
// parameter code of typ may point to (Observation.subject: Patient, Group,
// Device, Location), and false when code is not a reference parameter of
// typ.
func ReferenceTargets(typ, code string) ([]string, bool) {
	p, ok := search.Lookup(typ, code)
	if !ok || p.Type != search.TypeReference {
		return nil, false
	}
	if len(p.Target) == 0 {
		return nil, true
	}
	return slices.Clone(p.Target), true
}

// IsSearchParam reports whether code is a search parameter of typ (or one
// of every type: _id, _lastUpdated, …).
func IsSearchParam(typ, code string) bool {
	if code == "_id" || code == "_lastUpdated" {
		return true
	}
	_, ok := search.Lookup(typ, code)
	return ok
}

// IsResourceType reports whether typ is an R4 resource type.
func IsResourceType(typ string) bool { return spec.IsResourceType(typ) }
