package main

import (
	"testing"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasmtest"
)

func TestParseScope(t *testing.T) {
	tests := []struct {
		in   string
		want scope
		ok   bool
	}{
		{"patient/Observation.rs", scope{"patient", "Observation", "rs"}, true},
		{"user/*.cruds", scope{"user", "*", "cruds"}, true},
		{"system/Patient.r", scope{"system", "Patient", "r"}, true},
		{"patient/Observation.read", scope{"patient", "Observation", "rs"}, true},
		{"user/*.write", scope{"user", "*", "cud"}, true},
		{"patient/*.*", scope{"patient", "*", "cruds"}, true},
		{"patient/Observation.sr", scope{}, false},
		{"patient/Observation.rr", scope{}, false},
		{"patient/Observation.", scope{}, false},
		{"patient/Observation.rs?category=laboratory", scope{}, false},
		{"openid", scope{}, false},
		{"launch/patient", scope{}, false},
		{"admin/*.read", scope{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := parseScope(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("parseScope(%q) = %+v, %v", tt.in, got, ok)
			}
		})
	}
}

func TestCompartmentTable(t *testing.T) {
	for typ, want := range map[string]string{"Observation": "subject", "Encounter": "subject", "AllergyIntolerance": "patient", "Appointment": "participant.actor"} {
		found := false
		for _, p := range compartment[typ].paths {
			found = found || p == want
		}
		if !found {
			t.Errorf("%s paths %v lack %s", typ, compartment[typ].paths, want)
		}
	}
	if _, ok := compartment["Organization"]; ok {
		t.Error("Organization is not in the Patient compartment")
	}
}

func TestAllowedOperation(t *testing.T) {
	p := wasmtest.Load(t, wasmtest.Build(t, "."), wasmtest.Options{
		Config: map[string]any{"allow_operations": []string{"everything"}},
	})
	res := p.Do(t, wasmtest.Request{
		Path:     "/fhir/R4/Patient/p1/$everything",
		Identity: &gateway.Identity{UserID: "pat1", Scopes: []string{"patient/*.rs"}, PatientID: "p1"},
		Upstream: wasmtest.Upstream{Body: `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"p1"}},{"resource":{"resourceType":"Encounter","id":"e1","subject":{"reference":"Patient/p1"}}}]}`},
	})
	if res.Decision != wasmtest.Allow {
		t.Fatalf("got %s %d %s\n%v", res.Decision, res.Status, res.Body, res.Logs)
	}
	res = p.Do(t, wasmtest.Request{
		Path:     "/fhir/R4/Patient/p1/$everything",
		Identity: &gateway.Identity{UserID: "pat1", Scopes: []string{"patient/*.rs"}, PatientID: "p1"},
		Upstream: wasmtest.Upstream{Body: `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Encounter","id":"e2","subject":{"reference":"Patient/p9"}}}]}`},
	})
	if res.Decision != wasmtest.Deny || res.Status != 403 {
		t.Fatalf("other patient's data: got %s %d", res.Decision, res.Status)
	}
}

func TestCases(t *testing.T) {
	wasmtest.RunCases(t, wasmtest.Build(t, "."), "cases.yaml")
}
