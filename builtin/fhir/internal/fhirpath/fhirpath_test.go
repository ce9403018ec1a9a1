package fhirpath

import (
	"encoding/json"
	"fmt"
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

var types = func(s string) string {
	switch s {
	case "Quantity", "Period", "CodeableConcept", "Boolean", "String":
		return s
	case "DateTime":
		return "dateTime"
	}
	return ""
}

const obs = `{"resourceType":"Observation","id":"o1",
 "code":{"coding":[{"system":"http://loinc.org","code":"1"},{"system":"urn:x","code":"2"}]},
 "subject":{"reference":"Patient/85"},"performer":[{"reference":"Practitioner/7"},{"reference":"https://h/fhir/Patient/9/_history/2"}],
 "valueQuantity":{"value":5.4,"unit":"mg"},"effectiveDateTime":"2020-01-01",
 "telecom":[{"system":"phone","value":"1"},{"system":"email","value":"a@b"}],
 "valueSet":"not a choice"}`

func TestEval(t *testing.T) {
	res := decode(t, obs)
	cases := []struct{ expr, want string }{
		{"Observation.code.coding.code", "1,2"},
		{"Observation.code.coding[1].system", "urn:x"},
		{"Patient.name | Observation.subject.reference", "Patient/85"},
		{"Resource.id", "o1"},
		{"Observation.subject.where(resolve() is Patient).reference", "Patient/85"},
		{"Observation.performer.where(resolve() is Patient).reference", "https://h/fhir/Patient/9/_history/2"},
		{"Observation.performer.where(resolve() is Practitioner).reference", "Practitioner/7"},
		{"Observation.value.ofType(Quantity).unit", "mg"},
		{"(Observation.value as Quantity).value", "5.4"},
		{"Observation.value.ofType(Period)", ""},
		{"Observation.effective.ofType(dateTime)", "2020-01-01"},
		{"Observation.telecom.where(system='email').value", "a@b"},
		{"Observation.telecom.where(system!='email').value", "1"},
		{"Observation.code.exists() and Observation.subject.exists()", "true"},
		{"Observation.focus.exists() or Observation.code.empty()", "false"},
		{"Observation.valueSet", "not a choice"},
		{"Observation.code.coding.first().code", "1"},
		{"Observation.value is Quantity", "true"},
	}
	for _, c := range cases {
		t.Run(c.expr, func(t *testing.T) {
			e, err := Parse(c.expr)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, n := range e.Eval(res, types) {
				got = append(got, fmt.Sprint(n.V))
			}
			if s := strings.Join(got, ","); s != c.want {
				t.Errorf("got %q, want %q", s, c.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, s := range []string{"", "Patient.", "Patient.name.where(", "a.foo()", "'open", "Patient.name[x]", "a |", "ofType()"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("%q: no error", s)
		}
	}
}

func TestReferenceParts(t *testing.T) {
	for in, want := range map[string]string{
		"Patient/1": "Patient 1", "Patient/1/_history/3": "Patient 1", "http://x/fhir/Observation/a.b": "Observation a.b",
		"#c": " ", "urn:uuid:1234": " ", "Patient/": " ", "lower/1": " ",
	} {
		typ, id := ReferenceParts(in)
		if got := typ + " " + id; got != want {
			t.Errorf("%s: %q, want %q", in, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"Observation.value.ofType(Quantity) | Observation.component.value", "A.b.where(resolve() is Patient)", "(A.b as T).c[0]", "A.x.exists() and A.x != false"} {
		f.Add(s)
	}
	res := map[string]any{"resourceType": "A", "b": []any{map[string]any{"reference": "Patient/1"}}}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := Parse(s)
		if err != nil {
			return
		}
		e.Eval(res, types)
	})
}
