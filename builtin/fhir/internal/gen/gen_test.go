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
	for _, f := range []string{"zz_generated.go", "zz_elements.go", "fhir.schema.json.gz", "conformance.json.gz"} {
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

// The element table holds what transactions need to tell links from plain
// strings, as the StructureDefinitions say.
func TestElementTypes(t *testing.T) {
	resources, err := readStructureDefs(filepath.Join("defs", "profiles-resources.json"))
	if err != nil {
		t.Fatal(err)
	}
	types, err := readStructureDefs(filepath.Join("defs", "profiles-types.json"))
	if err != nil {
		t.Fatal(err)
	}
	els := elementTypes(resources, types)
	for _, c := range []struct{ ctx, name, want string }{
		{"Observation", "subject", "Reference"},
		{"Observation", "valueQuantity", "Quantity"},
		{"Observation", "valueString", ""}, // a string
		{"Observation", "component", "Observation.component"},
		{"Observation.component", "valueCodeableConcept", "CodeableConcept"},
		{"Observation", "contained", "Resource"},
		{"Observation", "text", "Narrative"},
		{"Narrative", "div", "xhtml"},
		{"Reference", "type", "uri"},
		{"Reference", "reference", ""}, // a string: rewritten as a reference, not as a uri
		{"Identifier", "system", "uri"},
		{"Identifier", "value", ""}, // a string
		{"Extension", "url", "uri"},
		{"Extension", "valueReference", "Reference"},
		{"Extension", "valueUuid", "uuid"},
		{"Attachment", "url", "url"},
		{"Questionnaire.item", "item", "Questionnaire.item"},
		{"Bundle.entry", "fullUrl", "uri"},
		{"Bundle.entry", "resource", "Resource"},
		{"Timing", "repeat", "Timing.repeat"},
		{"Element", "extension", "Extension"},
		{"Patient", "id", ""},
		{"ImplementationGuide.definition.resource", "exampleCanonical", "canonical"},
		{"Device.udiCarrier", "deviceIdentifier", ""},
		{"Endpoint", "address", "url"},
		{"Coding", "system", "uri"},
	} {
		if got := els[c.ctx][c.name]; got != c.want {
			t.Errorf("%s.%s: %q, want %q", c.ctx, c.name, got, c.want)
		}
	}
}
