package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/externaltest"
	_ "github.com/omnigate/omnigate/plugins/external"
)

const consents = `[
  {"patient": "123", "actor": "user:dr-who", "decision": "permit"},
  {"patient": "123", "actor": "role:nurse", "decision": "permit"},
  {"patient": "123", "actor": "user:nurse-banned", "decision": "deny"},
  {"patient": "456", "actor": "*", "decision": "deny"}
]`

func gatewayYAML(bin, file, up string) string {
	return fmt.Sprintf(`
log: {access_log: false}
plugins:
  ident: {type: test-identity}
  consent:
    type: external
    path: %s
    config: {consents: %s, check_interval: 20ms}
    timeout: 1m   # generous: the test is not about the deadline
routes:
  - name: fhir
    path: /fhir/R4/*path
    upstream: %s
    fhir_errors: true
    plugins: [ident, consent]
`, bin, file, up)
}

func TestConsent(t *testing.T) {
	bin := externaltest.Build(t, ".")
	file := filepath.Join(t.TempDir(), "consents.json")
	if err := os.WriteFile(file, []byte(consents), 0o644); err != nil {
		t.Fatal(err)
	}
	up := externaltest.Upstream(t)
	srv, logs := externaltest.Gateway(t, gatewayYAML(bin, file, up.URL))

	as := func(user, role string) []string {
		return []string{"X-Test-User", user, "X-Test-Role", role}
	}
	for _, tc := range []struct {
		name, path string
		hdr        []string
		status     int
	}{
		{"permitted user reads the patient", "/fhir/R4/Patient/123", as("dr-who", "physician"), 200},
		{"permitted role searches the compartment", "/fhir/R4/Patient/123/Observation", as("nurse-2", "nurse"), 200},
		{"deny wins over the role's permit", "/fhir/R4/Patient/123/Observation", as("nurse-banned", "nurse"), 403},
		{"no rule: default deny", "/fhir/R4/Patient/123", as("dr-no", "physician"), 403},
		{"anonymous: default deny", "/fhir/R4/Patient/123", nil, 403},
		{"deny for anyone", "/fhir/R4/Patient/456", as("dr-who", "physician"), 403},
		{"the patient reads their own record", "/fhir/R4/Patient/456/Observation",
			append(as("pat-456", "patient"), "X-Test-Patient", "456"), 200},
		{"search by patient parameter", "/fhir/R4/Observation?patient=123", as("dr-no", "physician"), 403},
		{"search by subject parameter", "/fhir/R4/Observation?subject=Patient/123", as("dr-who", "physician"), 200},
		{"about no patient", "/fhir/R4/Organization/o1", nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := externaltest.Do(srv, "GET", tc.path, nil, tc.hdr...)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if tc.status == 403 && !strings.Contains(rec.Body.String(), "not permitted by consent") {
				t.Errorf("deny body: %s", rec.Body)
			}
		})
	}

	metrics := externaltest.Do(srv.AdminHandler(), "GET", "/metrics", nil).Body.String()
	if !strings.Contains(metrics, `omnigate_external_counter_total{name="denied",plugin="consent"} 5`) {
		t.Errorf("denials not counted:\n%s", metrics)
	}

	// A new consent takes effect without a restart; a broken file leaves
	// the list in force.
	if err := os.WriteFile(file, []byte(`[{"patient": "123", "actor": "user:dr-no", "decision": "permit"}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	if !externaltest.Eventually(10*time.Second, func() bool {
		return externaltest.Do(srv, "GET", "/fhir/R4/Patient/123", nil, as("dr-no", "physician")...).Code == 200
	}) {
		t.Fatal("the new consent list was not picked up")
	}
	// The plugin logs the reload after it (its stderr arrives in order):
	// then the failed reads of the file being written, if any, are logged.
	if !externaltest.Eventually(10*time.Second, func() bool {
		return strings.Contains(logs.String(), `"msg":"consent list reloaded"`)
	}) {
		t.Fatal("the reload was not logged")
	}
	const notReloaded = `"msg":"consent list not reloaded; the previous one stays in force"`
	failed := strings.Count(logs.String(), notReloaded)
	if err := os.WriteFile(file, []byte(`[{"patient": `), 0o644); err != nil {
		t.Fatal(err)
	}
	if !externaltest.Eventually(10*time.Second, func() bool {
		return strings.Count(logs.String(), notReloaded) > failed
	}) {
		t.Fatal("the broken file was not read")
	}
	if rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/123", nil, as("dr-no", "physician")...); rec.Code != 200 {
		t.Errorf("after a broken file: %d", rec.Code)
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
		_, _, err := externaltest.TryGateway(gatewayYAML(bin, tc.file, "http://127.0.0.1:1"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.file, err)
		}
	}
}
