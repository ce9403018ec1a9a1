package session

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strings"
)

// tokenBytes is the entropy of a session token: 256 bits.
const tokenBytes = 32

// newToken returns a fresh session token (256 bits from crypto/rand,
// base64url without padding) and its record id.
func newToken() (token, id string) {
	var b [tokenBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("session: crypto/rand failed: " + err.Error()) // never happens on supported platforms
	}
	token = base64.RawURLEncoding.EncodeToString(b[:])
	return token, recordID(token)
}

// recordID is the key a session is stored under: the SHA-256 of its token,
// so a dump of the store holds no usable token.
func recordID(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// tokenLen is the length of an encoded token.
var tokenLen = base64.RawURLEncoding.EncodedLen(tokenBytes)

// wellFormedToken reports whether s can be a session token, so that random
// strings are refused without a store lookup.
func wellFormedToken(s string) bool {
	if len(s) != tokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// credential is what a request presents.
type credential struct {
	// value is the session token or the JWT.
	value string
	// fromCookie is true when it came from the session cookie (CSRF
	// checks apply), false for an Authorization header.
	fromCookie bool
	// jwt is true when value has the shape of a JWT (three dot-separated
	// base64url parts).
	jwt bool
}

// readCredential takes the credential from "Authorization: Bearer" first,
// then from the cookie named cookieName. malformed is true when a
// credential is present but cannot be valid (a non-Bearer scheme, a bad
// token shape), so the caller answers 401 even on routes that allow
// anonymous access.
func readCredential(r *http.Request, cookieName string) (c credential, present, malformed bool) {
	if auth := r.Header.Values("Authorization"); len(auth) > 0 {
		if len(auth) > 1 {
			return credential{}, true, true
		}
		v, ok := parseBearer(auth[0])
		if !ok {
			return credential{}, true, true
		}
		c = credential{value: v, jwt: looksLikeJWT(v)}
		return c, true, !c.jwt && !wellFormedToken(v)
	}
	for _, ck := range r.Cookies() {
		if ck.Name != cookieName {
			continue
		}
		if !wellFormedToken(ck.Value) {
			return credential{}, true, true
		}
		return credential{value: ck.Value, fromCookie: true}, true, false
	}
	return credential{}, false, false
}

// parseBearer returns the token of an "Authorization: Bearer <token>"
// value (the scheme is case-insensitive, RFC 6750 token68 syntax).
func parseBearer(h string) (string, bool) {
	scheme, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok := strings.TrimSpace(rest)
	if tok == "" || len(tok) > 16<<10 {
		return "", false
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' || c == '=') {
			return "", false
		}
	}
	return tok, true
}

// looksLikeJWT reports whether s has the compact JWS shape a.b.c.
func looksLikeJWT(s string) bool {
	return strings.Count(s, ".") == 2 && !strings.HasPrefix(s, ".")
}
