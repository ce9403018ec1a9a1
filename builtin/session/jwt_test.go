package session

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type jwtKeys struct {
	rsa, rsaOther *rsa.PrivateKey
	ec            *ecdsa.PrivateKey
	jwks          []byte
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func newJWTKeys(t *testing.T) *jwtKeys {
	t.Helper()
	k := &jwtKeys{}
	var err error
	if k.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if k.rsaOther, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	pad := func(b []byte) []byte { out := make([]byte, 32); copy(out[32-len(b):], b); return out }
	ecPub, _ := k.ec.PublicKey.ECDH()
	raw := ecPub.Bytes() // 0x04 || X || Y
	set := map[string]any{"keys": []map[string]any{
		{"kty": "RSA", "kid": "rsa1", "alg": "RS256", "use": "sig", "n": b64(k.rsa.N.Bytes()), "e": b64(big.NewInt(int64(k.rsa.E)).Bytes())},
		{"kty": "EC", "kid": "ec1", "alg": "ES256", "use": "sig", "crv": "P-256", "x": b64(pad(raw[1:33])), "y": b64(pad(raw[33:]))},
	}}
	k.jwks, _ = json.Marshal(set)
	return k
}

const hsSecret = "0123456789abcdef0123456789abcdef-secret"

// claims are valid at testT0, the test gateways' time.
func claims(mod func(jwt.MapClaims)) jwt.MapClaims {
	now := testT0
	c := jwt.MapClaims{
		"iss": "https://idp.example.org", "aud": "omnigate", "sub": "dr-who",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"role": "physician", "scope": "user/*.rs openid", "patient": "85",
	}
	if mod != nil {
		mod(c)
	}
	return c
}

func sign(t *testing.T, m jwt.SigningMethod, kid string, key any, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestJWT(t *testing.T) {
	keys := newJWTKeys(t)
	dir := t.TempDir()
	jwksFile := filepath.Join(dir, "jwks.json")
	os.WriteFile(jwksFile, keys.jwks, 0o644)
	g := newGateway(t, "", usersFile(t), `
jwt:
  issuer: https://idp.example.org
  audience: omnigate
  jwks_file: `+jwksFile+`
  hs256_secret: `+hsSecret+`
  leeway: 1s
`)
	pubDER, _ := x509.MarshalPKIXPublicKey(&keys.rsa.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	noneTok, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)

	tests := []struct {
		name  string
		token string
		want  int
	}{
		{"RS256 valid", sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsa, claims(nil)), 200},
		{"ES256 valid", sign(t, jwt.SigningMethodES256, "ec1", keys.ec, claims(nil)), 200},
		{"HS256 valid", sign(t, jwt.SigningMethodHS256, "", []byte(hsSecret), claims(nil)), 200},
		{"expired", sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsa, claims(func(c jwt.MapClaims) {
			c["exp"] = testT0.Add(-time.Minute).Unix()
		})), 401},
		{"no exp", sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsa, claims(func(c jwt.MapClaims) { delete(c, "exp") })), 401},
		{"not yet valid", sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsa, claims(func(c jwt.MapClaims) {
			c["nbf"] = testT0.Add(time.Hour).Unix()
		})), 401},
		{"wrong signature", sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsaOther, claims(nil)), 401},
		{"wrong issuer", sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsa, claims(func(c jwt.MapClaims) { c["iss"] = "https://evil" })), 401},
		{"wrong audience", sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsa, claims(func(c jwt.MapClaims) { c["aud"] = "other" })), 401},
		{"alg none", noneTok, 401},
		{"HS256 signed with the RSA public key (confusion)", sign(t, jwt.SigningMethodHS256, "rsa1", pubPEM, claims(nil)), 401},
		{"HS256 signed with the RSA modulus", sign(t, jwt.SigningMethodHS256, "rsa1", keys.rsa.N.Bytes(), claims(nil)), 401},
		{"unknown kid", sign(t, jwt.SigningMethodRS256, "nope", keys.rsa, claims(nil)), 401},
		{"HS512 not accepted", sign(t, jwt.SigningMethodHS512, "", []byte(hsSecret), claims(nil)), 401},
		{"no subject", sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsa, claims(func(c jwt.MapClaims) { delete(c, "sub") })), 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := g.do("GET", "/fhir/R4/Observation", "", bearer(tt.token)...)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			if tt.want == 200 && (rec.Header().Get("X-User") != "dr-who" || rec.Header().Get("X-Role") != "physician" ||
				rec.Header().Get("X-Scopes") != "user/*.rs openid" || rec.Header().Get("X-Patient") != "85" ||
				rec.Header().Get("X-Method") != "jwt") {
				t.Errorf("identity from claims: %v", rec.Header())
			}
			if tt.want == 401 && strings.Contains(rec.Body.String(), tt.token) {
				t.Errorf("the error echoes the token")
			}
		})
	}

	// A SMART fhirUser that is a Patient gives the patient when the
	// patient claim is absent.
	patientTok := sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsa, claims(func(c jwt.MapClaims) {
		delete(c, "patient")
		c["fhirUser"] = "https://fhir.example/fhir/Patient/355"
	}))
	if rec := g.do("GET", "/fhir/R4/Observation", "", bearer(patientTok)...); rec.Code != 200 || rec.Header().Get("X-Patient") != "355" {
		t.Errorf("fhirUser Patient: %d, X-Patient %q", rec.Code, rec.Header().Get("X-Patient"))
	}

	// Exchange a JWT for a server session.
	jwtTok := sign(t, jwt.SigningMethodES256, "ec1", keys.ec, claims(nil))
	rec := g.do("POST", "/auth/session", "", bearer(jwtTok)...)
	if rec.Code != 200 {
		t.Fatalf("exchange: %d %s", rec.Code, rec.Body)
	}
	var lr loginResponse
	json.Unmarshal(rec.Body.Bytes(), &lr)
	rec = g.do("GET", "/fhir/R4/Observation", "", bearer(lr.Token)...)
	if rec.Code != 200 || rec.Header().Get("X-User") != "dr-who" || rec.Header().Get("X-Method") != "session" {
		t.Errorf("exchanged session: %d %v", rec.Code, rec.Header())
	}
	if rec := g.do("POST", "/auth/session", "", bearer(sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsaOther, claims(nil)))...); rec.Code != 401 {
		t.Errorf("exchange of a bad JWT: %d", rec.Code)
	}
}

func TestJWTStatelessOffAndJWKSURL(t *testing.T) {
	keys := newJWTKeys(t)
	fetches := 0
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches++
		w.Header().Set("Content-Type", "application/json")
		w.Write(keys.jwks)
	}))
	defer jwks.Close()
	g := newGateway(t, "", usersFile(t), `
jwt:
  issuer: https://idp.example.org
  audience: omnigate
  jwks_url: `+jwks.URL+`
  stateless: false
  claims: {role: realm_access.roles}
`)
	tok := sign(t, jwt.SigningMethodRS256, "rsa1", keys.rsa, claims(func(c jwt.MapClaims) {
		c["realm_access"] = map[string]any{"roles": []any{"offline_access", "nurse"}}
	}))
	if rec := g.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 401 {
		t.Errorf("stateless off, but a JWT authenticated a request: %d", rec.Code)
	}
	rec := g.do("POST", "/auth/session", "", bearer(tok)...)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"role":"nurse"`) {
		t.Fatalf("exchange with a JWKS URL: %d %s", rec.Code, rec.Body)
	}
	if fetches == 0 {
		t.Error("JWKS URL never fetched")
	}
}

func TestJWTConfigErrors(t *testing.T) {
	for _, tt := range []struct{ yaml, want string }{
		{"jwt: {audience: a, hs256_secret: " + hsSecret + "}", "plugins.session.jwt.issuer: required"},
		{"jwt: {issuer: i, audience: a, hs256_secret: short}", "jwt.hs256_secret: must be at least 32 bytes"},
		{"jwt: {issuer: i, audience: a}", "jwt: no keys"},
		{"jwt: {issuer: i, audience: a, hs256_secret: " + hsSecret + ", algorithms: [none]}", `unsupported algorithm "none"`},
		{"jwt: {issuer: i, audience: a, hs256_secret: " + hsSecret + ", algorithms: [RS256]}", "RS256 needs jwks_file or jwks_url"},
	} {
		_, err := parseSessionConfig(tt.yaml)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.yaml, err, tt.want)
		}
	}
}

// TestSessionFromJWTEndsAtItsExp: a session exchanged from a JWT ends when
// the JWT expires, though its role allows 12 hours; a JWT already past its
// exp (accepted within the leeway) starts none.
func TestSessionFromJWTEndsAtItsExp(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			g := newGateway(t, be.url, usersFile(t), `
jwt:
  issuer: https://idp.example.org
  audience: omnigate
  hs256_secret: `+hsSecret+`
  leeway: 30s
`)
			tok := sign(t, jwt.SigningMethodHS256, "", []byte(hsSecret), claims(func(c jwt.MapClaims) {
				c["exp"] = testT0.Add(10 * time.Minute).Unix()
			}))
			rec := g.do("POST", "/auth/session", "", bearer(tok)...)
			if rec.Code != 200 {
				t.Fatalf("exchange: %d %s", rec.Code, rec.Body)
			}
			var lr loginResponse
			json.Unmarshal(rec.Body.Bytes(), &lr)
			if !lr.ExpiresAt.Equal(testT0.Add(10 * time.Minute)) {
				t.Errorf("session expires at %s, want the JWT's exp %s", lr.ExpiresAt, testT0.Add(10*time.Minute))
			}
			g.clock.Advance(9*time.Minute + 59*time.Second)
			if rec := g.do("GET", "/fhir/R4/Observation", "", bearer(lr.Token)...); rec.Code != 200 {
				t.Fatalf("before the JWT's exp: %d", rec.Code)
			}
			g.clock.Advance(time.Second)
			if rec := g.do("GET", "/fhir/R4/Observation", "", bearer(lr.Token)...); rec.Code != 401 {
				t.Fatalf("at the JWT's exp: %d, want 401", rec.Code)
			}
			// Expired 10 s ago: valid within the leeway, but no session.
			late := sign(t, jwt.SigningMethodHS256, "", []byte(hsSecret), claims(func(c jwt.MapClaims) {
				c["iat"] = testT0.Unix()
				c["exp"] = g.clock.Now().Add(-10 * time.Second).Unix()
			}))
			if rec := g.do("POST", "/auth/session", "", bearer(late)...); rec.Code != 401 {
				t.Fatalf("exchange of an expired JWT within the leeway: %d", rec.Code)
			}
		})
	}
}
