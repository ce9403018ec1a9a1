package session

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/omnigate/omnigate/gateway"
)

// recorder is an upstream that records the headers of what it receives.
type recorder struct {
	mu   sync.Mutex
	last http.Header
	srv  *httptest.Server
}

func newRecorder(t *testing.T) *recorder {
	rc := &recorder{}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc.mu.Lock()
		rc.last = r.Header.Clone()
		rc.mu.Unlock()
		w.Write([]byte(`{}`))
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *recorder) got() http.Header {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.last
}

const identityKey = "an-identity-key-of-at-least-32-bytes!!"

// TestGatewayCredentialsNeverReachUpstreams: the session cookie and a
// session bearer token (or a JWT the gateway accepts) are removed from
// what upstreams receive, other cookies and Authorization values pass;
// the route that lists identity gets the identity signed, the other
// nothing, and a client cannot forge the identity header.
func TestGatewayCredentialsNeverReachUpstreams(t *testing.T) {
	plain, withID := newRecorder(t), newRecorder(t)
	keyFile := filepath.Join(t.TempDir(), "identity.key")
	os.WriteFile(keyFile, []byte(identityKey+"\n"), 0o600)
	cfgText := `
plugins:
  session:
    type: session
    users: {file: ` + usersFile(t) + `}
    jwt: {issuer: https://idp.example.org, audience: omnigate, hs256_secret: ` + hsSecret + `}
routes:
  - name: plain
    path: /plain/*rest
    upstream: ` + plain.srv.URL + `
    plugins: [session]
  - name: reports
    path: /reports/*rest
    plugins: [session]
    upstream:
      url: ` + withID.srv.URL + `
      identity: {key_file: ` + keyFile + `, ttl: 30s}
  - name: open
    path: /open/*rest
    upstream: ` + plain.srv.URL + `
`
	cfg, err := gateway.Parse("test.yaml", []byte(cfgText), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range cfg.Plugins {
		if c, ok := p.Config.(*Config); ok {
			c.now = newFakeClock().Now
		}
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	g := &gw{t: t, srv: srv, admin: srv.AdminHandler()}
	tok := g.login("pat")
	jwtTok := sign(t, jwt.SigningMethodHS256, "", []byte(hsSecret), claims(nil))

	cases := []struct {
		name, path string
		hdr        []string
		up         *recorder
		wantAuth   string
		wantCookie string
	}{
		{"bearer session token", "/plain/x", bearer(tok), plain, "", ""},
		{"session cookie among others", "/plain/x", []string{"Cookie", "theme=dark; omnigate_session=" + tok + "; lang=en"}, plain, "", "theme=dark; lang=en"},
		{"session cookie alone", "/plain/x", []string{"Cookie", "omnigate_session=" + tok}, plain, "", ""},
		{"accepted JWT", "/plain/x", bearer(jwtTok), plain, "", ""},
		{"route without a session plugin", "/open/x", []string{"Authorization", "Bearer " + tok, "Cookie", "omnigate_session=" + tok + "; a=b"}, plain, "", "a=b"},
		{"upstream's own credential", "/open/x", []string{"Authorization", "Basic dXNlcjpwYXNz"}, plain, "Basic dXNlcjpwYXNz", ""},
		{"forged identity header", "/plain/x", append(bearer(tok), gateway.DefaultIdentityHeader, "forged"), plain, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if rec := g.do("GET", c.path, "", c.hdr...); rec.Code != 200 {
				t.Fatalf("%d %s", rec.Code, rec.Body)
			}
			h := c.up.got()
			if got := h.Get("Authorization"); got != c.wantAuth {
				t.Errorf("upstream got Authorization %q, want %q", got, c.wantAuth)
			}
			if got := h.Get("Cookie"); got != c.wantCookie {
				t.Errorf("upstream got Cookie %q, want %q", got, c.wantCookie)
			}
			if got := h.Get(gateway.DefaultIdentityHeader); got != "" {
				t.Errorf("upstream without identity got %s: %q", gateway.DefaultIdentityHeader, got)
			}
		})
	}

	t.Run("signed identity", func(t *testing.T) {
		before := time.Now()
		if rec := g.do("GET", "/reports/x", "", append(bearer(tok), gateway.DefaultIdentityHeader, "forged")...); rec.Code != 200 {
			t.Fatalf("%d", rec.Code)
		}
		h := withID.got()
		if h.Get("Authorization") != "" {
			t.Errorf("the token reached the identity upstream")
		}
		v := h.Get(gateway.DefaultIdentityHeader)
		id, err := gateway.VerifyIdentity(v, []byte(identityKey), "reports", time.Now())
		if err != nil {
			t.Fatalf("verify %q: %v", v, err)
		}
		if id.UserID != "pat" || id.Role != "patient" || id.PatientID != "85" || len(id.Scopes) != 1 || id.Scopes[0] != "patient/*.rs" {
			t.Errorf("identity %+v", id)
		}
		if _, err := gateway.VerifyIdentity(v, []byte(identityKey), "reports", before.Add(31*time.Second)); err == nil {
			t.Errorf("the signed identity is valid past its 30s")
		}
		if _, err := gateway.VerifyIdentity(v, []byte(identityKey+"x"), "reports", time.Now()); err == nil {
			t.Errorf("verified with another key")
		}
		if _, err := gateway.VerifyIdentity(v, []byte(identityKey), "plain", time.Now()); err == nil {
			t.Errorf("verified for another audience")
		}
		// A signed identity replayed by a client is removed: on the open
		// route the request is anonymous and gets none.
		g.do("GET", "/open/x", "", gateway.DefaultIdentityHeader, v)
		if plain.got().Get(gateway.DefaultIdentityHeader) != "" {
			t.Errorf("a replayed identity header passed on another route")
		}
	})
}
