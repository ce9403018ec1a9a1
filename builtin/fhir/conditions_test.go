package fhir

import (
	"slices"
	"strings"
	"testing"
)

// A conditional write never acts on part of its criteria: an unknown or
// unsupported parameter is a 400 naming it, whatever the handling
// preference, and nothing is written.
func TestConditionalCriteriaStrict(t *testing.T) {
	h := newTestServer(t)
	put(t, h, "Patient", "p1", `"identifier":[{"system":"urn:s","value":"1"}],"active":true`)
	patch := []string{"Content-Type", "application/json-patch+json"}
	body := `{"resourceType":"Patient","identifier":[{"system":"urn:s","value":"1"}],"active":false}`
	for _, tc := range []struct {
		name, method, path, body string
		hdr                      []string
		names                    string // the parameter the outcome names
	}{
		{"delete with a misspelt parameter", "DELETE", "/fhir/R4/Patient?identifier=urn:s|1&identifer=typo", "", nil, "identifer"},
		{"delete, lenient handling", "DELETE", "/fhir/R4/Patient?identifier=urn:s|1&identifer=typo", "", []string{"Prefer", "handling=lenient"}, "identifer"},
		{"delete with a result parameter", "DELETE", "/fhir/R4/Patient?identifier=urn:s|1&_count=1", "", nil, "_count"},
		{"delete with a chain", "DELETE", "/fhir/R4/Patient?identifier=urn:s|1&organization.name=x", "", nil, "organization.name"},
		{"delete with _has", "DELETE", "/fhir/R4/Patient?identifier=urn:s|1&_has:Observation:subject:code=x", "", nil, "_has:Observation:subject:code"},
		{"update", "PUT", "/fhir/R4/Patient?identifier=urn:s|1&identifer=typo", body, nil, "identifer"},
		{"update, lenient handling", "PUT", "/fhir/R4/Patient?identifier=urn:s|1&identifer=typo", body, []string{"Prefer", "handling=lenient"}, "identifer"},
		{"patch", "PATCH", "/fhir/R4/Patient?identifier=urn:s|1&identifer=typo", `[{"op":"replace","path":"/active","value":false}]`, patch, "identifer"},
		{"create", "POST", "/fhir/R4/Patient", body, []string{"If-None-Exist", "identifier=urn:s|1&identifer=typo"}, "identifer"},
		{"create with _sort", "POST", "/fhir/R4/Patient", body, []string{"If-None-Exist", "identifier=urn:s|1&_sort=name"}, "_sort"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			patients := countOf(t, h, "Patient?_id:missing=false")
			var b any
			if tc.body != "" {
				b = tc.body
			}
			r := do(t, h, tc.method, tc.path, b, tc.hdr...)
			status, diag, expr := oneOutcome(t, r)
			if status != 400 || !strings.Contains(diag, tc.names+":") || expr != tc.names {
				t.Errorf("%d %q at %q, want 400 naming %s", status, diag, expr, tc.names)
			}
			if v := versionOf(t, h, "Patient/p1"); v != "1" {
				t.Errorf("Patient/p1 is at version %s", v)
			}
			if n := countOf(t, h, "Patient?_id:missing=false"); n != patients {
				t.Errorf("%d patients, %d before", n, patients)
			}
		})
	}
	t.Run("criteria of a conditional create written with the type", func(t *testing.T) {
		r := do(t, h, "POST", "/fhir/R4/Patient", body, "If-None-Exist", "Patient?identifier=urn:s|1")
		mustStatus(t, r, 200)
		if idOf(t, r) != "p1" {
			t.Error("did not find Patient/p1")
		}
		r = do(t, h, "POST", "/fhir/R4/Patient", body, "If-None-Exist", "Observation?identifier=urn:s|1")
		mustStatus(t, r, 400)
	})
	t.Run("in a transaction", func(t *testing.T) {
		for _, e := range []map[string]any{
			reqEntry("DELETE", "Patient?identifier=urn:s|1&identifer=typo", nil),
			reqEntry("PUT", "Patient?identifier=urn:s|1&identifer=typo", map[string]any{"resourceType": "Patient", "active": false}),
			postEntry("urn:uuid:x", map[string]any{"resourceType": "Patient"}, "ifNoneExist", "identifier=urn:s|1&identifer=typo"),
		} {
			r := do(t, h, "POST", "/fhir/R4", txBundle("transaction", postEntry("urn:uuid:y", map[string]any{"resourceType": "Patient"}), e))
			status, diag, _ := oneOutcome(t, r)
			if status != 400 || !strings.Contains(diag, "identifer:") || !strings.HasPrefix(diag, "entry[1]") {
				t.Errorf("%v: %d %q", e["request"], status, diag)
			}
		}
		if v := versionOf(t, h, "Patient/p1"); v != "1" {
			t.Errorf("Patient/p1 is at version %s", v)
		}
	})
	t.Run("in a batch", func(t *testing.T) {
		r := do(t, h, "POST", "/fhir/R4", txBundle("batch",
			reqEntry("DELETE", "Patient?identifier=urn:s|1&identifer=typo", nil),
			reqEntry("PUT", "Patient?identifier=urn:s|1&identifer=typo", map[string]any{"resourceType": "Patient", "active": false}),
			postEntry("", map[string]any{"resourceType": "Patient", "active": false}, "ifNoneExist", "identifier=urn:s|1&identifer=typo"),
			reqEntry("GET", "Patient/p1", nil)))
		mustStatus(t, r, 200)
		var codes []string
		for _, x := range responses(t, r.json(t)) {
			codes = append(codes, x["status"].(string)[:3])
		}
		if !slices.Equal(codes, []string{"400", "400", "400", "200"}) {
			t.Errorf("statuses %v", codes)
		}
		if v := versionOf(t, h, "Patient/p1"); v != "1" {
			t.Errorf("Patient/p1 is at version %s", v)
		}
	})
}

// A conditional update that creates, in a transaction, gets the id that
// the references to its fullUrl were rewritten to.
func TestTransactionConditionalUpdateCreates(t *testing.T) {
	h := newTestServer(t)
	e := reqEntry("PUT", "Patient?identifier=urn:new|1", map[string]any{"resourceType": "Patient", "identifier": []any{map[string]any{"system": "urn:new", "value": "1"}}})
	e["fullUrl"] = "urn:uuid:np"
	r := do(t, h, "POST", "/fhir/R4", txBundle("transaction", e,
		postEntry("urn:uuid:o", map[string]any{"resourceType": "Observation", "status": "final", "code": map[string]any{"text": "x"},
			"subject": map[string]any{"reference": "urn:uuid:np"}})))
	mustStatus(t, r, 200)
	rs := responses(t, r.json(t))
	if rs[0]["status"] != "201 Created" {
		t.Fatalf("status %v", rs[0]["status"])
	}
	patient := strings.TrimSuffix(rs[0]["location"].(string), "/_history/1")
	o := do(t, h, "GET", "/fhir/R4/"+strings.TrimSuffix(rs[1]["location"].(string), "/_history/1"), nil).json(t)
	if ref := o["subject"].(map[string]any)["reference"]; ref != patient {
		t.Errorf("subject %v, the transaction created %s", ref, patient)
	}
	mustStatus(t, do(t, h, "GET", "/fhir/R4/"+patient, nil), 200)
}
