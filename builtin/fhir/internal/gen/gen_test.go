package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The committed tables are what the generator makes from the committed
// definitions.
func TestGeneratedUpToDate(t *testing.T) {
	defs := "defs"
	out := t.TempDir()
	if err := run(defs, out); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"zz_generated.go", "fhir.schema.json.gz"} {
		got, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("..", "spec", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is out of date: run go generate ./builtin/fhir/internal/spec", f)
		}
	}
}

func TestExprFor(t *testing.T) {
	for _, c := range []struct{ expr, typ, base, want string }{
		{"Account.subject.where(resolve() is Patient) | Encounter.subject", "Encounter", "Encounter", "Encounter.subject"},
		{"(Observation.value.ofType(Quantity)) | (Observation.value.ofType(SampledData))", "Observation", "Observation", "(Observation.value.ofType(Quantity)) | (Observation.value.ofType(SampledData))"},
		{"name | alias", "InsurancePlan", "InsurancePlan", "InsurancePlan.name | InsurancePlan.alias"},
		{"Resource.meta.tag", "Patient", "Resource", "Resource.meta.tag"},
		{"Patient.telecom.where(system='a|b')", "Patient", "Patient", "Patient.telecom.where(system='a|b')"},
	} {
		if got := exprFor(c.expr, c.typ, c.base); got != c.want {
			t.Errorf("%s for %s: %q, want %q", c.expr, c.typ, got, c.want)
		}
	}
}
