package audit

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir"
)

var shapeDeps = sinkDeps{site: "gw-1.example.org", serverAddress: "https://fhir.example.org/fhir/R4"}

func shapeRecords() map[string]*Record {
	at := time.Date(2026, 9, 1, 10, 0, 0, 123e6, time.UTC)
	return map[string]*Record{
		"read": {ID: "r1", Time: at, RequestID: "req-1", User: "nurse-joy", Role: "nurse", FHIRUser: "Practitioner/p2", Session: "s1",
			ClientIP: "203.0.113.7", Method: "GET", Path: "/fhir/R4/Observation/o1", Interaction: "read", Type: "Observation",
			ResourceID: "o1", Patients: []string{"85"}, Status: 200, Decision: DecisionAllowed, Reason: "break-glass",
			BreakGlass: "unconscious patient in the ER"},
		"search": {ID: "s1", Time: at, RequestID: "req-2", User: "dr-house", Role: "physician", ClientIP: "2001:db8::1",
			Method: "GET", Path: "/fhir/R4/Observation", Query: "code=8867-4", Interaction: "search-type", Type: "Observation",
			Patients: []string{"85", "86"}, Status: 200, Decision: DecisionNone},
		"denied": {ID: "d1", Time: at, RequestID: "req-3", User: "nurse-joy", Role: "nurse", ClientIP: "203.0.113.7", Method: "DELETE",
			Path: "/fhir/R4/Patient/85", Interaction: "delete", Type: "Patient", ResourceID: "85", Patients: []string{"85"},
			Status: 403, Decision: DecisionDenied, Reason: "no scope grants d on Patient"},
		"delete": {ID: "x1", Time: at, User: "dr-house", Method: "DELETE", Path: "/fhir/R4/Observation/o1", Interaction: "delete",
			Type: "Observation", ResourceID: "o1", Patients: []string{"85"}, Status: 204, Decision: DecisionAllowed},
		"create": {ID: "c1", Time: at, User: "dr-house", Method: "POST", Path: "/fhir/R4/Observation", Interaction: "create",
			Type: "Observation", ResourceID: "n1", VersionID: "1", Status: 201, Decision: DecisionAllowed},
		"anonymous failure": {ID: "a1", Time: at, Method: "GET", Path: "/fhir/R4/Observation/o1", Interaction: "read",
			Type: "Observation", ResourceID: "o1", Status: 500, Decision: DecisionNone},
		"unknown": {ID: "u1", Time: at, Method: "GET", Path: "/fhir/R4/patients", Query: "x=1", Interaction: "unknown", Status: 404, Decision: DecisionNone},
		"transaction entry": {ID: "t1", Time: at, RequestID: "req-4", User: "dr-house", Method: "PUT", Path: "Observation/t1",
			Interaction: "update", Type: "Observation", ResourceID: "t1", Bundle: "transaction", Entry: new(int), Patients: []string{"86"},
			Status: 201, Decision: DecisionAllowed},
	}
}

func toMap(t *testing.T, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	return m
}

// get follows a path of keys and indexes through decoded JSON.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			a, _ := v.([]any)
			if k >= len(a) {
				return nil
			}
			v = a[k]
		}
	}
	return v
}

// agentOf returns the agent whose type has code.
func agentOf(ev map[string]any, code string) map[string]any {
	for _, a := range ev["agent"].([]any) {
		if get(a, "type", "coding", 0, "code") == code {
			return a.(map[string]any)
		}
	}
	return nil
}

// The AuditEvents follow BALP: the profile claimed, the agents' types by
// interaction, the entities, the outcome, purposeOfEvent for break-glass.
func TestAuditEventShape(t *testing.T) {
	recs := shapeRecords()

	read := toMap(t, auditEvents(recs["read"], shapeDeps)[0])
	for _, c := range []struct {
		path []any
		want any
	}{
		{[]any{"resourceType"}, "AuditEvent"},
		{[]any{"id"}, "r1"},
		{[]any{"meta", "profile", 0}, "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"},
		{[]any{"type", "code"}, "rest"},
		{[]any{"subtype", 0, "code"}, "read"},
		{[]any{"subtype", 0, "system"}, "http://hl7.org/fhir/restful-interaction"},
		{[]any{"action"}, "R"},
		{[]any{"recorded"}, "2026-09-01T10:00:00.123Z"},
		{[]any{"outcome"}, "0"},
		{[]any{"purposeOfEvent", 0, "coding", 0, "code"}, "BTG"},
		{[]any{"purposeOfEvent", 0, "coding", 0, "system"}, "http://terminology.hl7.org/CodeSystem/v3-ActReason"},
		{[]any{"purposeOfEvent", 0, "text"}, "unconscious patient in the ER"},
		{[]any{"source", "site"}, "gw-1.example.org"},
		{[]any{"source", "type", 0, "code"}, "4"},
	} {
		if got := get(read, c.path...); got != c.want {
			t.Errorf("read %v = %v, want %v", c.path, got, c.want)
		}
	}
	user, client, server := agentOf(read, "IRCP"), agentOf(read, "110152"), agentOf(read, "110153")
	if user == nil || client == nil || server == nil || len(read["agent"].([]any)) != 3 {
		t.Fatalf("read agents: %v", read["agent"])
	}
	if get(user, "who", "reference") != "Practitioner/p2" || get(user, "who", "identifier", "value") != "nurse-joy" ||
		user["name"] != "nurse-joy" || user["requestor"] != true || get(user, "role", 0, "text") != "nurse" ||
		get(user, "policy", 0) != "urn:omnigate:session:s1" || get(user, "purposeOfUse", 0, "coding", 0, "code") != "BTG" {
		t.Errorf("user agent %v", user)
	}
	if get(client, "network", "address") != "203.0.113.7" || get(client, "network", "type") != "2" || client["requestor"] != false {
		t.Errorf("client agent %v", client)
	}
	if get(server, "network", "address") != "https://fhir.example.org/fhir/R4" || get(server, "network", "type") != "5" {
		t.Errorf("server agent %v", server)
	}
	if refs := entityRefs(read); !slices.Equal(refs, []string{"Observation/o1", "Patient/85"}) {
		t.Errorf("read entities %v", refs)
	}
	for _, e := range read["entity"].([]any) {
		switch get(e, "what", "reference") {
		case "Observation/o1":
			if get(e, "role", "code") != "4" || get(e, "type", "code") != "2" {
				t.Errorf("data entity %v", e)
			}
		case "Patient/85":
			if get(e, "role", "code") != "1" || get(e, "type", "code") != "1" {
				t.Errorf("patient entity %v", e)
			}
		case nil:
			if get(e, "type", "code") != "XrequestId" || get(e, "what", "identifier", "value") != "req-1" {
				t.Errorf("request entity %v", e)
			}
		}
	}

	// A search over two patients: one AuditEvent per patient, each with
	// the query (base64) and one patient.
	evs := auditEvents(recs["search"], shapeDeps)
	if len(evs) != 2 || evs[0].ID != "s1-1" || evs[1].ID != "s1-2" {
		t.Fatalf("search: %d events %v", len(evs), evs)
	}
	for i, ev := range evs {
		m := toMap(t, ev)
		if get(m, "meta", "profile", 0) != balpProfile+"PatientQuery" || m["action"] != "E" || get(m, "subtype", 0, "code") != "search-type" {
			t.Errorf("search event %d: %v", i, m)
		}
		if refs := entityRefs(m); !slices.Equal(refs, []string{"Patient/" + recs["search"].Patients[i]}) {
			t.Errorf("search event %d entities %v", i, refs)
		}
		var q map[string]any
		for _, e := range m["entity"].([]any) {
			if get(e, "role", "code") == "24" {
				q = e.(map[string]any)
			}
		}
		raw, _ := base64.StdEncoding.DecodeString(q["query"].(string))
		if string(raw) != "GET /fhir/R4/Observation?code=8867-4" || agentOf(m, "110153") == nil || get(agentOf(m, "110153"), "network", "type") != "2" {
			t.Errorf("search event %d: query %q, agents %v", i, raw, m["agent"])
		}
		if agentOf(m, "110152") == nil || get(agentOf(m, "110152"), "who", "display") != "gw-1.example.org" {
			t.Errorf("search event %d: server agent %v", i, m["agent"])
		}
	}

	denied := toMap(t, auditEvents(recs["denied"], shapeDeps)[0])
	if denied["outcome"] != "4" || denied["outcomeDesc"] != "403 Forbidden: no scope grants d on Patient" || denied["meta"] != nil {
		t.Errorf("denied: %v", denied)
	}
	del := toMap(t, auditEvents(recs["delete"], shapeDeps)[0])
	if get(del, "meta", "profile", 0) != balpProfile+"PatientDelete" || del["action"] != "D" ||
		agentOf(del, "110150") == nil || agentOf(del, "custodian") == nil || agentOf(del, "AUT") == nil {
		t.Errorf("delete: %v", del)
	}
	created := toMap(t, auditEvents(recs["create"], shapeDeps)[0])
	if get(created, "meta", "profile", 0) != balpProfile+"Create" || created["action"] != "C" ||
		!slices.Equal(entityRefs(created), []string{"Observation/n1/_history/1"}) {
		t.Errorf("create: %v", created)
	}
	anon := toMap(t, auditEvents(recs["anonymous failure"], shapeDeps)[0])
	if anon["outcome"] != "8" || len(anon["agent"].([]any)) != 2 || get(agentOf(anon, "110152"), "requestor") != true {
		t.Errorf("anonymous failure: %v", anon)
	}
}

// Every shape is a valid AuditEvent: the embedded server's schema
// validation accepts it (and refuses a broken one, so it is on).
func TestAuditEventsValidate(t *testing.T) {
	cfg := fhir.DefaultConfig()
	cfg.Store.Path = ":memory:"
	h, err := fhir.Open(context.Background(), cfg, fhir.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	put := func(ev auditEvent) *httptest.ResponseRecorder {
		body, _ := json.Marshal(ev)
		req := httptest.NewRequest("PUT", "/fhir/R4/AuditEvent/"+ev.ID, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/fhir+json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	n := 0
	for name, rec := range shapeRecords() {
		for _, ev := range auditEvents(rec, shapeDeps) {
			if res := put(ev); res.Code != http.StatusCreated {
				t.Errorf("%s: AuditEvent/%s: %d %s", name, ev.ID, res.Code, res.Body)
			}
			n++
		}
	}
	bad := auditEvents(shapeRecords()["read"], shapeDeps)[0]
	bad.ID, bad.Outcome = "bad", "7"
	if res := put(bad); res.Code != http.StatusBadRequest || !strings.Contains(res.Body.String(), "outcome") {
		t.Errorf("an invalid outcome code was accepted: %d %s", res.Code, res.Body)
	}
	t.Logf("%d AuditEvents validated", n)
}
