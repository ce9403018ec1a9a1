package audit

import (
	"fmt"
	"slices"
	"testing"
)

// The memo is bounded: a version not used for two generations is
// forgotten, one in use stays.
func TestCompartmentMemoBounded(t *testing.T) {
	m := newCompartmentMemo(4)
	m.put("hot", []string{"85"})
	for i := range 20 {
		m.put(fmt.Sprint(i), []string{"x"})
		if ids, ok := m.get("hot"); !ok || !slices.Equal(ids, []string{"85"}) {
			t.Fatalf("after %d puts: hot entry %v %v", i+1, ids, ok)
		}
		if n := len(m.cur) + len(m.prev); n > 8 {
			t.Fatalf("after %d puts: %d entries, want at most 8", i+1, n)
		}
	}
	if _, ok := m.get("0"); ok {
		t.Error("an entry unused for two generations is still remembered")
	}
	if memoKey("Observation", "o1", "") != "" {
		t.Error("a response without ETag has a memo key")
	}
}

// A read's patients come from the version read: once a resource moves to
// another patient's compartment, reads of the new version name the new
// patient, and reads of the old version still name the old one.
func TestReadPatientsFollowTheVersion(t *testing.T) {
	g := newGateway(t, gwOptions{})
	g.seed()
	for range 2 { // the second read is answered from the memo
		g.must(200, nurse, "GET", "/fhir/R4/Observation/o1", "", "X-Request-Id", "before")
	}
	g.must(200, physician, "PUT", "/fhir/R4/Observation/o1", `{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/86"}}`)
	for range 2 {
		g.must(200, nurse, "GET", "/fhir/R4/Observation/o1", "", "X-Request-Id", "after")
		g.must(200, nurse, "GET", "/fhir/R4/Observation/o1/_history/1", "", "X-Request-Id", "old")
	}
	g.settle()
	recs := g.records()
	for rid, want := range map[string][]string{"before": {"85"}, "after": {"86"}, "old": {"85"}} {
		got := byRequest(recs, rid)
		if len(got) != 2 {
			t.Fatalf("%s: %d records, want 2", rid, len(got))
		}
		for _, r := range got {
			if !slices.Equal(r.Patients, want) {
				t.Errorf("%s: patients %v, want %v", rid, r.Patients, want)
			}
		}
	}
}
