package validate

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	v, err := New()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		typ, doc string
		want     []string // expression: message fragment
	}{
		{"Patient", `{"resourceType":"Patient","name":[{"given":["A"]}],"birthDate":"2020-02-02"}`, nil},
		{"Patient", `{"resourceType":"Patient","name":[{"given":[1]}],"birthDate":"2020-13-01","foo":1}`,
			[]string{"Patient: additional properties 'foo'", "Patient.birthDate: does not match pattern", "Patient.name[0].given[0]: got number, want string"}},
		{"Observation", `{"resourceType":"Observation","status":"final"}`, []string{"Observation: missing property 'code'"}},
		{"Observation", `{"resourceType":"Patient"}`, []string{"Observation: missing property", "Observation.resourceType: value must be 'Observation'"}},
	}
	for _, c := range cases {
		d := json.NewDecoder(strings.NewReader(c.doc))
		d.UseNumber()
		var doc any
		if err := d.Decode(&doc); err != nil {
			t.Fatal(err)
		}
		probs, err := v.Validate(c.typ, doc)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range probs {
			got = append(got, p.Expression+": "+p.Message)
		}
		if len(got) != len(c.want) {
			t.Errorf("%s: got %q, want %q", c.doc, got, c.want)
			continue
		}
		for i := range got {
			if !strings.HasPrefix(got[i], c.want[i]) && !strings.Contains(got[i], strings.SplitN(c.want[i], ": ", 2)[1]) {
				t.Errorf("%s: problem %d %q, want %q", c.doc, i, got[i], c.want[i])
			}
		}
	}
	if _, err := v.Validate("Nope", map[string]any{}); err == nil {
		t.Error("unknown type accepted")
	}
}
