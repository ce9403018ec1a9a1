package audit

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// "Who looked at my record": AuditEvent?patient=85 finds every access to
// patient 85's data, whatever path it took, and nothing else.
func TestWhoLookedAtMyRecord(t *testing.T) {
	g := newGateway(t, gwOptions{})
	g.seed()
	g.settle()
	seedEvents := len(g.events("patient=85"))

	g.must(200, nurse, "GET", "/fhir/R4/Patient/85", "", "X-Request-Id", "n-read")
	g.must(200, physician, "GET", "/fhir/R4/Observation?code=8867-4", "", "X-Request-Id", "p-search") // o1 (85) and o2 (86)
	g.must(200, nurse, "GET", "/fhir/R4/Observation/o1", "", "X-Request-Id", "n-obs")                 // 85 by the subject
	g.must(200, physician, "GET", "/fhir/R4/Patient/85/Condition", "", "X-Request-Id", "p-compartment")
	g.must(403, nurse, "DELETE", "/fhir/R4/Patient/85", "", "X-Request-Id", "n-denied")
	// Not 85's data.
	g.must(200, nurse, "GET", "/fhir/R4/Observation/o2", "", "X-Request-Id", "n-86")
	g.must(200, physician, "GET", "/fhir/R4/Patient/86", "", "X-Request-Id", "p-86")
	g.settle()

	want := map[string]string{"n-read": "nurse-joy", "p-search": "dr-house", "n-obs": "nurse-joy", "p-compartment": "dr-house", "n-denied": "nurse-joy"}
	evs := g.events("patient=85")
	if len(evs) != seedEvents+len(want) {
		t.Errorf("%d AuditEvents for patient 85, want %d (seed) + %d", len(evs), seedEvents, len(want))
	}
	found := map[string]bool{}
	last := "9999"
	for _, ev := range evs {
		rid := requestIDOf(ev)
		if rid == "seed" {
			continue
		}
		if user, ok := want[rid]; !ok || get(ev, "agent", 0, "name") != user {
			t.Errorf("AuditEvent %s (request %s, user %v) is not about patient 85", ev["id"], rid, get(ev, "agent", 0, "name"))
		}
		if !slices.Contains(entityRefs(ev), "Patient/85") {
			t.Errorf("AuditEvent %s has no entity Patient/85: %v", ev["id"], entityRefs(ev))
		}
		if rec := ev["recorded"].(string); rec > last {
			t.Errorf("not newest first: %s after %s", rec, last)
		} else {
			last = rec
		}
		found[rid] = true
	}
	for rid := range want {
		if !found[rid] {
			t.Errorf("request %s is missing from patient 85's trail", rid)
		}
	}
	if ev := findEvent(evs, "n-denied"); ev == nil || ev["outcome"] != "4" || !strings.Contains(ev["outcomeDesc"].(string), "403") {
		t.Errorf("the refused delete: %v", ev)
	}

	// The same search through the FHIR API: only an explicit AuditEvent
	// scope reaches it.
	rec := g.must(200, auditor, "GET", "/fhir/R4/AuditEvent?patient=85&_count=100", "")
	var b struct {
		Total int `json:"total"`
	}
	json.Unmarshal(rec.Body.Bytes(), &b)
	if b.Total != len(evs) {
		t.Errorf("AuditEvent?patient=85 through the API: %d, want %d", b.Total, len(evs))
	}
	g.must(403, nurse, "GET", "/fhir/R4/AuditEvent?patient=85", "")
	g.must(403, physician, "PUT", "/fhir/R4/AuditEvent/forged", `{"resourceType":"AuditEvent"}`)

	// Filters: by user, by time.
	for _, ev := range g.events("user=nurse-joy") {
		if get(ev, "agent", 0, "name") != "nurse-joy" {
			t.Errorf("user=nurse-joy found %v", get(ev, "agent", 0, "name"))
		}
	}
	if n := len(g.events("patient=85&user=nurse-joy")); n != 3 {
		t.Errorf("patient=85&user=nurse-joy: %d, want 3", n)
	}
	g.clock.Advance(time.Hour)
	g.must(200, nurse, "GET", "/fhir/R4/Patient/85", "", "X-Request-Id", "later")
	g.settle()
	since := testEpoch.Add(30 * time.Minute).Format(time.RFC3339)
	if evs := g.events("patient=85&since=" + since); len(evs) != 1 || requestIDOf(evs[0]) != "later" {
		t.Errorf("since %s: %d events", since, len(evs))
	}
	if evs := g.events("patient=85&count=2"); len(evs) != 2 {
		t.Errorf("count=2: %d events", len(evs))
	}
	for _, bad := range []string{"patient=bad%20id", "since=yesterday", "count=0"} {
		if rec := g.admin("GET", "/admin/audit/events?"+bad); rec.Code != 400 {
			t.Errorf("%s: %d %s", bad, rec.Code, rec.Body)
		}
	}
}

func requestIDOf(ev map[string]any) string {
	for _, e := range ev["entity"].([]any) {
		if get(e, "type", "code") == "XrequestId" {
			s, _ := get(e, "what", "identifier", "value").(string)
			return s
		}
	}
	return ""
}

func findEvent(evs []map[string]any, rid string) map[string]any {
	for _, ev := range evs {
		if requestIDOf(ev) == rid {
			return ev
		}
	}
	return nil
}

// The stats endpoint and the metrics report the spool and every sink;
// /admin/audit/events needs a fhir sink.
func TestStatsAndMetrics(t *testing.T) {
	g := newGateway(t, gwOptions{audit: "sinks: [{type: file, name: siem, path: " + t.TempDir() + "/siem.jsonl}]"})
	for range 3 {
		g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "")
	}
	g.settle()
	st := g.stats()
	if st.Appended != 3 || st.Flushed != 3 || st.Pending != 0 || st.SpoolBytes == 0 || st.Segments != 1 || st.OnSinkFailure != "block" ||
		len(st.Sinks) != 1 || st.Sinks[0].Name != "siem" || st.Sinks[0].Shipped != 3 || st.Sinks[0].BehindBytes != 0 || st.LastFlush.IsZero() {
		t.Errorf("stats: %+v", st)
	}
	if rec := g.admin("GET", "/admin/audit/events?patient=85"); rec.Code != 404 {
		t.Errorf("events without a fhir sink: %d", rec.Code)
	}
	metrics := g.admin("GET", "/metrics").Body.String()
	for _, m := range []string{
		`omnigate_audit_records_spooled_total{plugin="audit"} 3`,
		`omnigate_audit_sink_records_total{plugin="audit",sink="siem"} 3`,
		`omnigate_audit_sink_lag_seconds{plugin="audit",sink="siem"} 0`,
		`omnigate_audit_sink_behind_bytes{plugin="audit",sink="siem"} 0`,
		`omnigate_audit_spool_bytes{plugin="audit"}`,
	} {
		if !strings.Contains(metrics, m) {
			t.Errorf("metrics lack %s", m)
		}
	}
	if ping := g.admin("GET", "/ping").Body.String(); !strings.Contains(ping, `"audit-sink:siem"`) || !strings.Contains(ping, `"status": "ok"`) {
		t.Errorf("/ping: %s", ping)
	}
}

// POST /admin/audit/prune deletes the AuditEvents recorded before a date,
// and only those.
func TestPrune(t *testing.T) {
	g := newGateway(t, gwOptions{})
	for i := range 3 {
		g.must(404, nurse, "GET", "/fhir/R4/Patient/old"+strconv.Itoa(i), "")
	}
	g.clock.Advance(48 * time.Hour)
	g.must(404, nurse, "GET", "/fhir/R4/Patient/new", "", "X-Request-Id", "new")
	g.settle()
	if n := len(g.events("")); n != 4 {
		t.Fatalf("%d AuditEvents before pruning, want 4", n)
	}
	if rec := g.admin("POST", "/admin/audit/prune?before=someday"); rec.Code != 400 {
		t.Errorf("a bad date: %d", rec.Code)
	}
	rec := g.admin("POST", "/admin/audit/prune?before="+testEpoch.Add(24*time.Hour).Format("2006-01-02"))
	var out struct {
		Deleted int `json:"deleted"`
	}
	json.Unmarshal(rec.Body.Bytes(), &out)
	if rec.Code != 200 || out.Deleted != 3 {
		t.Fatalf("prune: %d %s", rec.Code, rec.Body)
	}
	if evs := g.events(""); len(evs) != 1 || requestIDOf(evs[0]) != "new" {
		t.Errorf("after pruning: %d AuditEvents", len(evs))
	}
}
