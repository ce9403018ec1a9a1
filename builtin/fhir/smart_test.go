package fhir

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

func TestSMARTConfiguration(t *testing.T) {
	// Without fhir.smart the server is no SMART authorization server: the
	// discovery document is not served (an incomplete one would send apps
	// to endpoints that do not exist), and the 404 says what to set.
	h := newTestServer(t)
	r := do(t, h, "GET", "/fhir/R4/.well-known/smart-configuration", nil)
	mustStatus(t, r, http.StatusNotFound)
	if d := string(r.body); !strings.Contains(d, "OperationOutcome") || !strings.Contains(d, "fhir.smart") {
		t.Errorf("404 without fhir.smart says %q", d)
	}
	if strings.Contains(string(do(t, h, "GET", "/fhir/R4/metadata", nil).body), "SMART-on-FHIR") {
		t.Error("the CapabilityStatement declares SMART without fhir.smart")
	}
	h = newTestServer(t, func(c *Config) {
		c.SMART = SMARTConfig{Issuer: "https://idp.example.org", AuthorizationEndpoint: "https://idp.example.org/auth",
			TokenEndpoint: "https://idp.example.org/token"}
	})
	r = do(t, h, "GET", "/fhir/R4/.well-known/smart-configuration", nil)
	mustStatus(t, r, http.StatusOK)
	doc := r.json(t)
	caps, _ := doc["capabilities"].([]any)
	if doc["token_endpoint"] != "https://idp.example.org/token" || doc["authorization_endpoint"] != "https://idp.example.org/auth" ||
		doc["grant_types_supported"] == nil || doc["code_challenge_methods_supported"] == nil ||
		!slices.Contains(caps, any("permission-v2")) || !slices.Contains(caps, any("launch-standalone")) {
		t.Errorf("configured document: %v", doc)
	}
	// A token endpoint alone (backend services): no standalone launch.
	h2 := newTestServer(t, func(c *Config) { c.SMART = SMARTConfig{TokenEndpoint: "https://idp.example.org/token"} })
	doc = do(t, h2, "GET", "/fhir/R4/.well-known/smart-configuration", nil).json(t)
	if caps, _ := doc["capabilities"].([]any); slices.Contains(caps, any("launch-standalone")) {
		t.Errorf("standalone launch declared without an authorization endpoint: %v", doc)
	}
	mustStatus(t, do(t, h, "POST", "/fhir/R4/.well-known/smart-configuration", nil), http.StatusMethodNotAllowed)
	mustStatus(t, do(t, h, "GET", "/fhir/R4/.well-known/other", nil), http.StatusNotFound)
	bad := DefaultConfig()
	bad.SMART.TokenEndpoint = "not a url"
	if err := bad.Validate(); err == nil {
		t.Error("a relative token endpoint was accepted")
	}
	half := DefaultConfig()
	half.SMART.AuthorizationEndpoint = "https://idp.example.org/auth"
	if err := half.Validate(); err == nil || !strings.Contains(err.Error(), "smart.token_endpoint") {
		t.Errorf("an authorization endpoint without a token endpoint: %v", err)
	}
}
