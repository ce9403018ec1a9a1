package gateway

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Credential describes what a client presents to authenticate to the
// gateway itself (a session token in a cookie or an Authorization header).
// The upstream proxy never forwards one: a compromised or curious upstream
// must not be able to replay it against the gateway. Authenticating
// plugins declare theirs with Env.GatewayCredential.
type Credential struct {
	// Cookie is the name of a cookie that carries the credential; it is
	// removed from the Cookie header, other cookies are kept.
	Cookie string
	// Authorization reports whether an Authorization header value carries
	// the credential; such a header is removed. Nil: none does.
	Authorization func(value string) bool
}

// GatewayCredential declares a credential of the gateway's own, which the
// upstream proxy removes from every request it forwards, on every route of
// this config load (a browser sends its cookies to every path).
func (e *Env) GatewayCredential(c Credential) {
	e.rt.credentials = append(e.rt.credentials, c)
}

// DefaultIdentityHeader is the request header that carries the signed
// identity to upstreams (UpstreamConfig.Identity).
const DefaultIdentityHeader = "X-Omnigate-Identity"

// IdentityHeaderConfig sends the caller's identity to an upstream that
// needs it, instead of the gateway credential (which is never forwarded):
// a compact JWS (HS256, HMAC-SHA256 with Key) whose claims are iss
// "omnigate", aud, sub (user), role, scope (space-separated), patient,
// fhirUser, amr (how the identity was established), iat, exp and jti (the
// request id). The upstream checks the signature, iss, aud and exp with any
// JWT library, or with VerifyIdentity. Anonymous requests get no header.
// A header of that name sent by the client is always removed.
type IdentityHeaderConfig struct {
	// Header is the request header. Default "X-Omnigate-Identity".
	Header string `yaml:"header"`
	// KeyFile holds the HMAC key (trailing whitespace trimmed), at least
	// 32 bytes. Exactly one of KeyFile and Key is required.
	KeyFile string `yaml:"key_file"`
	// Key is the HMAC key itself, at least 32 bytes. Prefer KeyFile.
	Key string `yaml:"key"`
	// TTL is how long a signed identity is valid after it is made.
	// Default 1m.
	TTL time.Duration `yaml:"ttl"`
	// Audience is the aud claim. Default: the route's name.
	Audience string `yaml:"audience"`

	key []byte
}

// identityClaims are the claims of a signed identity.
type identityClaims struct {
	Issuer   string `json:"iss"`
	Audience string `json:"aud"`
	Subject  string `json:"sub"`
	Role     string `json:"role,omitempty"`
	Scope    string `json:"scope,omitempty"`
	Patient  string `json:"patient,omitempty"`
	FHIRUser string `json:"fhirUser,omitempty"`
	Method   string `json:"amr,omitempty"`
	IssuedAt int64  `json:"iat"`
	Expires  int64  `json:"exp"`
	ID       string `json:"jti,omitempty"`
}

// identityIssuer is the iss claim of signed identities.
const identityIssuer = "omnigate"

var jwsHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// SignIdentity returns id as a signed identity (see IdentityHeaderConfig)
// for audience aud, valid from now for ttl, with request id jti.
func SignIdentity(id *Identity, key []byte, aud, jti string, now time.Time, ttl time.Duration) string {
	c := identityClaims{Issuer: identityIssuer, Audience: aud, Subject: id.UserID, Role: id.Role,
		Scope: strings.Join(id.Scopes, " "), Patient: id.PatientID, FHIRUser: id.FHIRUser, Method: id.Method,
		IssuedAt: now.Unix(), Expires: now.Add(ttl).Unix(), ID: jti}
	body, _ := json.Marshal(c)
	signed := jwsHeader + "." + base64.RawURLEncoding.EncodeToString(body)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(signed))
	return signed + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// VerifyIdentity checks a signed identity made by an upstream route with
// key and audience aud, at time now, and returns the identity it carries
// (SessionID is never sent). For upstreams written in Go, and tests.
func VerifyIdentity(value string, key []byte, aud string, now time.Time) (*Identity, error) {
	parts := strings.Split(value, ".")
	if len(parts) != 3 || parts[0] != jwsHeader {
		return nil, errors.New("verify identity: not an HS256 compact JWS")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, errors.New("verify identity: bad signature encoding")
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(parts[0] + "." + parts[1]))
	if !hmac.Equal(sig, m.Sum(nil)) {
		return nil, errors.New("verify identity: bad signature")
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, errors.New("verify identity: bad claims encoding")
	}
	var c identityClaims
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("verify identity: %w", err)
	}
	switch {
	case c.Issuer != identityIssuer:
		return nil, errors.New("verify identity: wrong issuer")
	case c.Audience != aud:
		return nil, errors.New("verify identity: wrong audience")
	case now.Unix() >= c.Expires:
		return nil, errors.New("verify identity: expired")
	case c.Subject == "":
		return nil, errors.New("verify identity: no subject")
	}
	id := &Identity{UserID: c.Subject, Role: c.Role, PatientID: c.Patient, FHIRUser: c.FHIRUser, Method: c.Method}
	if c.Scope != "" {
		id.Scopes = strings.Fields(c.Scope)
	}
	return id, nil
}

// stripCredentials removes the gateway credentials in creds from h, and
// any identity header named in identityHeaders.
func stripCredentials(h http.Header, creds []Credential, identityHeaders ...string) {
	for _, name := range identityHeaders {
		h.Del(name)
	}
	if len(creds) == 0 {
		return
	}
	if auth := h.Values("Authorization"); len(auth) > 0 {
		for _, c := range creds {
			if c.Authorization != nil && slicesAny(auth, c.Authorization) {
				h.Del("Authorization")
				break
			}
		}
	}
	lines := h.Values("Cookie")
	if len(lines) == 0 {
		return
	}
	var kept []string
	changed := false
	for _, line := range lines {
		for _, part := range strings.Split(line, ";") {
			name, _, _ := strings.Cut(part, "=")
			if credentialCookie(strings.TrimSpace(name), creds) {
				changed = true
				continue
			}
			if p := strings.TrimSpace(part); p != "" {
				kept = append(kept, p)
			}
		}
	}
	if !changed {
		return
	}
	if len(kept) == 0 {
		h.Del("Cookie")
		return
	}
	h.Set("Cookie", strings.Join(kept, "; "))
}

func credentialCookie(name string, creds []Credential) bool {
	for _, c := range creds {
		if c.Cookie != "" && name == c.Cookie {
			return true
		}
	}
	return false
}

func slicesAny(vs []string, f func(string) bool) bool {
	for _, v := range vs {
		if f(v) {
			return true
		}
	}
	return false
}
