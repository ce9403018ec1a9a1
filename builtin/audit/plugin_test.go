package audit

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// seed writes the test data: patients 85 and 86, Observations o1 (of 85)
// and o2 (of 86), a Condition of 85.
func (g *gw) seed() {
	g.t.Helper()
	for _, w := range []struct{ path, body string }{
		{"/fhir/R4/Patient/85", `{"resourceType":"Patient","id":"85","name":[{"family":"Chalmers"}]}`},
		{"/fhir/R4/Patient/86", `{"resourceType":"Patient","id":"86","name":[{"family":"Windsor"}]}`},
		{"/fhir/R4/Observation/o1", `{"resourceType":"Observation","id":"o1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/85"}}`},
		{"/fhir/R4/Observation/o2", `{"resourceType":"Observation","id":"o2","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/86"}}`},
		{"/fhir/R4/Condition/c1", `{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/85"}}`},
	} {
		g.must(201, physician, "PUT", w.path, w.body, "X-Request-Id", "seed")
	}
}

// Every kind of interaction gets one record, with who, what, the patients
// concerned and the outcome; capabilities, SMART discovery and CORS
// preflights get none.
func TestRecordsEveryInteraction(t *testing.T) {
	g := newGateway(t, gwOptions{fhir: "smart: {token_endpoint: https://idp.example.org/token}"})
	g.seed()
	type want struct {
		interaction, typ, id, version, compartment, query string
		status                                            int
		patients                                          []string
		decision                                          string
	}
	cases := []struct {
		who          as
		method, path string
		body, ctype  string
		want         want
	}{
		{nurse, "GET", "/fhir/R4/Patient/85", "", "", want{interaction: "read", typ: "Patient", id: "85", status: 200, patients: []string{"85"}}},
		{nurse, "GET", "/fhir/R4/Observation/o1", "", "", want{interaction: "read", typ: "Observation", id: "o1", status: 200, patients: []string{"85"}}},
		{nurse, "GET", "/fhir/R4/Observation/o1/_history/1", "", "", want{interaction: "vread", typ: "Observation", id: "o1", version: "1", status: 200, patients: []string{"85"}}},
		{nurse, "GET", "/fhir/R4/Observation/o2/_history", "", "", want{interaction: "history-instance", typ: "Observation", id: "o2", status: 200, patients: []string{"86"}}},
		{nurse, "GET", "/fhir/R4/Observation/_history", "", "", want{interaction: "history-type", typ: "Observation", status: 200, patients: []string{"86", "85"}}},
		{nurse, "GET", "/fhir/R4/_history?_count=50", "", "", want{interaction: "history-system", query: "_count=50", status: 200, patients: []string{"85", "86"}}},
		{nurse, "GET", "/fhir/R4/Observation?patient=85", "", "", want{interaction: "search-type", typ: "Observation", query: "patient=85", status: 200, patients: []string{"85"}}},
		{nurse, "GET", "/fhir/R4/Observation?subject=Patient/86", "", "", want{interaction: "search-type", typ: "Observation", query: "subject=Patient/86", status: 200, patients: []string{"86"}}},
		{nurse, "GET", "/fhir/R4/Observation?code=8867-4&_sort=_id", "", "", want{interaction: "search-type", typ: "Observation", query: "code=8867-4&_sort=_id", status: 200, patients: []string{"85", "86"}}},
		{nurse, "GET", "/fhir/R4/Patient?family=Windsor", "", "", want{interaction: "search-type", typ: "Patient", query: "family=Windsor", status: 200, patients: []string{"86"}}},
		{nurse, "GET", "/fhir/R4/Patient/85/Condition", "", "", want{interaction: "search-type", typ: "Condition", compartment: "Patient/85", status: 200, patients: []string{"85"}}},
		{nurse, "POST", "/fhir/R4/Observation/_search", "patient=86", "application/x-www-form-urlencoded", want{interaction: "search-type", typ: "Observation", query: "patient=86", status: 200, patients: []string{"86"}}},
		{physician, "POST", "/fhir/R4/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"pulse"},"subject":{"reference":"Patient/85"}}`, "", want{interaction: "create", typ: "Observation", version: "1", status: 201, patients: []string{"85"}}},
		{physician, "PUT", "/fhir/R4/Observation/o2", `{"resourceType":"Observation","id":"o2","status":"amended","code":{"text":"x"},"subject":{"reference":"Patient/86"}}`, "", want{interaction: "update", typ: "Observation", id: "o2", status: 200, patients: []string{"86"}}},
		{physician, "PATCH", "/fhir/R4/Observation/o1", `[{"op":"replace","path":"/status","value":"amended"}]`, "application/json-patch+json", want{interaction: "patch", typ: "Observation", id: "o1", status: 200, patients: []string{"85"}}},
		{physician, "PUT", "/fhir/R4/Observation?subject=Patient/86&code=x", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/86"}}`, "", want{interaction: "update", typ: "Observation", query: "subject=Patient/86&code=x", status: 201, patients: []string{"86"}}},
		{physician, "DELETE", "/fhir/R4/Condition/c1", "", "", want{interaction: "delete", typ: "Condition", id: "c1", status: 204}},
		{physician, "DELETE", "/fhir/R4/Patient/86", "", "", want{interaction: "delete", typ: "Patient", id: "86", status: 204, patients: []string{"86"}}},
		{physician, "GET", "/fhir/R4/Patient/85/$everything", "", "", want{interaction: "operation", typ: "Patient", id: "85", status: 403, patients: []string{"85"}, decision: DecisionDenied}},
		{physician, "GET", "/fhir/R4/patients/85", "", "", want{interaction: "unknown", status: 404, decision: DecisionNone}},
		{nurse, "DELETE", "/fhir/R4/Patient/85", "", "", want{interaction: "delete", typ: "Patient", id: "85", status: 403, patients: []string{"85"}, decision: DecisionDenied}},
		{as{}, "GET", "/fhir/R4/Observation/o1", "", "", want{interaction: "read", typ: "Observation", id: "o1", status: 403, decision: DecisionDenied}},
	}
	for i, c := range cases {
		hdr := []string{"X-Request-Id", fmt.Sprintf("rq-%d", i)}
		if c.ctype != "" {
			hdr = append(hdr, "Content-Type", c.ctype)
		}
		g.do(c.who, c.method, c.path, c.body, hdr...)
	}
	// Not audited: no PHI.
	g.must(200, nurse, "GET", "/fhir/R4/metadata", "", "X-Request-Id", "meta")
	g.must(200, nurse, "GET", "/fhir/R4/.well-known/smart-configuration", "", "X-Request-Id", "smart")
	g.do(nurse, "OPTIONS", "/fhir/R4/Patient/85", "", "X-Request-Id", "preflight", "Origin", "https://app.example", "Access-Control-Request-Method", "GET")
	g.settle()
	recs := g.records()
	for _, rid := range []string{"meta", "smart", "preflight"} {
		if got := byRequest(recs, rid); len(got) != 0 {
			t.Errorf("%s was audited: %+v", rid, got)
		}
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("%d %s %s", i, c.method, c.path), func(t *testing.T) {
			got := byRequest(recs, fmt.Sprintf("rq-%d", i))
			if len(got) != 1 {
				t.Fatalf("%d records, want 1: %+v", len(got), got)
			}
			r, w := got[0], c.want
			if w.decision == "" {
				w.decision = DecisionAllowed
			}
			path, _, _ := strings.Cut(c.path, "?")
			if r.Interaction != w.interaction || r.Type != w.typ || r.VersionID != w.version || r.Compartment != w.compartment ||
				r.Query != w.query || r.Method != c.method || r.Path != path || r.Decision != w.decision {
				t.Errorf("record %+v, want %+v", r, w)
			}
			if w.id != "" && r.ResourceID != w.id || w.interaction == "create" && r.ResourceID == "" {
				t.Errorf("resource id %q, want %q", r.ResourceID, w.id)
			}
			if w.status != 0 && r.Status != w.status {
				t.Errorf("status %d, want %d", r.Status, w.status)
			}
			if !slices.Equal(r.Patients, w.patients) || r.PatientsIncomplete {
				t.Errorf("patients %v (incomplete %v), want %v", r.Patients, r.PatientsIncomplete, w.patients)
			}
			if c.who.user != "" && (r.User != c.who.user || r.Role != c.who.role || r.FHIRUser != c.who.fhirUser || r.Session != "sess-"+c.who.user) {
				t.Errorf("identity %q %q %q %q", r.User, r.Role, r.FHIRUser, r.Session)
			}
			if r.ClientIP != "203.0.113.7" || r.Route != "fhir" || r.ID == "" || !r.Time.Equal(testEpoch) {
				t.Errorf("client %q, route %q, id %q, time %v", r.ClientIP, r.Route, r.ID, r.Time)
			}
			if w.decision == DecisionDenied && r.Reason == "" {
				t.Error("a refusal without its reason")
			}
		})
	}
	// A create of a Patient names the patient it created.
	rec := g.must(201, physician, "POST", "/fhir/R4/Patient", `{"resourceType":"Patient"}`, "X-Request-Id", "new-patient")
	g.settle()
	r := byRequest(g.records(), "new-patient")[0]
	if loc := rec.Header().Get("Location"); r.ResourceID == "" || !strings.Contains(loc, "/Patient/"+r.ResourceID+"/") || !slices.Equal(r.Patients, []string{r.ResourceID}) {
		t.Errorf("create Patient: id %q patients %v, Location %s", r.ResourceID, r.Patients, loc)
	}
}

// Without authz the plugin classifies requests itself and says no access
// control decided.
func TestWithoutAuthz(t *testing.T) {
	g := newGateway(t, gwOptions{noAuthz: true})
	g.seed()
	g.must(200, as{}, "GET", "/fhir/R4/Observation/o1", "", "X-Request-Id", "anon")
	g.settle()
	got := byRequest(g.records(), "anon")
	if len(got) != 1 || got[0].Decision != DecisionNone || got[0].User != "" || got[0].Interaction != "read" ||
		!slices.Equal(got[0].Patients, []string{"85"}) {
		t.Fatalf("records: %+v", got)
	}
}

// Whatever access control says (here: none), the audit trail cannot be
// written through the API: not created, updated, patched or deleted, not
// in a Bundle either. The refusal is itself recorded.
func TestAuditTrailIsNotWritableThroughTheAPI(t *testing.T) {
	g := newGateway(t, gwOptions{noAuthz: true})
	g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "")
	g.settle()
	id := g.events("")[0]["id"].(string)
	ev := `{"resourceType":"AuditEvent","type":{"code":"rest"},"recorded":"2026-09-01T10:00:00Z","agent":[{"requestor":true}],"source":{"observer":{"display":"x"}}}`
	for i, c := range []struct{ method, path, body string }{
		{"POST", "/fhir/R4/AuditEvent", ev},
		{"PUT", "/fhir/R4/AuditEvent/" + id, ev},
		{"PATCH", "/fhir/R4/AuditEvent/" + id, `[{"op":"replace","path":"/outcome","value":"0"}]`},
		{"DELETE", "/fhir/R4/AuditEvent/" + id, ""},
		{"DELETE", "/fhir/R4/AuditEvent?date=lt2030-01-01", ""},
		{"POST", "/fhir/R4", `{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1"}},{"request":{"method":"DELETE","url":"AuditEvent/` + id + `"}}]}`},
	} {
		ct := []string{"X-Request-Id", "tamper-" + strconv.Itoa(i)}
		if c.method == "PATCH" {
			ct = append(ct, "Content-Type", "application/json-patch+json")
		}
		rec := g.must(403, nurse, c.method, c.path, c.body, ct...)
		if !strings.Contains(rec.Body.String(), "OperationOutcome") {
			t.Errorf("%s %s: %s", c.method, c.path, rec.Body)
		}
	}
	g.settle()
	for i := range 6 {
		r := byRequest(g.records(), "tamper-"+strconv.Itoa(i))
		if len(r) == 0 || r[0].Decision != DecisionDenied || r[0].Reason != reasonProtected || r[0].Status != 403 {
			t.Errorf("tamper-%d: %+v", i, r)
		}
	}
	if rec := g.must(200, nurse, "GET", "/fhir/R4/AuditEvent/"+id, ""); !strings.Contains(rec.Body.String(), `"outcome":"4"`) {
		t.Errorf("the AuditEvent changed: %s", rec.Body)
	}
}

// A refusal answered by authz itself is recorded with its reason, and
// break-glass access with the reason given.
func TestRefusalsAndBreakGlass(t *testing.T) {
	g := newGateway(t, gwOptions{})
	g.seed()
	g.must(403, nurse, "GET", "/fhir/R4/AuditEvent", "", "X-Request-Id", "wildcard")
	g.must(200, as{user: "dr-who", role: "physician", scopes: "openid"}, "GET", "/fhir/R4/Observation/o2", "",
		"X-Request-Id", "btg", "X-Break-Glass", "unconscious patient in the ER")
	g.settle()
	recs := g.records()
	if r := byRequest(recs, "wildcard"); len(r) != 1 || r[0].Decision != DecisionDenied || r[0].Status != 403 ||
		!strings.Contains(r[0].Reason, "AuditEvent") {
		t.Errorf("user/*.rs reaching AuditEvent: %+v", r)
	}
	r := byRequest(recs, "btg")
	if len(r) != 1 || r[0].Decision != DecisionAllowed || r[0].BreakGlass != "unconscious patient in the ER" || r[0].Reason != "break-glass" ||
		!slices.Equal(r[0].Patients, []string{"86"}) {
		t.Errorf("break-glass: %+v", r)
	}
	evs := g.events("patient=86&user=dr-who")
	if len(evs) != 1 {
		t.Fatalf("break-glass AuditEvents: %v", evs)
	}
	pe := evs[0]["purposeOfEvent"].([]any)[0].(map[string]any)
	if c := pe["coding"].([]any)[0].(map[string]any); c["code"] != "BTG" || pe["text"] != "unconscious patient in the ER" {
		t.Errorf("purposeOfEvent %v", pe)
	}
}
