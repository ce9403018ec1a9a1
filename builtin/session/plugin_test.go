package session

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/omnigate/omnigate/gateway"
)

func TestMain(m *testing.M) {
	// whoami echoes the identity the session plugin established.
	gateway.RegisterPlugin("whoami", func() *struct{} { return &struct{}{} },
		func(context.Context, *struct{}, *gateway.Env) (gateway.Plugin, error) {
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if id := gateway.IdentityFrom(r.Context()); id != nil {
					w.Header().Set("X-User", id.UserID)
					w.Header().Set("X-Role", id.Role)
					w.Header().Set("X-Scopes", strings.Join(id.Scopes, " "))
					w.Header().Set("X-Patient", id.PatientID)
					w.Header().Set("X-Session", id.SessionID)
					w.Header().Set("X-Method", id.Method)
				} else {
					w.Header().Set("X-User", "anonymous")
				}
				next.ServeHTTP(w, r)
			}), nil
		})
	Console = io.Discard
	os.Exit(m.Run())
}

// usersFile writes a user directory with cheap hashes.
func usersFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users.yaml")
	for _, u := range []User{
		{Username: "alice", Role: "physician", Scopes: []string{"user/*.cruds"}},
		{Username: "nina", Role: "nurse", Scopes: []string{"user/*.rs"}},
		{Username: "pat", Role: "patient", Patient: "85", Scopes: []string{"patient/*.rs"}},
		{Username: "adam", Role: "admin"},
	} {
		if err := AddUser(path, u, u.Username+"-password", bcrypt.MinCost); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

var upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	io.WriteString(w, `{"resourceType":"Bundle"}`)
}))

type gw struct {
	t     testing.TB
	srv   *gateway.Server
	logs  *bytes.Buffer
	admin http.Handler
	clock *fakeClock
}

// newGateway builds a gateway with the session plugin configured by
// sessionYAML (indented under the plugin) on the given Redis URL ("" for
// none). The plugin's clock is a fake clock of its own, at testT0.
func newGateway(t testing.TB, redisURL, users, sessionYAML string) *gw {
	t.Helper()
	return newGatewayAt(t, newFakeClock(), redisURL, users, sessionYAML)
}

// newGatewayAt is newGateway on the given clock: instances of one test
// share one, as the machines of a fleet share the time.
func newGatewayAt(t testing.TB, clk *fakeClock, redisURL, users, sessionYAML string) *gw {
	t.Helper()
	redis := ""
	if redisURL != "" {
		redis = "redis:\n  url: " + redisURL + "\n  read_timeout: 1s\n  write_timeout: 1s\n  dial_timeout: 1s\n  reconnect_min: 20ms\n  reconnect_max: 200ms\n"
	}
	cfgText := redis + `
plugins:
  session:
    type: session
    users: {file: ` + users + `}
` + indent(sessionYAML, "    ") + `
  who: {type: whoami}
routes:
  - name: metadata
    path: /fhir/R4/metadata
    upstream: ` + upstream.URL + `
    fhir_errors: true
    plugins: [who]
  - name: fhir
    path: /fhir/R4/*path
    upstream: ` + upstream.URL + `
    fhir_errors: true
    plugins: [session, who]
`
	cfg, err := gateway.Parse("test.yaml", []byte(cfgText), nil)
	if err != nil {
		t.Fatalf("config: %v\n%s", err, cfgText)
	}
	for _, p := range cfg.Plugins {
		if c, ok := p.Config.(*Config); ok {
			c.now = clk.Now
		}
	}
	logs := &bytes.Buffer{}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return &gw{t: t, srv: srv, logs: logs, admin: srv.AdminHandler(), clock: clk}
}

func indent(s, pre string) string {
	if strings.TrimSpace(s) == "" {
		return ""
	}
	lines := strings.Split(strings.Trim(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = pre + l
	}
	return strings.Join(lines, "\n")
}

func (g *gw) do(method, path, body string, hdr ...string) *httptest.ResponseRecorder {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, "http://127.0.0.1:8080"+path, rd)
	req.RemoteAddr = "127.0.0.1:5555"
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	g.srv.ServeHTTP(rec, req)
	return rec
}

// login returns the token of a new session for user.
func (g *gw) login(user string, hdr ...string) string {
	g.t.Helper()
	rec := g.do("POST", "/auth/login", `{"username":"`+user+`","password":"`+user+`-password"}`, hdr...)
	if rec.Code != 200 {
		g.t.Fatalf("login %s: %d %s", user, rec.Code, rec.Body)
	}
	var out loginResponse
	json.Unmarshal(rec.Body.Bytes(), &out)
	return out.Token
}

func bearer(token string) []string { return []string{"Authorization", "Bearer " + token} }

func backends(t *testing.T) []struct{ name, url string } {
	return []struct{ name, url string }{{"memory", ""}, {"redis", startRedis(t)}}
}

func TestLoginRequestLogout(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			g := newGateway(t, be.url, usersFile(t), "")
			// No session: 401 OperationOutcome with a challenge.
			rec := g.do("GET", "/fhir/R4/Patient/85", "")
			if rec.Code != 401 || !strings.Contains(rec.Body.String(), `"code":"login"`) ||
				rec.Header().Get("WWW-Authenticate") != `Bearer realm="omnigate"` {
				t.Fatalf("anonymous request: %d %s %s", rec.Code, rec.Header(), rec.Body)
			}
			// Public route stays public.
			if rec := g.do("GET", "/fhir/R4/metadata", ""); rec.Code != 200 {
				t.Errorf("metadata: %d", rec.Code)
			}

			rec = g.do("POST", "/auth/login", `{"username":"pat","password":"pat-password"}`, "User-Agent", "phone/1.0")
			if rec.Code != 200 {
				t.Fatalf("login: %d %s", rec.Code, rec.Body)
			}
			var lr loginResponse
			json.Unmarshal(rec.Body.Bytes(), &lr)
			if !wellFormedToken(lr.Token) || lr.Role != "patient" || lr.Patient != "85" || lr.IdleTimeout != 1800 {
				t.Errorf("login response %+v", lr)
			}
			cookie := rec.Result().Cookies()[0]
			if cookie.Name != "omnigate_session" || cookie.Value != lr.Token || !cookie.HttpOnly ||
				cookie.SameSite != http.SameSiteLaxMode || cookie.Secure {
				t.Errorf("cookie %+v (loopback host: not Secure)", cookie)
			}
			if rec.Header().Get("Cache-Control") != "no-store" {
				t.Errorf("login response is cacheable")
			}

			// The bearer token and the cookie both authenticate.
			rec = g.do("GET", "/fhir/R4/Patient/85", "", bearer(lr.Token)...)
			if rec.Code != 200 || rec.Header().Get("X-User") != "pat" || rec.Header().Get("X-Role") != "patient" ||
				rec.Header().Get("X-Patient") != "85" || rec.Header().Get("X-Scopes") != "patient/*.rs" ||
				rec.Header().Get("X-Session") != lr.SessionID || rec.Header().Get("X-Method") != "session" {
				t.Fatalf("bearer request: %d %v", rec.Code, rec.Header())
			}
			rec = g.do("GET", "/fhir/R4/Patient/85", "", "Cookie", "omnigate_session="+lr.Token)
			if rec.Code != 200 || rec.Header().Get("X-User") != "pat" {
				t.Fatalf("cookie request: %d", rec.Code)
			}

			rec = g.do("GET", "/auth/session", "", bearer(lr.Token)...)
			var v sessionView
			json.Unmarshal(rec.Body.Bytes(), &v)
			if rec.Code != 200 || v.User != "pat" || !v.Current || v.UserAgent != "phone/1.0" || v.ClientIP != "127.0.0.1" ||
				!v.Expires.After(v.IdleExpires) {
				t.Errorf("whoami: %d %+v", rec.Code, v)
			}

			if rec := g.do("POST", "/auth/logout", "", bearer(lr.Token)...); rec.Code != 204 {
				t.Fatalf("logout: %d %s", rec.Code, rec.Body)
			}
			rec = g.do("GET", "/fhir/R4/Patient/85", "", bearer(lr.Token)...)
			if rec.Code != 401 || !strings.Contains(rec.Header().Get("WWW-Authenticate"), `error="invalid_token"`) {
				t.Errorf("after logout: %d %v", rec.Code, rec.Header())
			}
		})
	}
}

func TestWrongPasswordAndUnknownUserLookAlike(t *testing.T) {
	g := newGateway(t, "", usersFile(t), "")
	a := g.do("POST", "/auth/login", `{"username":"alice","password":"wrong-password"}`)
	b := g.do("POST", "/auth/login", `{"username":"mallory","password":"whatever-password"}`)
	if a.Code != 401 || b.Code != 401 || a.Body.String() != b.Body.String() {
		t.Errorf("wrong password %d %s vs unknown user %d %s", a.Code, a.Body, b.Code, b.Body)
	}
	for _, body := range []string{`{"username":"alice"}`, `not json`, ``} {
		if rec := g.do("POST", "/auth/login", body, "Content-Type", "application/json"); rec.Code != 400 {
			t.Errorf("login body %q: %d", body, rec.Code)
		}
	}
	// Form logins work too.
	rec := g.do("POST", "/auth/login", "username=alice&password=alice-password", "Content-Type", "application/x-www-form-urlencoded")
	if rec.Code != 200 {
		t.Errorf("form login: %d %s", rec.Code, rec.Body)
	}
}

func TestNewTokenAtEveryLogin(t *testing.T) {
	g := newGateway(t, "", usersFile(t), "")
	first := g.login("alice")
	second := g.login("alice", "Cookie", "omnigate_session="+first)
	if first == second {
		t.Fatal("login reused the token")
	}
	if rec := g.do("GET", "/fhir/R4/x", "", bearer(first)...); rec.Code != 401 {
		t.Errorf("the session the login request carried is still valid: %d", rec.Code)
	}
}

func TestRandomTokensRefused(t *testing.T) {
	g := newGateway(t, "", usersFile(t), "")
	g.login("alice")
	for i := 0; i < 50; i++ {
		tok, _ := newToken()
		if rec := g.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 401 {
			t.Fatalf("random token accepted: %d", rec.Code)
		}
	}
	for _, bad := range []string{"Basic YWxpY2U6cHc=", "Bearer", "Bearer a b", "Bearer short", "Bearer " + strings.Repeat("A", 44)} {
		if rec := g.do("GET", "/fhir/R4/x", "", "Authorization", bad); rec.Code != 401 {
			t.Errorf("Authorization %q: %d", bad, rec.Code)
		}
	}
	if rec := g.do("GET", "/fhir/R4/x", "", "Cookie", "omnigate_session=nope"); rec.Code != 401 {
		t.Errorf("bad cookie: %d", rec.Code)
	}
}

func TestRoleTimeouts(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			g := newGateway(t, be.url, usersFile(t), `
touch_interval: 1m
roles:
  nurse: {idle: 5m, absolute: 10h}
  physician: {idle: 1h, absolute: 10h}
  patient: {idle: 20m, absolute: 25m}
`)
			nurse, doc, patient := g.login("nina"), g.login("alice"), g.login("pat")
			g.clock.Advance(7 * time.Minute)
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(nurse)...); rec.Code != 401 {
				t.Errorf("nurse session survived its 5m idle timeout: %d", rec.Code)
			}
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(doc)...); rec.Code != 200 {
				t.Errorf("physician session ended early: %d", rec.Code)
			}
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(patient)...); rec.Code != 200 {
				t.Errorf("patient session ended early: %d", rec.Code)
			}
			// Active at 7m, so idle until 27m, but the absolute timeout is 25m.
			g.clock.Advance(18 * time.Minute)
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(patient)...); rec.Code != 401 {
				t.Errorf("patient session survived its 25m absolute timeout: %d", rec.Code)
			}
		})
	}
}

func TestDevicesListAndRevoke(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			g := newGateway(t, be.url, usersFile(t), "")
			phone := g.login("alice", "User-Agent", "phone")
			laptop := g.login("alice", "User-Agent", "laptop")
			tablet := g.login("alice", "User-Agent", "tablet")
			other := g.login("nina")

			rec := g.do("GET", "/auth/sessions", "", bearer(laptop)...)
			var list struct{ Sessions []sessionView }
			json.Unmarshal(rec.Body.Bytes(), &list)
			if rec.Code != 200 || len(list.Sessions) != 3 {
				t.Fatalf("list: %d %s", rec.Code, rec.Body)
			}
			var phoneID string
			for _, s := range list.Sessions {
				if s.UserAgent == "phone" {
					phoneID = s.ID
				}
				if s.Current != (s.UserAgent == "laptop") {
					t.Errorf("current flag wrong on %s", s.UserAgent)
				}
			}
			// Revoke the phone from the laptop.
			if rec := g.do("DELETE", "/auth/sessions/"+phoneID, "", bearer(laptop)...); rec.Code != 204 {
				t.Fatalf("revoke one: %d %s", rec.Code, rec.Body)
			}
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(phone)...); rec.Code != 401 {
				t.Errorf("revoked phone still works: %d", rec.Code)
			}
			// Nobody revokes another user's session.
			if rec := g.do("DELETE", "/auth/sessions/"+recordID(laptop), "", bearer(other)...); rec.Code != 404 {
				t.Errorf("revoking another user's session: %d", rec.Code)
			}
			// Log out everywhere except here.
			rec = g.do("DELETE", "/auth/sessions?keep=current", "", bearer(laptop)...)
			if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"revoked": 1`) {
				t.Fatalf("revoke all but current: %d %s", rec.Code, rec.Body)
			}
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(tablet)...); rec.Code != 401 {
				t.Errorf("tablet still works")
			}
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(laptop)...); rec.Code != 200 {
				t.Errorf("kept session ended")
			}
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(other)...); rec.Code != 200 {
				t.Errorf("another user's session ended")
			}
			// Admin: stats and revoke a user everywhere.
			rec = httptest.NewRecorder()
			g.admin.ServeHTTP(rec, httptest.NewRequest("GET", "/admin/sessions/stats", nil))
			if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"physician": 1`) || !strings.Contains(rec.Body.String(), `"nurse": 1`) {
				t.Errorf("stats: %d %s", rec.Code, rec.Body)
			}
			rec = httptest.NewRecorder()
			g.admin.ServeHTTP(rec, httptest.NewRequest("DELETE", "/admin/users/alice/sessions", nil))
			if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"revoked": 1`) {
				t.Errorf("admin revoke: %d %s", rec.Code, rec.Body)
			}
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(laptop)...); rec.Code != 401 {
				t.Errorf("admin revoke did not end the session")
			}
		})
	}
}

func TestMaxSessionsEvictsOldest(t *testing.T) {
	g := newGateway(t, "", usersFile(t), "roles:\n  admin: {idle: 1m, absolute: 1h, max_sessions: 2}\n")
	a, b := g.login("adam"), g.login("adam")
	c := g.login("adam")
	if rec := g.do("GET", "/fhir/R4/x", "", bearer(a)...); rec.Code != 401 {
		t.Errorf("oldest session not evicted: %d", rec.Code)
	}
	for _, tok := range []string{b, c} {
		if rec := g.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
			t.Errorf("newer session evicted: %d", rec.Code)
		}
	}
}

func TestCSRF(t *testing.T) {
	g := newGateway(t, "", usersFile(t), "csrf: {trusted_origins: [\"https://app.example.org\"]}")
	tok := g.login("alice")
	cookie := []string{"Cookie", "omnigate_session=" + tok}
	tests := []struct {
		name   string
		method string
		hdr    []string
		want   int
	}{
		{"cookie GET", "GET", cookie, 200},
		{"cookie POST bare", "POST", cookie, 403},
		{"cookie POST custom header", "POST", append(cookie, "X-Requested-With", "fetch"), 200},
		{"cookie POST same origin", "POST", append(cookie, "Origin", "http://127.0.0.1:8080"), 200},
		{"cookie POST trusted origin", "POST", append(cookie, "Origin", "https://app.example.org"), 200},
		{"cookie DELETE foreign origin", "DELETE", append(cookie, "Origin", "https://evil.example"), 403},
		{"cookie PUT same-origin referer", "PUT", append(cookie, "Referer", "http://127.0.0.1:8080/app/page"), 200},
		{"cookie PATCH foreign referer", "PATCH", append(cookie, "Referer", "https://evil.example/x"), 403},
		{"bearer POST", "POST", bearer(tok), 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if rec := g.do(tt.method, "/fhir/R4/Patient", "{}", tt.hdr...); rec.Code != tt.want {
				t.Errorf("%d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
		})
	}
	// Logout by cookie needs the check too.
	if rec := g.do("POST", "/auth/logout", "", cookie...); rec.Code != 403 {
		t.Errorf("cross-site logout: %d", rec.Code)
	}
}

func TestLoginThrottle(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			g := newGateway(t, be.url, usersFile(t), "login_throttle:\n  per_user: {limit: 3, window: 1m}\n  per_ip: {limit: 5, window: 1m}\n")
			for i := 0; i < 3; i++ {
				if rec := g.do("POST", "/auth/login", `{"username":"alice","password":"bad-password"}`); rec.Code != 401 {
					t.Fatalf("failure %d: %d", i, rec.Code)
				}
			}
			// The right password is refused now, without being checked.
			rec := g.do("POST", "/auth/login", `{"username":"alice","password":"alice-password"}`)
			if rec.Code != 429 || rec.Header().Get("Retry-After") == "" {
				t.Fatalf("after 3 failures: %d %v", rec.Code, rec.Header())
			}
			// Another user from the same IP: 2 more failures reach the IP limit.
			for i := 0; i < 2; i++ {
				g.do("POST", "/auth/login", `{"username":"nina","password":"bad-password"}`)
			}
			if rec := g.do("POST", "/auth/login", `{"username":"pat","password":"pat-password"}`); rec.Code != 429 {
				t.Errorf("IP limit: %d", rec.Code)
			}
		})
	}
}

func TestAnonymousInstance(t *testing.T) {
	g := newGateway(t, "", usersFile(t), "anonymous: true")
	rec := g.do("GET", "/fhir/R4/x", "")
	if rec.Code != 200 || rec.Header().Get("X-User") != "anonymous" {
		t.Errorf("anonymous: %d %s", rec.Code, rec.Header().Get("X-User"))
	}
	tok := g.login("nina")
	if rec := g.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Header().Get("X-User") != "nina" {
		t.Errorf("identified on an anonymous-allowed route: %s", rec.Header().Get("X-User"))
	}
}

func TestPreflightPassesWithoutSession(t *testing.T) {
	g := newGateway(t, "", usersFile(t), "")
	if rec := g.do("OPTIONS", "/fhir/R4/Patient", "", "Origin", "https://app.example.org", "Access-Control-Request-Method", "POST"); rec.Code != 200 {
		t.Errorf("preflight: %d", rec.Code)
	}
	if rec := g.do("OPTIONS", "/fhir/R4/Patient", ""); rec.Code != 401 {
		t.Errorf("plain OPTIONS without session: %d", rec.Code)
	}
}

func TestFirstRunCreatesUsers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "users.yaml")
	var console bytes.Buffer
	Console = &console
	defer func() { Console = io.Discard }()
	g := newGateway(t, "", path, "")
	out := console.String()
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("users file: %v %v", err, st)
	}
	for _, role := range []string{"physician", "nurse", "admin", "patient"} {
		var pass string
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == role {
				pass = f[1]
			}
		}
		if len(pass) < 20 {
			t.Fatalf("no password printed for %s:\n%s", role, out)
		}
		rec := g.do("POST", "/auth/login", fmt.Sprintf(`{"username":%q,"password":%q}`, role, pass))
		if rec.Code != 200 {
			t.Errorf("first-run user %s cannot log in: %d", role, rec.Code)
		}
		data, _ := os.ReadFile(path)
		if strings.Contains(string(data), pass) {
			t.Errorf("the file holds a plain password")
		}
	}
	// Nobody gets scopes of their own: the roles decide (the admin has
	// no access to patient data unless granted).
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), "scopes") || !strings.Contains(string(data), "patient: example") {
		t.Errorf("first-run users file:\n%s", data)
	}
	// A second start prints no password, but says where the directory is
	// and how to set a new password.
	console.Reset()
	newGateway(t, "", path, "")
	second := console.String()
	if !strings.Contains(second, "uses the user directory "+path) || !strings.Contains(second, "omnigate user add -file "+path+" -username NAME") {
		t.Errorf("second start says:\n%s", second)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.Contains(second, f[1]) {
			t.Errorf("password printed twice: %s", second)
		}
	}
}
