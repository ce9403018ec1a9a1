package main

import (
	"testing"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasmtest"
)

func TestRequireHeader(t *testing.T) {
	p := wasmtest.Load(t, wasmtest.Build(t, "."), wasmtest.Options{
		Config: map[string]any{"header": "X-Tenant"},
	})
	nurse := &gateway.Identity{UserID: "n1", Role: "nurse"}
	tests := []struct {
		name     string
		header   map[string]string
		decision string
		status   int
	}{
		{"without the header", nil, wasmtest.Deny, 400},
		{"with an empty header", map[string]string{"X-Tenant": ""}, wasmtest.Deny, 400},
		{"with the header", map[string]string{"X-Tenant": "acme"}, wasmtest.Allow, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := p.Do(t, wasmtest.Request{Path: "/fhir/R4/Patient/1", Header: tt.header, Identity: nurse})
			if res.Decision != tt.decision || res.Status != tt.status {
				t.Fatalf("got %s %d, want %s %d: %s", res.Decision, res.Status, tt.decision, tt.status, res.Body)
			}
		})
	}
	if got := p.Counter("denied"); got != 2 {
		t.Errorf("denied counter = %v, want 2", got)
	}
}

func TestConfigErrors(t *testing.T) {
	path := wasmtest.Build(t, ".")
	for name, cfg := range map[string]any{
		"missing header": map[string]any{},
		"unknown key":    map[string]any{"header": "X", "hedaer": "Y"},
		"bad status":     map[string]any{"header": "X", "status": 200},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := wasmtest.Open(path, wasmtest.Options{Config: cfg}); err == nil {
				t.Fatal("loaded with a bad config")
			}
		})
	}
}

func TestCases(t *testing.T) {
	wasmtest.RunCases(t, wasmtest.Build(t, "."), "cases.yaml")
}
