package search

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/fhirpath"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// Entries are the index rows of one resource version. Param is the
// parameter's Key ("Observation.code").
type Entries struct {
	Strings    []StringEntry
	Tokens     []TokenEntry
	Refs       []RefEntry
	Dates      []DateEntry
	Numbers    []NumberEntry
	Quantities []QuantityEntry
	URIs       []URIEntry
	// Compartments are the ids of the patients whose compartment holds
	// the resource (a Patient is in its own).
	Compartments []string
}

// StringEntry indexes a string parameter: Norm (see Normalize) for the
// default and :contains searches, Exact for :exact.
type StringEntry struct{ Param, Norm, Exact string }

// TokenEntry indexes one code, identifier or other token. Text holds the
// normalized display or text, for :text.
type TokenEntry struct{ Param, System, Code, Text string }

// RefEntry indexes a reference: Type and ID for literal references, URL for
// absolute and canonical ones.
type RefEntry struct{ Param, Type, ID, URL string }

// DateEntry indexes the range [Lo, Hi) in milliseconds.
type DateEntry struct {
	Param  string
	Lo, Hi int64
}

// NumberEntry indexes a number.
type NumberEntry struct {
	Param string
	Value float64
}

// QuantityEntry indexes a quantity with its system and code (or unit).
type QuantityEntry struct {
	Param        string
	Value        float64
	System, Code string
}

// URIEntry indexes a uri.
type URIEntry struct{ Param, Value string }

// Only returns the entries of e whose Param passes keep (without the
// compartments).
func (e *Entries) Only(keep func(param string) bool) *Entries {
	o := &Entries{}
	o.addRekeyed(e, func(p string) (string, bool) { return p, keep(p) })
	return o
}

// addRekeyed appends the entries of o that f keeps, under the Param f
// gives them.
func (e *Entries) addRekeyed(o *Entries, f func(param string) (string, bool)) {
	e.Strings = append(e.Strings, rekeyed(o.Strings, func(x *StringEntry) *string { return &x.Param }, f)...)
	e.Tokens = append(e.Tokens, rekeyed(o.Tokens, func(x *TokenEntry) *string { return &x.Param }, f)...)
	e.Refs = append(e.Refs, rekeyed(o.Refs, func(x *RefEntry) *string { return &x.Param }, f)...)
	e.Dates = append(e.Dates, rekeyed(o.Dates, func(x *DateEntry) *string { return &x.Param }, f)...)
	e.Numbers = append(e.Numbers, rekeyed(o.Numbers, func(x *NumberEntry) *string { return &x.Param }, f)...)
	e.Quantities = append(e.Quantities, rekeyed(o.Quantities, func(x *QuantityEntry) *string { return &x.Param }, f)...)
	e.URIs = append(e.URIs, rekeyed(o.URIs, func(x *URIEntry) *string { return &x.Param }, f)...)
}

// rekeyed returns the xs that f keeps, with the Param (param's field) f
// gives them.
func rekeyed[T any](xs []T, param func(*T) *string, f func(string) (string, bool)) []T {
	var out []T
	for _, x := range xs {
		p := param(&x)
		if k, ok := f(*p); ok {
			*p = k
			out = append(out, x)
		}
	}
	return out
}

// maxIndexedString caps the length of indexed strings.
const maxIndexedString = 512

// Index evaluates every search parameter of the resource's type on
// resource (decoded with UseNumber) and returns its index entries. _id and
// _lastUpdated are not included: stores keep them as columns.
func Index(typ, id string, resource any) *Entries {
	e := &Entries{}
	for _, p := range Params(typ) {
		if p.Code == "_id" || p.Code == "_lastUpdated" {
			continue
		}
		if p.Type == TypeComposite {
			e.addComposite(p, resource)
			continue
		}
		key := p.Key()
		for _, n := range p.Eval(resource) {
			e.add(p, key, n)
		}
	}
	seen := map[string]bool{}
	if typ == "Patient" && id != "" {
		e.Compartments = append(e.Compartments, id)
		seen[id] = true
	}
	for _, code := range spec.PatientCompartment[typ] {
		key := typ + "." + code
		for _, r := range e.Refs {
			if r.Param == key && r.Type == "Patient" && r.ID != "" && !seen[r.ID] {
				seen[r.ID] = true
				e.Compartments = append(e.Compartments, r.ID)
			}
		}
	}
	return e
}

func (e *Entries) add(p *Param, key string, n fhirpath.Node) {
	e.addTyped(p.Type, key, n)
	if p.Type == TypeToken && IsIdentifier(p) {
		e.addOfType(key+OfTypeSuffix, n.V)
	}
}

// addTyped adds the entries of value n of a parameter of type typ.
func (e *Entries) addTyped(typ, key string, n fhirpath.Node) {
	switch typ {
	case TypeString:
		e.addString(key, n.V, 0)
	case TypeToken:
		e.addToken(key, n)
	case TypeReference:
		e.addRef(key, n.V)
	case TypeDate:
		e.addDate(key, n.V)
	case TypeNumber:
		if f, ok := number(n.V); ok {
			e.Numbers = append(e.Numbers, NumberEntry{key, f})
		}
	case TypeQuantity:
		e.addQuantity(key, n.V)
	case TypeURI:
		if s, ok := n.V.(string); ok {
			e.URIs = append(e.URIs, URIEntry{key, s})
		}
	}
}

func truncate(s string) string {
	if len(s) <= maxIndexedString {
		return s
	}
	i := maxIndexedString
	for i > 0 && s[i]&0xC0 == 0x80 { // do not cut a UTF-8 sequence
		i--
	}
	return s[:i]
}

// skipStringKeys are elements of complex types that hold codes or metadata,
// not searchable text (HumanName.use, Address.type, …).
var skipStringKeys = map[string]bool{
	"use": true, "type": true, "system": true, "id": true, "extension": true, "period": true, "rank": true, "url": true,
}

func (e *Entries) addString(key string, v any, depth int) {
	switch v := v.(type) {
	case string:
		if v != "" {
			e.Strings = append(e.Strings, StringEntry{key, truncate(Normalize(v)), truncate(v)})
		}
	case []any:
		for _, x := range v {
			e.addString(key, x, depth)
		}
	case map[string]any:
		if depth > 1 {
			return
		}
		for k, x := range v {
			if !skipStringKeys[k] && k[0] != '_' {
				e.addString(key, x, depth+1)
			}
		}
	}
}

// contactSystems are ContactPoint.system codes: a ContactPoint is indexed
// by its value, not as a system|value identifier.
var contactSystems = map[string]bool{
	"phone": true, "fax": true, "email": true, "pager": true, "url": true, "sms": true, "other": true,
}

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

func (e *Entries) addToken(key string, n fhirpath.Node) {
	switch v := n.V.(type) {
	case string:
		e.Tokens = append(e.Tokens, TokenEntry{Param: key, Code: v})
	case bool:
		e.Tokens = append(e.Tokens, TokenEntry{Param: key, Code: strconv.FormatBool(v)})
	case map[string]any:
		if codings, ok := v["coding"].([]any); ok || v["text"] != nil && v["code"] == nil && v["value"] == nil {
			for _, c := range codings {
				if m, ok := c.(map[string]any); ok {
					e.addCoding(key, m)
				}
			}
			if t := str(v, "text"); t != "" {
				e.Tokens = append(e.Tokens, TokenEntry{Param: key, Text: truncate(Normalize(t))})
			}
			return
		}
		if _, ok := v["code"]; ok {
			e.addCoding(key, v)
			return
		}
		if val := str(v, "value"); val != "" {
			sys := str(v, "system")
			if contactSystems[sys] {
				sys = ""
			}
			te := TokenEntry{Param: key, System: sys, Code: val}
			if t, ok := v["type"].(map[string]any); ok {
				te.Text = truncate(Normalize(str(t, "text")))
			}
			e.Tokens = append(e.Tokens, te)
		}
	}
}

func (e *Entries) addCoding(key string, m map[string]any) {
	code := str(m, "code")
	display := str(m, "display")
	if code == "" && display == "" {
		return
	}
	e.Tokens = append(e.Tokens, TokenEntry{Param: key, System: str(m, "system"), Code: code, Text: truncate(Normalize(display))})
}

func (e *Entries) addRef(key string, v any) {
	var ref string
	switch v := v.(type) {
	case string: // canonical or uri
		e.Refs = append(e.Refs, RefEntry{Param: key, URL: v})
		return
	case map[string]any:
		ref = str(v, "reference")
	}
	if ref == "" || ref[0] == '#' {
		return
	}
	// An absolute reference (http://other.example/fhir/Patient/85, a
	// urn) names a resource of another server, or none: it is indexed by
	// its URL only, so that it never matches, nor joins the compartment
	// of, this server's Patient/85.
	re := RefEntry{Param: key}
	if strings.Contains(ref, ":") {
		re.URL = ref
	} else {
		re.Type, re.ID = fhirpath.ReferenceParts(ref)
	}
	if re.ID == "" && re.URL == "" {
		return
	}
	e.Refs = append(e.Refs, re)
}

func (e *Entries) addDate(key string, v any) {
	switch v := v.(type) {
	case string:
		if lo, hi, err := ParseDate(v); err == nil {
			e.Dates = append(e.Dates, DateEntry{key, lo, hi})
		}
	case map[string]any:
		if _, ok := v["start"]; ok || v["end"] != nil { // Period
			lo, hi := MinTime, MaxTime
			if s := str(v, "start"); s != "" {
				if l, _, err := ParseDate(s); err == nil {
					lo = l
				}
			}
			if s := str(v, "end"); s != "" {
				if _, h, err := ParseDate(s); err == nil {
					hi = h
				}
			}
			e.Dates = append(e.Dates, DateEntry{key, lo, hi})
			return
		}
		if ev, ok := v["event"].([]any); ok { // Timing
			for _, x := range ev {
				e.addDate(key, x)
			}
		}
	}
}

func number(v any) (float64, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	f, err := n.Float64()
	return f, err == nil
}

func (e *Entries) addQuantity(key string, v any) {
	switch v := v.(type) {
	case json.Number:
		if f, ok := number(v); ok {
			e.Quantities = append(e.Quantities, QuantityEntry{Param: key, Value: f})
		}
	case map[string]any:
		f, ok := number(v["value"])
		if !ok {
			return
		}
		if cur := str(v, "currency"); cur != "" { // Money
			e.Quantities = append(e.Quantities, QuantityEntry{key, f, "urn:iso:std:iso:4217", cur})
			return
		}
		code := str(v, "code")
		if code == "" {
			code = str(v, "unit")
		}
		e.Quantities = append(e.Quantities, QuantityEntry{key, f, str(v, "system"), code})
		if u := str(v, "unit"); u != "" && u != code {
			e.Quantities = append(e.Quantities, QuantityEntry{key, f, "", u})
		}
	}
}

// Compartments returns the ids of the patients whose compartment holds the
// resource, evaluating only the parameters that define the compartment
// (cheaper than Index).
func Compartments(typ, id string, resource any) []string {
	var out []string
	seen := map[string]bool{}
	if typ == "Patient" && id != "" {
		out = append(out, id)
		seen[id] = true
	}
	for _, code := range spec.PatientCompartment[typ] {
		p, ok := Lookup(typ, code)
		if !ok || p.Type != TypeReference {
			continue
		}
		var e Entries
		for _, n := range p.Eval(resource) {
			e.addRef(p.Key(), n.V)
		}
		for _, r := range e.Refs {
			if r.Type == "Patient" && r.ID != "" && !seen[r.ID] {
				seen[r.ID] = true
				out = append(out, r.ID)
			}
		}
	}
	return out
}
