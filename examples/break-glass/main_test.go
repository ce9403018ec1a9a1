package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasmtest"
)

func TestAuditRecord(t *testing.T) {
	p := wasmtest.Load(t, wasmtest.Build(t, "."), wasmtest.Options{Now: time.Date(2026, 5, 4, 3, 15, 0, 0, time.UTC)})
	reason := "cardiac arrest, patient cannot consent"
	res := p.Do(t, wasmtest.Request{
		Method:   "GET",
		Path:     "/fhir/R4/Observation?subject=Patient/p1",
		Header:   map[string]string{"X-Break-Glass": reason},
		Identity: &gateway.Identity{UserID: "dr1", Role: "physician"},
	})
	if res.Decision != wasmtest.Allow {
		t.Fatalf("got %s %d", res.Decision, res.Status)
	}
	key := res.UpstreamHeader.Get(Granted)
	raw, ok := p.KV(key)
	if !ok {
		t.Fatalf("no audit record under %q", key)
	}
	var rec audit
	if err := json.Unmarshal([]byte(raw), &rec); err != nil {
		t.Fatal(err)
	}
	want := audit{Time: "2026-05-04T03:15:00Z", RequestID: "wasmtest-1", User: "dr1", Role: "physician",
		Method: "GET", Path: "/fhir/R4/Observation", Interaction: "search-type", Type: "Observation", Reason: reason}
	if !reflect.DeepEqual(rec, want) {
		t.Errorf("audit = %+v\nwant %+v", rec, want)
	}
	for _, l := range res.Logs {
		if strings.Contains(l.String(), "cardiac") {
			t.Errorf("the reason reached the log: %s", l)
		}
	}
	// Audit records expire after audit_days.
	p.Advance(91 * 24 * time.Hour)
	if _, ok := p.KV(key); ok {
		t.Error("audit record outlived audit_days")
	}
}

// TestBundleAudit: emergency access to a batch or transaction covers each
// entry, and the audit record names each; a Bundle whose entries cannot
// all be named is refused.
func TestBundleAudit(t *testing.T) {
	p := wasmtest.Load(t, wasmtest.Build(t, "."), wasmtest.Options{
		Now: time.Date(2026, 5, 4, 3, 15, 0, 0, time.UTC), MaxRequestBody: 2 << 10})
	dr := &gateway.Identity{UserID: "dr1", Role: "physician"}
	claim := map[string]string{"X-Break-Glass": "cardiac arrest, patient cannot consent"}
	body := `{"resourceType":"Bundle","type":"transaction","entry":[
		{"request":{"method":"GET","url":"Patient/p1"}},
		{"request":{"method":"DELETE","url":"Observation?subject=Patient/p1"}},
		{"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Observation"}}]}`
	res := p.Do(t, wasmtest.Request{Method: "POST", Path: "/fhir/R4", Body: body, Header: claim, Identity: dr})
	if res.Decision != wasmtest.Allow || res.UpstreamBody != body {
		t.Fatalf("got %s %d %s; upstream body %q", res.Decision, res.Status, res.Body, res.UpstreamBody)
	}
	raw, ok := p.KV(res.UpstreamHeader.Get(Granted))
	if !ok {
		t.Fatal("no audit record")
	}
	var rec audit
	if err := json.Unmarshal([]byte(raw), &rec); err != nil {
		t.Fatal(err)
	}
	want := []auditEntry{
		{Interaction: "read", Type: "Patient", Method: "GET", Path: "Patient/p1"},
		{Interaction: "delete", Type: "Observation", Method: "DELETE", Path: "Observation"},
		{Interaction: "create", Type: "Observation", Method: "POST", Path: "Observation"},
	}
	if rec.Interaction != "batch" || !reflect.DeepEqual(rec.Entries, want) {
		t.Errorf("audit %s %+v\nwant entries %+v", rec.Interaction, rec.Entries, want)
	}
	logged := false
	for _, l := range res.Logs {
		s := l.String()
		logged = logged || strings.Contains(s, "batch of 3: read Patient, delete Observation, create Observation")
		if strings.Contains(s, "p1") || strings.Contains(s, "cardiac") {
			t.Errorf("an id or the reason reached the log: %s", s)
		}
	}
	if !logged {
		t.Errorf("no log record names the entries: %v", res.Logs)
	}

	big := `{"resourceType":"Bundle","type":"batch","entry":[` +
		strings.Repeat(`{"request":{"method":"GET","url":"Patient/p1"}},`, 60) + `{"request":{"method":"GET","url":"Patient/p2"}}]}`
	for _, tc := range []struct {
		name, body string
		status     int
		contains   string
	}{
		{"an entry that is no interaction", `{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"FROB","url":"Patient/p1"}}]}`,
			400, "entry[0] is not a FHIR interaction"},
		{"not a Bundle", `<Bundle xmlns="http://hl7.org/fhir"/>`, 400, "cannot be read"},
		{"over max_request_body", big, 413, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := p.Do(t, wasmtest.Request{Method: "POST", Path: "/fhir/R4", Body: tc.body, Header: claim, Identity: dr})
			if res.Decision != wasmtest.Deny || res.Status != tc.status || !strings.Contains(res.Body, tc.contains) {
				t.Errorf("got %s %d %s", res.Decision, res.Status, res.Body)
			}
		})
	}
}

func TestCases(t *testing.T) {
	wasmtest.RunCases(t, wasmtest.Build(t, "."), "cases.yaml")
}
