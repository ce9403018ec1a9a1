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

// The invariant language: each expression, evaluated on the Observation
// above, holds or not; empty results hold.
func TestInvariants(t *testing.T) {
	res := decode(t, obs)
	for _, c := range []struct {
		expr string
		want bool
	}{
		{"status.exists() implies value.exists()", true},
		{"code.coding.exists() implies subject.exists()", true},
		{"code.coding.count() = 2", true},
		{"code.coding.count() > 2", false},
		{"code.coding.all(system.exists())", true},
		{"code.coding.all(system = 'http://loinc.org')", false},
		{"code.coding.exists(code = '2')", true},
		{"code.coding.code.isDistinct()", true},
		{"code.coding.select(system).count() = 2", true},
		{"telecom.system.distinct().count() = 2", true},
		{"effective.exists() xor value.exists()", false},
		{"'phone' in telecom.system", true},
		{"telecom.system contains 'fax'", false},
		{"subject.reference.startsWith('Patient/')", true},
		{"subject.reference.matches('Patient/[0-9]+')", true},
		{"subject.reference.length() = 10", true},
		{"subject.reference.substring(0, 7) = 'Patient'", true},
		{"valueQuantity.value > 5 and valueQuantity.value <= 5.4", true},
		{"valueQuantity.value + 1 = 6.4", true},
		{"(id & '-' & status) = 'o1-'", true},
		{"%resource.id = 'o1'", true},
		{"iif(status.exists(), false, true)", true},
		{"iif(id.exists(), false, true)", false},
		{"effective >= '2020-01-01'", true},
		{"effective < '2020-01-01T00:00:00Z'", true}, // different precision: empty
		{"performer.tail().count() = 1 and performer.first().exists() and performer.last().exists()", true},
		{"code.coding.code.combine(id).count() = 3", true},
		{"code.coding.code.intersect('2' | '3').count() = 1", true},
		{"children().count() > 5", true},
		{"id.toInteger().empty() and id.toString() = 'o1'", true},
		{"(true | false).anyTrue() and (true | false).allTrue().not()", true},
		{"value.is(Quantity)", true},
		{"value.as(Quantity).unit = 'mg'", true},
		{"valueQuantity.value.hasValue() and code.hasValue().not()", true},
		{"code.coding.trace('c').exists()", true},
	} {
		e, err := ParseInvariant(c.expr)
		if err != nil {
			t.Errorf("%s: %v", c.expr, err)
			continue
		}
		if got := e.Holds(res, res, "Observation", types); got != c.want {
			t.Errorf("%s: %v, want %v", c.expr, got, c.want)
		}
	}
	for _, bad := range []string{"descendants()", "today() > 1", "code.memberOf('x')", "a ~ b", "x.frobnicate()"} {
		if _, err := ParseInvariant(bad); err == nil {
			t.Errorf("%s: parsed", bad)
		}
	}
	// Search expressions keep the smaller language.
	if _, err := Parse("a.count() > 1"); err == nil {
		t.Error("Parse accepted an invariant")
	}
}
