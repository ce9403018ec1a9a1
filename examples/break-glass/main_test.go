package main

import (
	"encoding/json"
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
	if rec != want {
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

func TestCases(t *testing.T) {
	wasmtest.RunCases(t, wasmtest.Build(t, "."), "cases.yaml")
}
