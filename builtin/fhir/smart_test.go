package fhir

import (
	"net/http"
	"slices"
	"testing"
)

func TestSMARTConfiguration(t *testing.T) {
	h := newTestServer(t)
	r := do(t, h, "GET", "/fhir/R4/.well-known/smart-configuration", nil)
	mustStatus(t, r, http.StatusOK)
	doc := r.json(t)
	caps, _ := doc["capabilities"].([]any)
	if !slices.Contains(caps, any("permission-v2")) || doc["authorization_endpoint"] != nil {
		t.Errorf("default document: %v", doc)
	}
	h = newTestServer(t, func(c *Config) {
		c.SMART = SMARTConfig{Issuer: "https://idp.example.org", AuthorizationEndpoint: "https://idp.example.org/auth",
			TokenEndpoint: "https://idp.example.org/token"}
	})
	doc = do(t, h, "GET", "/fhir/R4/.well-known/smart-configuration", nil).json(t)
	if doc["token_endpoint"] != "https://idp.example.org/token" || doc["grant_types_supported"] == nil ||
		doc["code_challenge_methods_supported"] == nil {
		t.Errorf("configured document: %v", doc)
	}
	mustStatus(t, do(t, h, "POST", "/fhir/R4/.well-known/smart-configuration", nil), http.StatusMethodNotAllowed)
	mustStatus(t, do(t, h, "GET", "/fhir/R4/.well-known/other", nil), http.StatusNotFound)
	bad := DefaultConfig()
	bad.SMART.TokenEndpoint = "not a url"
	if err := bad.Validate(); err == nil {
		t.Error("a relative token endpoint was accepted")
	}
}
