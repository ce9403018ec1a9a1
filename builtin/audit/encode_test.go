package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func sameAsMarshal(t *testing.T, r *Record) {
	t.Helper()
	want, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.appendJSON(nil); !bytes.Equal(got, want) {
		t.Fatalf("appendJSON\n got %s\nwant %s", got, want)
	}
}

// The hand-written encoder writes exactly what encoding/json writes, so
// spools and sinks read records the same whichever wrote them.
func TestRecordJSONMatchesMarshal(t *testing.T) {
	entry := 3
	full := &Record{ID: "abc-1", Time: time.Date(2024, 6, 1, 12, 30, 0, 123456789, time.UTC), RequestID: "rq",
		User: "dr", Role: "physician", FHIRUser: "Practitioner/1", Session: "s1", ClientIP: "2001:db8::1", Route: "fhir",
		Method: "GET", Path: "/fhir/R4/Observation", Interaction: "search-type", Type: "Observation", ResourceID: "o1",
		VersionID: "2", Operation: "everything", Compartment: "Patient/85", Query: "code=a&b=<c>&d=\"e\"\\",
		Bundle: "batch", Entry: &entry, Entries: 9, Patients: []string{"85", "86"}, PatientsIncomplete: true,
		Status: 403, Decision: DecisionDenied, Reason: "scope\n\t\x01\u2028\u2029\xff", BreakGlass: "emergency"}
	sameAsMarshal(t, full)
	sameAsMarshal(t, &Record{})
	zero := 0
	sameAsMarshal(t, &Record{Entry: &zero, Time: time.Date(2024, 6, 1, 0, 0, 0, 0, time.FixedZone("x", 3600))})
}

func FuzzRecordJSON(f *testing.F) {
	f.Add("a<b>&c", "\u2028\xff\x00", 200, int64(1717245000123))
	f.Add("", "Patient/85", 0, int64(0))
	f.Fuzz(func(t *testing.T, s1, s2 string, status int, nanos int64) {
		r := &Record{ID: s1, Time: time.Unix(0, nanos).UTC(), Query: s2, Path: s1 + s2, Status: status,
			Patients: strings.Split(s2, "/"), Reason: s1, Decision: s2}
		sameAsMarshal(t, r)
	})
}
