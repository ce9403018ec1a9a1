package main

import (
	"testing"

	"github.com/omnigate/omnigate/sdk/wasmtest"
)

// TestSharedAcrossInstances loads the plugin twice over one KV, as two
// gateway instances over one Redis would share it: the quota holds across
// both.
func TestSharedAcrossInstances(t *testing.T) {
	path := wasmtest.Build(t, ".")
	a := wasmtest.Load(t, path, wasmtest.Options{Config: `{"limit":3}`})
	b := wasmtest.Load(t, path, wasmtest.Options{Config: `{"limit":3}`, SharedKV: a})
	req := wasmtest.Request{Path: "/fhir/R4/Patient", Header: map[string]string{"X-Tenant": "acme"}}
	for i, p := range []*wasmtest.Plugin{a, b, a} {
		if res := p.Do(t, req); res.Decision != wasmtest.Allow {
			t.Fatalf("request %d: %s %d", i, res.Decision, res.Status)
		}
	}
	if res := b.Do(t, req); res.Status != 429 {
		t.Fatalf("fourth request: %d", res.Status)
	}
}

func TestConfigRequired(t *testing.T) {
	if _, err := wasmtest.Open(wasmtest.Build(t, "."), wasmtest.Options{}); err == nil {
		t.Fatal("loaded without a limit")
	}
}

func TestCases(t *testing.T) {
	wasmtest.RunCases(t, wasmtest.Build(t, "."), "cases.yaml")
}
