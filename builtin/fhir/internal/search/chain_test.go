package search

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"
)

var fixedNow = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

func TestParseChains(t *testing.T) {
	for _, c := range []struct {
		typ, name string
		types     []string // the inner types of the first link
		rev       bool
	}{
		{"Observation", "subject:Patient.name", []string{"Patient"}, false},
		{"Observation", "patient.identifier", []string{"Patient"}, false},
		{"Observation", "subject.name", []string{"Patient", "Location"}, false}, // Group and Device have no name
		{"DiagnosticReport", "subject:Patient.general-practitioner.name", []string{"Patient"}, false},
		{"Patient", "_has:Observation:patient:code", []string{"Observation"}, true},
		{"Patient", "_has:Observation:patient:_has:AuditEvent:entity:agent", []string{"Observation"}, true},
	} {
		q, err := Parse(c.typ, url.Values{c.name: {"x"}}, Options{Now: fixedNow})
		if err != nil {
			t.Errorf("%s?%s: %v", c.typ, c.name, err)
			continue
		}
		ch := q.Clauses[0].Chain
		var types []string
		for _, in := range ch.Queries {
			types = append(types, in.Type)
		}
		if ch.Rev != c.rev || strings.Join(types, ",") != strings.Join(c.types, ",") {
			t.Errorf("%s?%s: rev %v types %v, want %v %v", c.typ, c.name, ch.Rev, types, c.rev, c.types)
		}
	}
	for _, c := range []struct{ typ, name string }{
		{"Observation", "code.name"},                      // not a reference
		{"Observation", "subject:Medication.name"},        // not a target
		{"Observation", "subject.nonsense"},               // no target defines it
		{"Observation", "subject:Patient."},               // nothing after the dot
		{"Patient", "_has:Observation:patient"},           // no parameter
		{"Patient", "_has:Observation:code:code"},         // not a reference
		{"Patient", "_has:Encounter:service-provider:id"}, // does not refer to Patient
		{"Observation", "patient.organization.partof.partof.partof.name"},
	} {
		if _, err := Parse(c.typ, url.Values{c.name: {"x"}}, Options{Now: fixedNow}); err == nil {
			t.Errorf("%s?%s accepted", c.typ, c.name)
		}
	}
	if _, err := Parse("Observation", url.Values{"patient.organization.partof.partof.name": {"x"}}, Options{Now: fixedNow}); err != nil {
		t.Errorf("four references: %v", err)
	}
	// Lenient handling ignores a chain no target type can follow.
	q, err := Parse("Observation", url.Values{"subject.nonsense": {"x"}}, Options{Now: fixedNow, Lenient: true})
	if err != nil || len(q.Clauses) != 0 || len(q.Unknown) != 1 {
		t.Errorf("lenient: %+v %v", q, err)
	}
}

func TestParseComposite(t *testing.T) {
	q, err := Parse("Observation", url.Values{"component-code-value-quantity": {`http://loinc.org|8480-6$gt100|http://unitsofmeasure.org|mm[Hg],8462-4$le9\$`}},
		Options{Now: fixedNow})
	if err == nil {
		t.Fatalf("%q: an escaped $ is part of a number", q.Clauses[0].Values[1].Raw)
	}
	q, err = Parse("Observation", url.Values{"component-code-value-quantity": {`http://loinc.org|8480-6$gt100|http://unitsofmeasure.org|mm[Hg],8462-4$le90`}},
		Options{Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	vs := q.Clauses[0].Values
	if len(vs) != 2 || vs[0].Parts[0].Code != "8480-6" || vs[0].Parts[0].System != "http://loinc.org" || vs[0].Parts[1].Prefix != "gt" ||
		vs[0].Parts[1].Num != 100 || vs[0].Parts[1].Code != "mm[Hg]" || !vs[1].Parts[0].AnySystem || vs[1].Parts[1].Prefix != "le" {
		t.Errorf("values %+v", vs)
	}
	// A "$" of a string component, escaped.
	q, err = Parse("Observation", url.Values{"code-value-string": {`1234-5$a\$b`}}, Options{Now: fixedNow})
	if err != nil || q.Clauses[0].Values[0].Parts[1].Str != "a$b" {
		t.Errorf("escaped $: %+v %v", q, err)
	}
}

func TestIndexComposites(t *testing.T) {
	var res any
	d := json.NewDecoder(strings.NewReader(`{"resourceType":"Observation","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},
		"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":120}},
		{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueQuantity":{"value":80}}]}`))
	d.UseNumber()
	if err := d.Decode(&res); err != nil {
		t.Fatal(err)
	}
	e := Index("Observation", "o", res)
	got := map[string]float64{}
	for _, q := range e.Quantities {
		if IsCompositeKey(q.Param) {
			got[q.Param] = q.Value
		}
	}
	p, _ := Lookup("Observation", "component-code-value-quantity")
	for code, want := range map[string]float64{"8480-6": 120, "8462-4": 80} {
		for _, first := range []Value{{Code: code, AnySystem: true}, {System: "http://loinc.org", Code: code}, {System: "http://loinc.org"}} {
			k := CompositeKey(p, Value{Parts: []Value{first, {}}}, 1)
			if first.Code == "" {
				continue // both components share it
			}
			if got[k] != want {
				t.Errorf("%q: %v, want %v", k, got[k], want)
			}
		}
	}
}

// FuzzParseChain parses arbitrary parameter names and values: an error or
// a query whose chains follow at most MaxChainDepth references, each
// inner search with one clause of its own type.
func FuzzParseChain(f *testing.F) {
	for _, s := range []string{
		"subject:Patient.name", "patient.identifier", "subject.name:exact", "subject:Patient.general-practitioner.name",
		"_has:Observation:patient:code", "_has:Observation:patient:_has:AuditEvent:entity:agent", "patient._has:Observation:patient:code",
		"_has:Observation:patient:performer:Practitioner.name", "subject..name", "_has:::", "_has:Observation:patient:", "a.b.c.d.e.f",
		"patient.organization.partof.partof.partof.name", "subject:Patient._id", "subject.code-value-quantity",
	} {
		f.Add("Observation", s, "x")
		f.Add("Patient", s, "1234-5$gt5")
	}
	f.Fuzz(func(t *testing.T, typ, name, value string) {
		q, err := Parse(typ, url.Values{name: {value}}, Options{Now: fixedNow})
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		var walk func(q *Query, depth int)
		walk = func(q *Query, depth int) {
			for _, c := range q.Clauses {
				if c.Chain == nil {
					continue
				}
				if depth >= MaxChainDepth {
					t.Fatalf("%s: deeper than %d", name, MaxChainDepth)
				}
				if len(c.Chain.Queries) == 0 || c.Chain.Rev && len(c.Chain.Queries) != 1 {
					t.Fatalf("%s: %d inner searches", name, len(c.Chain.Queries))
				}
				for _, in := range c.Chain.Queries {
					if len(in.Clauses) != 1 {
						t.Fatalf("%s: inner search of %d clauses", name, len(in.Clauses))
					}
					if in.Clauses[0].Chain == nil && in.Clauses[0].Param != nil && in.Clauses[0].Param.Resource != in.Type {
						t.Fatalf("%s: a %s parameter in a search of %s", name, in.Clauses[0].Param.Resource, in.Type)
					}
					walk(in, depth+1)
				}
			}
		}
		walk(q, 0)
	})
}

// FuzzParseComposite parses arbitrary composite values: an error, or one
// part per component, whose keys a store can compute.
func FuzzParseComposite(f *testing.F) {
	for _, s := range []string{
		"http://loinc.org|8480-6$gt100", "8480-6$100|http://unitsofmeasure.org|mm[Hg]", "|$5", "a$b$c", `a\$b$1`, "$", "x$",
		"http://loinc.org|$ap5", "1$ge22125600$le22125700", "DocumentReference/d0$replaces", "d0$replaces", "a,b$1,c$2",
	} {
		f.Add("component-code-value-quantity", s)
		f.Add("chromosome-variant-coordinate", s)
		f.Add("relationship", s)
	}
	types := map[string]string{"component-code-value-quantity": "Observation", "chromosome-variant-coordinate": "MolecularSequence",
		"relationship": "DocumentReference", "code-value-string": "Observation", "code-value-date": "Observation"}
	f.Fuzz(func(t *testing.T, param, value string) {
		typ, ok := types[param]
		if !ok {
			return
		}
		q, err := Parse(typ, url.Values{param: {value}}, Options{Now: fixedNow})
		if err != nil {
			return
		}
		c := q.Clauses[0]
		comps := c.Param.Components()
		for _, v := range c.Values {
			if len(v.Parts) != len(comps) {
				t.Fatalf("%q: %d parts, %d components", value, len(v.Parts), len(comps))
			}
			for j := 1; j < len(comps); j++ {
				if k := CompositeKey(c.Param, v, j); !IsCompositeKey(k) {
					t.Fatalf("%q: key %q", value, k)
				}
			}
		}
	})
}
