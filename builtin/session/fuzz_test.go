package session

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzReadCredential feeds arbitrary Authorization and Cookie headers to
// the credential parser: it must not panic, must only return values it
// can vouch for, and a well-formed session token must never be reported
// as malformed.
func FuzzReadCredential(f *testing.F) {
	tok, _ := newToken()
	for _, seed := range [][2]string{
		{"Bearer " + tok, ""},
		{"bearer " + tok, ""},
		{"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", ""},
		{"", "omnigate_session=" + tok},
		{"", "a=b; omnigate_session=" + tok + "; c=d"},
		{"Basic YWxhZGRpbjpvcGVuc2VzYW1l", ""},
		{"Bearer", ""},
		{"Bearer  x y", ""},
		{"", "omnigate_session=\"quoted\""},
		{"", "omnigate_session="},
		{"Bearer ..", ""},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, auth, cookie string) {
		r := &http.Request{Header: http.Header{}}
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		if cookie != "" {
			r.Header.Set("Cookie", cookie)
		}
		c, present, malformed := readCredential(r, "omnigate_session")
		if !present && (malformed || c.value != "") {
			t.Fatalf("absent credential reported with value %q malformed=%v", c.value, malformed)
		}
		if present && !malformed {
			switch {
			case c.jwt:
				if strings.Count(c.value, ".") != 2 {
					t.Fatalf("JWT %q without two dots", c.value)
				}
			case !wellFormedToken(c.value):
				t.Fatalf("accepted a malformed session token %q", c.value)
			}
			if c.fromCookie == (auth != "") {
				t.Fatalf("fromCookie=%v with Authorization %q", c.fromCookie, auth)
			}
		}
		if strings.ContainsAny(c.value, " \t\r\n;,\"") {
			t.Fatalf("credential %q holds separators", c.value)
		}
		if v, ok := parseBearer(auth); ok && (v == "" || len(v) > 16<<10) {
			t.Fatalf("parseBearer(%q) = %q", auth, v)
		}
	})
}

func TestTokens(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		tok, id := newToken()
		if !wellFormedToken(tok) || len(tok) != 43 || seen[tok] {
			t.Fatalf("token %q", tok)
		}
		if id != recordID(tok) || len(id) != 64 || strings.Contains(id, tok) {
			t.Fatalf("id %q", id)
		}
		seen[tok] = true
	}
}
