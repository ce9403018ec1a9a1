package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/internal/externaltest"
	_ "github.com/omnigate/omnigate/plugins/external"
)

func TestAuditRecords(t *testing.T) {
	bin := externaltest.Build(t, ".")
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	up := externaltest.Upstream(t)
	srv, _ := externaltest.Gateway(t, fmt.Sprintf(`
log: {access_log: false}
plugins:
  audit:
    type: external
    path: %s
    config: {file: %s, observer: gw-test}
    timeout: 1m   # generous: the test is not about the deadline
  ident: {type: test-identity}
routes:
  - name: fhir
    path: /fhir/R4/*path
    upstream: %s
    fhir_errors: true
    plugins: [audit, ident]
  - name: broken
    path: /broken/*path
    upstream: http://127.0.0.1:1
    plugins: [audit]
`, bin, file, up.URL))

	requests := []struct {
		method, path string
		hdr          []string
		status       int
	}{
		{"GET", "/fhir/R4/Patient/123", []string{"X-Test-User", "dr-who", "X-Test-Role", "physician"}, 200},
		{"GET", "/fhir/R4/Patient/123/Observation?code=8867-4&name=Smith", []string{"X-Test-User", "nurse-1", "X-Test-Role", "nurse"}, 200},
		{"DELETE", "/fhir/R4/Observation/o9", nil, 200},
		{"GET", "/broken/x", nil, 502},
	}
	for _, r := range requests {
		if rec := externaltest.Do(srv, r.method, r.path, nil, r.hdr...); rec.Code != r.status {
			t.Fatalf("%s %s: %d %s", r.method, r.path, rec.Code, rec.Body)
		}
	}
	externaltest.Shutdown(srv)

	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "Smith") || strings.Contains(string(raw), "8867-4") {
		t.Errorf("query strings leaked into the audit file:\n%s", raw)
	}
	var events []AuditEvent
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		var ev AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		events = append(events, ev)
	}
	if len(events) != len(requests) {
		t.Fatalf("%d records for %d requests:\n%s", len(events), len(requests), raw)
	}
	for i, tc := range []struct {
		action, outcome, subtype, who, role string
		entities                            []string
	}{
		{"R", "0", "read", "dr-who", "physician", []string{"Patient/123"}},
		{"R", "0", "search-type", "nurse-1", "nurse", []string{"Patient/123", "Observation"}},
		{"D", "0", "delete", "", "", []string{"Observation/o9"}},
		{"R", "8", "", "", "", nil},
	} {
		t.Run(requests[i].method+" "+requests[i].path, func(t *testing.T) {
			ev := events[i]
			if ev.ResourceType != "AuditEvent" || ev.ID == "" || ev.Recorded == "" || ev.Source.Observer.Display != "gw-test" {
				t.Errorf("record: %+v", ev)
			}
			if ev.Action != tc.action || ev.Outcome != tc.outcome || ev.OutcomeDesc != fmt.Sprint("HTTP ", requests[i].status) {
				t.Errorf("action %s outcome %s (%s), want %s %s", ev.Action, ev.Outcome, ev.OutcomeDesc, tc.action, tc.outcome)
			}
			sub := ""
			if len(ev.Subtype) > 0 {
				sub = ev.Subtype[0].Code
			}
			if sub != tc.subtype {
				t.Errorf("subtype %q, want %q", sub, tc.subtype)
			}
			a := ev.Agent[0]
			who := ""
			if a.Who.Identifier != nil {
				who = a.Who.Identifier.Value
			}
			role := ""
			if len(a.Role) > 0 {
				role = a.Role[0].Text
			}
			if who != tc.who || role != tc.role || !a.Requestor || a.Network == nil || a.Network.Address == "" {
				t.Errorf("agent %+v, want %s/%s", a, tc.who, tc.role)
			}
			var ents []string
			for _, e := range ev.Entity {
				ents = append(ents, e.What.Reference+e.What.Display)
			}
			if strings.Join(ents, ",") != strings.Join(tc.entities, ",") {
				t.Errorf("entities %v, want %v", ents, tc.entities)
			}
		})
	}
}

func TestAuditFileRequired(t *testing.T) {
	bin := externaltest.Build(t, ".")
	_, _, err := externaltest.TryGateway(fmt.Sprintf(`
plugins:
  audit: {type: external, path: %s, config: {file: /nonexistent/dir/audit.jsonl}}
routes:
  - path: /x
    upstream: http://127.0.0.1:1
    plugins: [audit]
`, bin))
	if err == nil || !strings.Contains(err.Error(), "plugin refused its config: config: open audit file") {
		t.Fatalf("load error: %v", err)
	}
}
