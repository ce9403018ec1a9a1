package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/sdk/external"
	"github.com/omnigate/omnigate/sdk/external/externaltest"
)

func TestAuditRecords(t *testing.T) {
	bin := externaltest.Build(t, ".")
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	p := externaltest.Start(t, bin, externaltest.Options{
		Name:   "audit",
		Config: map[string]any{"file": file, "observer": "gw-test"},
	})

	requests := []struct {
		method, path, query string
		identity            *external.Identity
		fhir                *external.FHIR
		status              int
	}{
		{"GET", "/fhir/R4/Patient/123", "", &external.Identity{User: "dr-who", Role: "physician"},
			&external.FHIR{Interaction: "read", Type: "Patient", ID: "123"}, 200},
		{"GET", "/fhir/R4/Patient/123/Observation", "code=8867-4&name=Smith", &external.Identity{User: "nurse-1", Role: "nurse"},
			&external.FHIR{Interaction: "search-type", Type: "Observation", CompartmentType: "Patient", CompartmentID: "123"}, 200},
		{"DELETE", "/fhir/R4/Observation/o9", "", nil, &external.FHIR{Interaction: "delete", Type: "Observation", ID: "o9"}, 200},
		{"GET", "/broken/x", "", nil, nil, 502},
	}
	for _, r := range requests {
		res := p.Do(t, externaltest.Request{
			Method: r.method, Path: r.path, RawQuery: r.query, Route: "fhir", Identity: r.identity, FHIR: r.fhir,
			Upstream: externaltest.Upstream{Status: r.status},
		})
		if res.Decision != externaltest.Allow || res.Status != r.status {
			t.Fatalf("%s %s: %s %d %v", r.method, r.path, res.Decision, res.Status, res.Err)
		}
	}
	if n := p.Counter("records"); n != int64(len(requests)) {
		t.Errorf("records counter = %d, want %d", n, len(requests))
	}

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
	_, err := externaltest.Open(externaltest.Build(t, "."), externaltest.Options{
		Config: map[string]any{"file": "/nonexistent/dir/audit.jsonl"},
	})
	if err == nil || !strings.Contains(err.Error(), "plugin refused its config: config: open audit file") {
		t.Fatalf("load error: %v", err)
	}
}
