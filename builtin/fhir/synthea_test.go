package fhir

import (
	"net/url"
	"testing"
)

func loadSynthea(t testing.TB, h *Handler) {
	t.Helper()
	for _, f := range []string{"uscore_bundle_patient_85.json", "uscore_bundle_patient_355.json"} {
		r := do(t, h, "POST", "/fhir/R4", sharedExample(t, f))
		mustStatus(t, r, 200)
	}
}

func TestSyntheaSmoke(t *testing.T) {
	h := newTestServer(t)
	loadSynthea(t, h)
	for _, q := range []string{
		"/fhir/R4/Observation?patient=85&code=" + url.QueryEscape("http://loinc.org|72166-2"),
		"/fhir/R4/Encounter?patient=355&date=ge2015-01-01&_sort=-date",
		"/fhir/R4/Condition?patient=85&_include=Condition:encounter",
	} {
		r := do(t, h, "GET", q, nil)
		mustStatus(t, r, 200)
		b := r.json(t)
		t.Logf("%s: total %v entries %d", q, b["total"], len(entries(t, b)))
	}
}
