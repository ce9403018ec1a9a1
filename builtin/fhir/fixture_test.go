package fhir

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testdataFile reads testdata/name.
func testdataFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The Synthea-style fixtures with conditional references are made from
// patient 85's Bundle the way Synthea exports a population: the
// practitioners, organizations and locations (with their roles and
// endpoint) in a Bundle of their own, created conditionally by identifier,
// and the patient's Bundle referring to them by conditional references
// ("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|…").
// Both are in testdata/conditional.
const (
	conditionalInfo    = "conditional/info_85.json"
	conditionalPatient = "conditional/patient_85.json"
)

// sharedTypes are the types that conditionalInfo holds: all of patient
// 85's resources of these types that carry an identifier.
var sharedTypes = map[string]bool{"Organization": true, "Location": true, "Practitioner": true, "PractitionerRole": true, "Endpoint": true}

// identifierCriteria is the search of a resource by its NPI (as Synthea
// refers to practitioners), else its first identifier:
// "identifier=system|value", escaped for search; "" if it has none.
func identifierCriteria(res map[string]any) string {
	ids, _ := res["identifier"].([]any)
	if len(ids) == 0 {
		return ""
	}
	id := ids[0].(map[string]any)
	for _, x := range ids {
		if x.(map[string]any)["system"] == "http://hl7.org/fhir/sid/us-npi" {
			id = x.(map[string]any)
		}
	}
	sys, _ := id["system"].(string)
	val, _ := id["value"].(string)
	return "identifier=" + escapeSearch(sys) + "|" + escapeSearch(val)
}

// escapeSearch escapes a token part for search: \ , | and $.
func escapeSearch(s string) string {
	return strings.NewReplacer(`\`, `\\`, `,`, `\,`, `|`, `\|`, `$`, `\$`).Replace(s)
}

// buildConditionalFixtures derives the two Bundles from patient 85's.
func buildConditionalFixtures(t testing.TB) (info, patient []byte) {
	t.Helper()
	var b map[string]any
	if err := json.Unmarshal(sharedExample(t, "uscore_bundle_patient_85.json"), &b); err != nil {
		t.Fatal(err)
	}
	var infoEntries, patientEntries []any
	conditional := map[string]string{} // fullUrl → conditional reference
	for _, e := range b["entry"].([]any) {
		em := e.(map[string]any)
		res := em["resource"].(map[string]any)
		typ := res["resourceType"].(string)
		crit := identifierCriteria(res)
		if !sharedTypes[typ] || crit == "" {
			patientEntries = append(patientEntries, e)
			continue
		}
		em["request"] = map[string]any{"method": "POST", "url": typ, "ifNoneExist": crit}
		conditional[em["fullUrl"].(string)] = typ + "?" + crit
		infoEntries = append(infoEntries, e)
	}
	var rewrite func(v any)
	rewrite = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if s, ok := e.(string); ok && k == "reference" && conditional[s] != "" {
					x[k] = conditional[s]
					continue
				}
				rewrite(e)
			}
		case []any:
			for _, e := range x {
				rewrite(e)
			}
		}
	}
	for _, e := range patientEntries {
		rewrite(e.(map[string]any)["resource"])
	}
	encode := func(entries []any) []byte {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries}); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	return encode(infoEntries), encode(patientEntries)
}

// The committed fixtures are what buildConditionalFixtures makes (go test
// -run TestConditionalFixtures -update rewrites them).
func TestConditionalFixtures(t *testing.T) {
	info, patient := buildConditionalFixtures(t)
	golden(t, conditionalInfo, info)
	golden(t, conditionalPatient, patient)
	if n := strings.Count(string(patient), `"reference": "Practitioner?identifier=`); n < 100 {
		t.Errorf("%d conditional references to practitioners", n)
	}
}
