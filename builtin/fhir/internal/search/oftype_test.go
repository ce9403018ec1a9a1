package search

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
)

func decode(t *testing.T, s string) any {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// An identifier is indexed by its type's codings and value, and
// identifier:of-type searches those rows.
func TestOfType(t *testing.T) {
	p := decode(t, `{"resourceType":"Patient","identifier":[
		{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]},"system":"http://h","value":"123"},
		{"system":"http://x","value":"456"}]}`)
	var rows []TokenEntry
	for _, e := range Index("Patient", "p", p).Tokens {
		if strings.HasSuffix(e.Param, OfTypeSuffix) {
			rows = append(rows, e)
		}
	}
	want := TokenEntry{Param: "Patient.identifier:of-type", System: "http://terminology.hl7.org/CodeSystem/v2-0203", Code: "MR|123"}
	if len(rows) != 1 || rows[0] != want {
		t.Fatalf("of-type rows %+v, want %+v", rows, want)
	}
	q, err := Parse("Patient", url.Values{"identifier:of-type": {"http://terminology.hl7.org/CodeSystem/v2-0203|MR|123,|MR|9"}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := q.Clauses[0]
	if c.Param.Key() != want.Param || c.Modifier != "of-type" || len(c.Values) != 2 ||
		c.Values[0].System != want.System || c.Values[0].Code != "MR|123" || c.Values[0].AnySystem ||
		c.Values[1].Code != "MR|9" || !c.Values[1].AnySystem {
		t.Fatalf("clause %+v", c)
	}
	if q.Self.Get("identifier:of-type") == "" {
		t.Error("self link lost the parameter")
	}
	// The parameter itself keeps its key.
	if p, _ := Lookup("Patient", "identifier"); p.Key() != "Patient.identifier" {
		t.Errorf("identifier's key became %q", p.Key())
	}
	for _, bad := range []url.Values{
		{"identifier:of-type": {"MR|123"}},     // no system part
		{"identifier:of-type": {"s|MR|"}},      // no value
		{"identifier:of-type": {"s||123"}},     // no code
		{"gender:of-type": {"s|MR|123"}},       // not an identifier
		{"identifier:of-type": {"a|b|c|d"}},    // too many parts
		{"birthdate:of-type": {"s|MR|1"}},      // not a token
		{"identifier:of-type": {"s|MR|1", ""}}, // an empty value
	} {
		if _, err := Parse("Patient", bad, Options{}); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}

// A reference given as an absolute URL under one of the server's own base
// URLs also matches the relative reference it names; other URLs do not.
func TestLocalBases(t *testing.T) {
	opts := Options{LocalBases: []string{"https://fhir.example.org/fhir/R4", "http://localhost:8080/fhir/R4"}}
	for _, tc := range []struct {
		param, value string
		local        string // "Type/id" of the added value, "" for none
	}{
		{"subject", "https://fhir.example.org/fhir/R4/Patient/85", "Patient/85"},
		{"subject", "http://localhost:8080/fhir/R4/Patient/85/_history/2", "Patient/85"},
		{"subject:Patient", "https://fhir.example.org/fhir/R4/Patient/85", "Patient/85"},
		{"subject:Group", "https://fhir.example.org/fhir/R4/Patient/85", ""},
		{"subject", "https://other.example/fhir/R4/Patient/85", ""},
		{"subject", "https://fhir.example.org/fhir/R4/Nothing/85", ""},
		{"subject", "https://fhir.example.org/fhir/R4Patient/85", ""},
		{"subject", "https://fhir.example.org/fhir/R4/Patient", ""},
	} {
		q, err := Parse("Observation", url.Values{tc.param: {tc.value}}, opts)
		if err != nil {
			t.Fatalf("%s=%s: %v", tc.param, tc.value, err)
		}
		vs := q.Clauses[0].Values
		if vs[0].URL != tc.value {
			t.Errorf("%s=%s: the URL itself is no longer searched: %+v", tc.param, tc.value, vs)
		}
		got := ""
		if len(vs) == 2 {
			got = vs[1].RefType + "/" + vs[1].RefID
		}
		if got != tc.local || len(vs) > 2 {
			t.Errorf("%s=%s: local value %q (%d values), want %q", tc.param, tc.value, got, len(vs), tc.local)
		}
	}
	// Without LocalBases nothing is added.
	q, _ := Parse("Observation", url.Values{"subject": {"https://fhir.example.org/fhir/R4/Patient/85"}}, Options{})
	if len(q.Clauses[0].Values) != 1 {
		t.Errorf("values %+v", q.Clauses[0].Values)
	}
}
