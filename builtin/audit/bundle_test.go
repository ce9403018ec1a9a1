package audit

import (
	"slices"
	"strings"
	"testing"
)

// A batch or transaction gets a record of its own and one per entry, each
// with the entry's interaction, status (from the response Bundle) and
// patients.
func TestBundleEntries(t *testing.T) {
	g := newGateway(t, gwOptions{})
	g.seed()
	tx := `{"resourceType":"Bundle","type":"transaction","entry":[
	  {"fullUrl":"urn:uuid:0c9f6a1e-1b1a-4c59-9b47-000000000001","resource":{"resourceType":"Patient","name":[{"family":"New"}]},"request":{"method":"POST","url":"Patient"}},
	  {"resource":{"resourceType":"Observation","status":"final","code":{"text":"bp"},"subject":{"reference":"Patient/85"}},"request":{"method":"POST","url":"Observation"}},
	  {"resource":{"resourceType":"Observation","id":"t1","status":"final","code":{"text":"hr"},"subject":{"reference":"Patient/86"}},"request":{"method":"PUT","url":"Observation/t1"}},
	  {"request":{"method":"DELETE","url":"Condition/c1"}}
	]}`
	g.must(200, physician, "POST", "/fhir/R4", tx, "X-Request-Id", "tx")
	batch := `{"resourceType":"Bundle","type":"batch","entry":[
	  {"request":{"method":"GET","url":"Observation?patient=86"}},
	  {"request":{"method":"GET","url":"Patient/85"}},
	  {"resource":{"resourceType":"Observation","id":"bad","status":"nonsense-status","code":{"text":"x"}},"request":{"method":"PUT","url":"Observation/bad"}},
	  {"request":{"method":"GET","url":"Observation/o1/_history/1"}}
	]}`
	g.must(200, physician, "POST", "/fhir/R4", batch, "X-Request-Id", "batch")
	// A transaction authz refuses for one entry: every entry is recorded,
	// each with its own decision.
	denied := `{"resourceType":"Bundle","type":"transaction","entry":[
	  {"request":{"method":"GET","url":"Patient/85"}},
	  {"request":{"method":"DELETE","url":"Observation/o2"}}
	]}`
	g.must(403, nurse, "POST", "/fhir/R4", denied, "X-Request-Id", "denied")
	g.settle()
	recs := g.records()

	type want struct {
		interaction, typ, id string
		status               int
		patients             []string
		decision             string
	}
	check := func(rid string, outer want, entries []want) {
		t.Helper()
		got := byRequest(recs, rid)
		if len(got) != 1+len(entries) {
			t.Fatalf("%s: %d records, want %d: %+v", rid, len(got), 1+len(entries), got)
		}
		o := got[0]
		if o.Entry != nil || o.Entries != len(entries) || o.Bundle != outer.interaction || o.Interaction != outer.interaction ||
			o.Status != outer.status || o.Decision != outer.decision || !sameSet(o.Patients, outer.patients) {
			t.Errorf("%s: Bundle record %+v, want %+v", rid, o, outer)
		}
		ids := map[string]bool{o.ID: true}
		for i, w := range entries {
			r := got[i+1]
			if r.Entry == nil || *r.Entry != i || r.Bundle != outer.interaction || r.RequestID != rid || r.User != o.User || ids[r.ID] {
				t.Errorf("%s entry %d: %+v", rid, i, r)
			}
			ids[r.ID] = true
			if r.Interaction != w.interaction || r.Type != w.typ || w.id != "" && r.ResourceID != w.id || r.Status != w.status ||
				!slices.Equal(r.Patients, w.patients) || r.Decision != w.decision {
				t.Errorf("%s entry %d: %+v\nwant %+v", rid, i, r, w)
			}
		}
	}
	got := byRequest(recs, "tx")
	if len(got) < 2 || got[1].ResourceID == "" {
		t.Fatalf("tx: the created Patient's id is missing: %+v", got)
	}
	newPatient := got[1].ResourceID
	check("tx", want{interaction: "transaction", status: 200, patients: []string{newPatient, "85", "86"}, decision: DecisionAllowed}, []want{
		{"create", "Patient", newPatient, 201, []string{newPatient}, DecisionAllowed},
		{"create", "Observation", "", 201, []string{"85"}, DecisionAllowed},
		{"update", "Observation", "t1", 201, []string{"86"}, DecisionAllowed},
		{"delete", "Condition", "c1", 204, nil, DecisionAllowed},
	})
	check("batch", want{interaction: "batch", status: 200, patients: []string{"86", "85"}, decision: DecisionAllowed}, []want{
		{"search-type", "Observation", "", 200, []string{"86"}, DecisionAllowed},
		{"read", "Patient", "85", 200, []string{"85"}, DecisionAllowed},
		{"update", "Observation", "bad", 400, nil, DecisionAllowed},
		{"vread", "Observation", "o1", 200, []string{"85"}, DecisionAllowed},
	})
	check("denied", want{interaction: "transaction", status: 403, patients: []string{"85"}, decision: DecisionDenied}, []want{
		{"read", "Patient", "85", 403, []string{"85"}, DecisionAllowed},
		{"delete", "Observation", "o2", 403, nil, DecisionDenied},
	})
	if r := byRequest(recs, "batch")[1]; r.Query != "patient=86" || r.Path != "Observation" || r.Method != "GET" {
		t.Errorf("search entry: path %q query %q method %q", r.Path, r.Query, r.Method)
	}
	if r := byRequest(recs, "denied")[2]; !strings.Contains(r.Reason, "no scope grants d on Observation") {
		t.Errorf("denied entry's reason: %q", r.Reason)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
