package gateway

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway/console"
)

const consoleYAML = `
admin:
  listen: 127.0.0.1:0
  token: admin-secret-of-at-least-32-bytes-x
plugins:
  p1: {type: recorder, label: p1}
  p2: {type: recorder, label: p2, deny: 429}
  held: {type: held-close, label: console}
routes:
  - name: api
    fhir: true
    plugins: [p1, held]
  - name: limited
    path: /limited
    methods: [GET]
    plugins: [p1, p2]
    fhir: true
`

// The console's page and files are served without the token; its data,
// the series and everything else are not.
func TestConsoleTokenRules(t *testing.T) {
	openCloseGate("console")
	srv, _ := newTestServer(t, consoleYAML)
	admin := srv.AdminHandler()
	for _, path := range []string{"/ui/", "/ui/app.js", "/ui/app.css", "/ui/favicon.svg", "/ui/auth"} {
		if rec := do(admin, "GET", path, nil); rec.Code != 200 {
			t.Errorf("GET %s without the token: %d, want 200", path, rec.Code)
		}
	}
	if rec := do(admin, "GET", "/ui", nil); rec.Code != http.StatusMovedPermanently || rec.Header().Get("Location") != "/ui/" {
		t.Errorf("GET /ui: %d %q", rec.Code, rec.Header().Get("Location"))
	}
	if rec := do(admin, "GET", "/ui/auth", nil); !strings.Contains(rec.Body.String(), `"token_required":true`) {
		t.Errorf("/ui/auth: %s", rec.Body)
	}
	for _, path := range []string{"/ui/api/overview", "/ui/api/plugins", "/ui/api/nope", "/ui/nope.js", "/ui/../ping",
		"/admin/metrics/series", "/admin/metrics/series?minutes=1", "/admin/held"} {
		if rec := do(admin, "GET", path, nil); rec.Code != 401 {
			t.Errorf("GET %s without the token: %d, want 401", path, rec.Code)
		}
		if rec := do(admin, "GET", path, nil, "Authorization", "Bearer wrong"); rec.Code != 401 {
			t.Errorf("GET %s with a wrong token: %d, want 401", path, rec.Code)
		}
	}
	for path, want := range map[string]int{"/ui/api/overview": 200, "/ui/api/plugins": 200, "/ui/api/nope": 404,
		"/ui/nope.js": 404, "/admin/metrics/series": 200} {
		if rec := do(admin, "GET", path, nil, "Authorization", "Bearer admin-secret-of-at-least-32-bytes-x"); rec.Code != want {
			t.Errorf("GET %s with the token: %d, want %d", path, rec.Code, want)
		}
	}
	// The console answers reads only.
	if rec := do(admin, "POST", "/ui/api/overview", nil, "Authorization", "Bearer admin-secret-of-at-least-32-bytes-x"); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /ui/api/overview: %d", rec.Code)
	}
	rec := do(admin, "GET", "/ui/", nil)
	if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("CSP of the page: %q", csp)
	}
}

// Without a token (a loopback admin listener), the data needs none, and
// the page is told so.
func TestConsoleWithoutToken(t *testing.T) {
	srv, _ := newTestServer(t, "routes:\n  - fhir: true\n")
	admin := srv.AdminHandler()
	if rec := do(admin, "GET", "/ui/auth", nil); !strings.Contains(rec.Body.String(), `"token_required":false`) {
		t.Errorf("/ui/auth: %s", rec.Body)
	}
	if rec := do(admin, "GET", "/ui/api/overview", nil); rec.Code != 200 {
		t.Errorf("overview without a token configured: %d", rec.Code)
	}
}

// The overview lists the routes with their chains, the plugins and the
// admin endpoints they mounted.
func TestConsoleOverview(t *testing.T) {
	openCloseGate("console")
	srv, _ := newTestServer(t, consoleYAML)
	rec := do(srv.AdminHandler(), "GET", "/ui/api/overview", nil, "Authorization", "Bearer admin-secret-of-at-least-32-bytes-x")
	var ov console.Overview
	if err := json.Unmarshal(rec.Body.Bytes(), &ov); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	if len(ov.Routes) != 2 || ov.Routes[0].Name != "api" || ov.Routes[0].Terminal != "fhir" ||
		strings.Join(ov.Routes[0].Plugins, ",") != "p1,held" || ov.Routes[1].Path != "/limited" ||
		strings.Join(ov.Routes[1].Methods, ",") != "GET" || strings.Join(ov.Routes[1].Plugins, ",") != "p1,p2" {
		t.Errorf("routes: %+v", ov.Routes)
	}
	if len(ov.Plugins) != 3 || ov.Plugins[0] != (console.Plugin{Name: "p1", Type: "recorder"}) {
		t.Errorf("plugins: %+v", ov.Plugins)
	}
	if strings.Join(ov.Endpoints, ",") != "GET /admin/held" || !ov.TokenRequired || ov.SampleSeconds != 1 {
		t.Errorf("overview: %+v", ov)
	}
}

// GET /admin/metrics/series answers the samples the ring holds: the
// requests served between two samples, by status class, with 429s.
func TestMetricsSeries(t *testing.T) {
	openCloseGate("console")
	srv, _ := newTestServer(t, consoleYAML)
	t0 := time.Now().Add(-2 * time.Second)
	if err := srv.sampler.Sample(t0); err != nil {
		t.Fatal(err)
	}
	for range 6 {
		do(srv, "GET", "/fhir/R4/Patient/1", nil)
	}
	for range 2 {
		do(srv, "GET", "/limited", nil)
	}
	if err := srv.sampler.Sample(t0.Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	rec := do(srv.AdminHandler(), "GET", "/admin/metrics/series?minutes=1", nil, "Authorization", "Bearer admin-secret-of-at-least-32-bytes-x")
	var out struct {
		Interval float64          `json:"interval_seconds"`
		Samples  []console.Sample `json:"samples"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	if out.Interval != 1 || len(out.Samples) != 1 {
		t.Fatalf("series: %s", rec.Body)
	}
	s := out.Samples[0]
	if s.RPS != 4 || s.Status["2xx"] != 3 || s.Status["4xx"] != 1 || s.Limited != 1 ||
		s.Routes["api"] != 3 || s.Routes["limited"] != 1 || s.P50 == nil || s.P99 == nil || s.HitRatio != nil {
		t.Errorf("sample: %+v", s)
	}
	if rec := do(srv.AdminHandler(), "GET", "/admin/metrics/series?minutes=-1", nil, "Authorization", "Bearer admin-secret-of-at-least-32-bytes-x"); rec.Code != 400 {
		t.Errorf("minutes=-1: %d", rec.Code)
	}
}

// Requests that may change state are logged with the client and the
// token's fingerprint, refused ones too; reads are not; the token never
// is.
func TestAdminActionsLogged(t *testing.T) {
	openCloseGate("console")
	srv, logs := newTestServer(t, consoleYAML)
	admin := srv.AdminHandler()
	req := func(method, path, token string) {
		r, _ := http.NewRequest(method, path, nil)
		r.RemoteAddr = "192.0.2.7:5555"
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		admin.ServeHTTP(httptest.NewRecorder(), r)
	}
	req("DELETE", "/admin/held", "admin-secret-of-at-least-32-bytes-x")
	req("POST", "/admin/held", "not-the-token")
	req("GET", "/admin/held", "admin-secret-of-at-least-32-bytes-x")
	req("PUT", "/admin/nothing", "")
	cross := func(origin string) int {
		r := httptest.NewRequest("DELETE", "http://127.0.0.1:9090/admin/held", nil)
		r.RemoteAddr = "192.0.2.7:5555"
		r.Header.Set("Authorization", "Bearer admin-secret-of-at-least-32-bytes-x")
		r.Header.Set("Origin", origin)
		rec := httptest.NewRecorder()
		admin.ServeHTTP(rec, r)
		return rec.Code
	}
	if code := cross("https://evil.example"); code != http.StatusForbidden {
		t.Errorf("an action from another origin: %d, want 403", code)
	}
	if code := cross("http://127.0.0.1:9090"); code != http.StatusMethodNotAllowed {
		t.Errorf("an action from the console's own origin: %d, want it served (405 here)", code)
	}

	type line struct {
		Msg, Method, Path, Token string
		Status                   int
		ClientIP                 string `json:"client_ip"`
	}
	var got []line
	for _, l := range strings.Split(logs.String(), "\n") {
		var x line
		if json.Unmarshal([]byte(l), &x) == nil && x.Msg == "admin action" {
			got = append(got, x)
		}
	}
	want := []line{
		{"admin action", "DELETE", "/admin/held", TokenFingerprintOf("admin-secret-of-at-least-32-bytes-x"), 405, "192.0.2.7"},
		{"admin action", "POST", "/admin/held", TokenFingerprintOf("not-the-token"), 401, "192.0.2.7"},
		{"admin action", "PUT", "/admin/nothing", "none", 401, "192.0.2.7"},
		{"admin action", "DELETE", "/admin/held", TokenFingerprintOf("admin-secret-of-at-least-32-bytes-x"), 403, "192.0.2.7"},
		{"admin action", "DELETE", "/admin/held", TokenFingerprintOf("admin-secret-of-at-least-32-bytes-x"), 405, "192.0.2.7"},
	}
	if len(got) != len(want) {
		t.Fatalf("admin actions logged: %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("action %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if strings.Contains(logs.String(), "admin-secret-of-at-least-32-bytes-x") || strings.Contains(logs.String(), "not-the-token") {
		t.Error("a token is in the log")
	}
	if fp := TokenFingerprintOf("admin-secret-of-at-least-32-bytes-x"); !strings.HasPrefix(fp, "sha256:") || len(fp) != len("sha256:")+12 {
		t.Errorf("fingerprint %q", fp)
	}
}

// openCloseGate registers a held-close gate that does not hold Close.
func openCloseGate(label string) {
	g := newCloseGate()
	close(g.release)
	closeGates.Store(label, g)
}
