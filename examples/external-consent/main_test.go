package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/sdk/external"
	"github.com/omnigate/omnigate/sdk/external/externaltest"
)

const consents = `[
  {"patient": "123", "actor": "user:dr-who", "decision": "permit"},
  {"patient": "123", "actor": "role:nurse", "decision": "permit"},
  {"patient": "123", "actor": "user:nurse-banned", "decision": "deny"},
  {"patient": "456", "actor": "*", "decision": "deny"}
]`

func config(file string) map[string]any {
	return map[string]any{"consents": file, "check_interval": "20ms"}
}

func as(user, role string) *external.Identity { return &external.Identity{User: user, Role: role} }

// eventually polls cond every 10ms until it holds or timeout passes.
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func TestConsent(t *testing.T) {
	file := filepath.Join(t.TempDir(), "consents.json")
	if err := os.WriteFile(file, []byte(consents), 0o644); err != nil {
		t.Fatal(err)
	}
	p := externaltest.Start(t, externaltest.Build(t, "."), externaltest.Options{Name: "consent", Config: config(file)})

	readPatient := func(id string) *external.FHIR { return &external.FHIR{Interaction: "read", Type: "Patient", ID: id} }
	compartment := func(id string) *external.FHIR {
		return &external.FHIR{Interaction: "search-type", Type: "Observation", CompartmentType: "Patient", CompartmentID: id}
	}
	searchObs := &external.FHIR{Interaction: "search-type", Type: "Observation"}
	patient456 := &external.Identity{User: "pat-456", Role: "patient", Patient: "456"}
	for _, tc := range []struct {
		name     string
		fhir     *external.FHIR
		query    string
		identity *external.Identity
		status   int
	}{
		{"permitted user reads the patient", readPatient("123"), "", as("dr-who", "physician"), 200},
		{"permitted role searches the compartment", compartment("123"), "", as("nurse-2", "nurse"), 200},
		{"deny wins over the role's permit", compartment("123"), "", as("nurse-banned", "nurse"), 403},
		{"no rule: default deny", readPatient("123"), "", as("dr-no", "physician"), 403},
		{"anonymous: default deny", readPatient("123"), "", nil, 403},
		{"deny for anyone", readPatient("456"), "", as("dr-who", "physician"), 403},
		{"the patient reads their own record", compartment("456"), "", patient456, 200},
		{"search by patient parameter", searchObs, "patient=123", as("dr-no", "physician"), 403},
		{"search by subject parameter", searchObs, "subject=Patient/123", as("dr-who", "physician"), 200},
		{"about no patient", &external.FHIR{Interaction: "read", Type: "Organization", ID: "o1"}, "", nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := p.Do(t, externaltest.Request{Path: "/fhir/R4/x", RawQuery: tc.query, FHIR: tc.fhir, Identity: tc.identity})
			if res.Status != tc.status {
				t.Fatalf("%s %d, want %d: %s %v", res.Decision, res.Status, tc.status, res.Reason, res.Err)
			}
			if tc.status == 403 && (res.Decision != externaltest.Deny || !strings.Contains(res.Reason, "not permitted by consent")) {
				t.Errorf("deny: %s %q", res.Decision, res.Reason)
			}
		})
	}
	if n := p.Counter("denied"); n != 5 {
		t.Errorf("denied counter = %d, want 5", n)
	}

	// A new consent takes effect without a restart; a broken file leaves
	// the list in force.
	drNo := externaltest.Request{Path: "/fhir/R4/Patient/123", FHIR: readPatient("123"), Identity: as("dr-no", "physician")}
	if err := os.WriteFile(file, []byte(`[{"patient": "123", "actor": "user:dr-no", "decision": "permit"}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool { return p.Do(t, drNo).Status == 200 }) {
		t.Fatal("the new consent list was not picked up")
	}
	logged := func(msg string) int { return strings.Count(strings.Join(p.Logs(), "\n"), msg) }
	// The plugin logs the reload after it: then the failed reads of the
	// file being written, if any, are logged.
	if !eventually(10*time.Second, func() bool { return logged("consent list reloaded") > 0 }) {
		t.Fatalf("the reload was not logged:\n%s", strings.Join(p.Logs(), "\n"))
	}
	const notReloaded = "consent list not reloaded; the previous one stays in force"
	failed := logged(notReloaded)
	if err := os.WriteFile(file, []byte(`[{"patient": `), 0o644); err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool { return logged(notReloaded) > failed }) {
		t.Fatal("the broken file was not read")
	}
	if res := p.Do(t, drNo); res.Status != 200 {
		t.Errorf("after a broken file: %s %d", res.Decision, res.Status)
	}
}

func TestConsentConfigErrors(t *testing.T) {
	bin := externaltest.Build(t, ".")
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`[{"patient": "1", "actor": "*", "decision": "maybe"}]`), 0o644)
	for _, tc := range []struct{ file, want string }{
		{"/nonexistent/consents.json", "consent list: stat /nonexistent/consents.json"},
		{bad, "entry 0 needs a patient, an actor and a decision"},
	} {
		_, err := externaltest.Open(bin, externaltest.Options{Config: config(tc.file)})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.file, err)
		}
	}
}
