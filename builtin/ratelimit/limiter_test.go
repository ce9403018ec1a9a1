package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

// testIdentity puts the identity named by X-Test-User and X-Test-Role on
// the request, standing in for the session plugin.
type testIdentityConfig struct{}

func init() {
	gateway.RegisterPlugin("test-identity", func() *testIdentityConfig { return &testIdentityConfig{} },
		func(ctx context.Context, _ *testIdentityConfig, env *gateway.Env) (gateway.Plugin, error) {
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if u := r.Header.Get("X-Test-User"); u != "" {
					r = r.WithContext(gateway.SetIdentity(r.Context(), &gateway.Identity{UserID: u, Role: r.Header.Get("X-Test-Role")}))
				}
				next.ServeHTTP(w, r)
			}), nil
		})
}

// upstream is the terminal of test routes.
func upstream(t testing.TB) string {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Body-Sha256", fmt.Sprintf("%x", sha256.Sum256(body)))
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(up.Close)
	return up.URL
}

// newGateway builds a gateway from a config; {{UP}} is replaced by an
// upstream URL and {{REDIS}} by redisYAML.
func newGateway(t testing.TB, yaml, redisURL string) *gateway.Server {
	t.Helper()
	yaml = strings.ReplaceAll(yaml, "{{UP}}", upstream(t))
	redis := ""
	if redisURL != "" {
		redis = "redis:\n  url: " + redisURL + "\n  read_timeout: 1s\n  reconnect_min: 50ms\n  reconnect_max: 1s\n"
	}
	yaml = strings.ReplaceAll(yaml, "{{REDIS}}", redis)
	cfg, err := gateway.Parse("t.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Log.AccessLog = new(bool)
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv
}

type req struct {
	method, path   string
	user, role     string
	remote, xff    string
	header, hvalue string
	body           string
}

func do(srv *gateway.Server, q req) *httptest.ResponseRecorder {
	if q.method == "" {
		q.method = http.MethodGet
	}
	r := httptest.NewRequest(q.method, q.path, strings.NewReader(q.body))
	if q.remote != "" {
		r.RemoteAddr = q.remote
	}
	if q.user != "" {
		r.Header.Set("X-Test-User", q.user)
		r.Header.Set("X-Test-Role", q.role)
	}
	if q.xff != "" {
		r.Header.Set("X-Forwarded-For", q.xff)
	}
	if q.header != "" {
		r.Header.Set(q.header, q.hvalue)
	}
	w := httptest.NewRecorder()
	srv.ServeHTTP(w, r)
	return w
}

func admin(t testing.TB, srv *gateway.Server, method, path string) (int, map[string]any) {
	t.Helper()
	w := httptest.NewRecorder()
	srv.AdminHandler().ServeHTTP(w, httptest.NewRequest(method, path, nil))
	var body map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s %s: %d %s", method, path, w.Code, w.Body)
	}
	return w.Code, body
}

// backends runs fn on a gateway without Redis and on one with a real Redis.
func backends(t *testing.T, fn func(t *testing.T, redisURL string)) {
	t.Run("memory", func(t *testing.T) { fn(t, "") })
	t.Run("redis", func(t *testing.T) {
		_, srv := redisManager(t)
		fn(t, srv.URL())
	})
}

const contractYAML = `
{{REDIS}}
plugins:
  who:
    type: test-identity
  limit:
    type: ratelimit
    default: {limit: 3, window: 1m, burst: 0}
    roles:
      physician: {limit: 5}
      anonymous: {limit: 2, burst: 10, burst_window: 1s}
    trusted_proxies: [10.0.0.0/8]
    block: {after: 3, within: 1m, duration: 30s, max_duration: 2m}
    cost:
      search: 2
    routes:
      strict: {roles: {physician: {limit: 1}}, cost: {default: 1}}
      shared-a: {group: ab}
      shared-b: {group: ab}
routes:
  - name: api
    path: /api/*rest
    upstream: {{UP}}
    plugins: [who, limit]
  - name: fhirish
    path: /fhir/*rest
    fhir_errors: true
    upstream: {{UP}}
    plugins: [who, limit]
  - name: strict
    path: /strict
    upstream: {{UP}}
    plugins: [who, limit]
  - name: shared-a
    path: /a
    upstream: {{UP}}
    plugins: [who, limit]
  - name: shared-b
    path: /b
    upstream: {{UP}}
    plugins: [who, limit]
`

// allowed sends n requests and returns how many passed.
func allowed(t *testing.T, srv *gateway.Server, q req, n int) int {
	t.Helper()
	ok := 0
	for i := 0; i < n; i++ {
		w := do(srv, q)
		switch w.Code {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("%+v: status %d %s", q, w.Code, w.Body)
		}
	}
	return ok
}

func TestPluginRolesRoutesAndCost(t *testing.T) {
	backends(t, func(t *testing.T, redisURL string) {
		srv := newGateway(t, contractYAML, redisURL)
		for _, tc := range []struct {
			name string
			q    req
			send int
			want int
		}{
			{"anonymous by IP", req{path: "/api/x", remote: "192.0.2.1:1000"}, 4, 2},
			{"another IP has its own counter", req{path: "/api/x", remote: "192.0.2.2:1000"}, 3, 2},
			{"role without its own limit gets the default", req{path: "/api/x", user: "nina", role: "nurse"}, 5, 3},
			{"physician", req{path: "/api/x", user: "alice", role: "physician"}, 7, 5},
			{"route override", req{path: "/strict", user: "bob", role: "physician"}, 3, 1},
			{"routes do not share counters", req{path: "/strict", user: "alice", role: "physician"}, 2, 1},
			{"group shared by two routes (a)", req{path: "/a", user: "carol", role: "physician"}, 3, 3},
			{"group shared by two routes (b)", req{path: "/b", user: "carol", role: "physician"}, 3, 2},
			{"FHIR search costs 2", req{path: "/fhir/Patient", user: "dave", role: "physician"}, 3, 2},
			{"FHIR read costs 1", req{path: "/fhir/Patient/1", user: "dave", role: "physician"}, 3, 1},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if got := allowed(t, srv, tc.q, tc.send); got != tc.want {
					t.Fatalf("%d of %d passed, want %d", got, tc.send, tc.want)
				}
			})
		}
	})
}

func TestPluginHeaders(t *testing.T) {
	backends(t, func(t *testing.T, redisURL string) {
		srv := newGateway(t, contractYAML, redisURL)
		q := req{path: "/api/x", user: "erin", role: "physician"}
		before := time.Now().Unix()
		w := do(srv, q)
		after := time.Now().Unix() + 1 // the limiter's clock may be a second ahead (Redis TIME)
		h := w.Header()
		for k, want := range map[string]string{
			"RateLimit-Policy":      `"physician";q=5;w=60`,
			"X-RateLimit-Limit":     "5",
			"X-RateLimit-Remaining": "4",
		} {
			if got := h.Get(k); got != want {
				t.Errorf("%s = %q, want %q", k, got, want)
			}
		}
		// A request counts for the window plus up to one sub-window (6 s).
		if m := regexp.MustCompile(`^"physician";r=4;t=(\d+)$`).FindStringSubmatch(h.Get("RateLimit")); m == nil || m[1] < "60" || m[1] > "66" {
			t.Errorf("RateLimit = %q", h.Get("RateLimit"))
		}
		reset, _ := strconv.ParseInt(h.Get("X-RateLimit-Reset"), 10, 64)
		// The window (60 s) plus up to one sub-window (6 s) from the time
		// of the request, whatever the machine's speed.
		if reset < before+60 || reset > after+66 {
			t.Errorf("X-RateLimit-Reset = %s, want between %d and %d", h.Get("X-RateLimit-Reset"), before+60, after+66)
		}
		allowed(t, srv, q, 4)
		w = do(srv, q)
		if w.Code != http.StatusTooManyRequests {
			t.Fatalf("status %d", w.Code)
		}
		h = w.Header()
		ra, _ := strconv.Atoi(h.Get("Retry-After"))
		if ra < 55 || ra > 70 {
			t.Errorf("Retry-After = %q", h.Get("Retry-After"))
		}
		if h.Get("X-RateLimit-Remaining") != "0" || !strings.Contains(h.Get("RateLimit"), ";r=0;") {
			t.Errorf("remaining on 429: %q, %q", h.Get("X-RateLimit-Remaining"), h.Get("RateLimit"))
		}
		if ct := h.Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("Content-Type %q on a non-FHIR route", ct)
		}

		// Burst window: listed in the policy and the state.
		w = do(srv, req{path: "/api/x", remote: "192.0.2.9:1"})
		if got := w.Header().Get("RateLimit-Policy"); got != `"anonymous";q=2;w=60, "anonymous-burst";q=10;w=1` {
			t.Errorf("RateLimit-Policy = %q", got)
		}
		if got := w.Header().Get("RateLimit"); !strings.HasPrefix(got, `"anonymous";r=1;t=`) || !strings.Contains(got, `, "anonymous-burst";r=9;t=`) {
			t.Errorf("RateLimit = %q", got)
		}

		// FHIR routes answer an OperationOutcome with code throttled.
		fq := req{path: "/fhir/Patient/1", remote: "192.0.2.10:1"}
		allowed(t, srv, fq, 2)
		w = do(srv, fq)
		var oo struct {
			ResourceType string `json:"resourceType"`
			Issue        []struct{ Code string }
		}
		json.Unmarshal(w.Body.Bytes(), &oo)
		if w.Code != http.StatusTooManyRequests || oo.ResourceType != "OperationOutcome" || len(oo.Issue) != 1 || oo.Issue[0].Code != "throttled" {
			t.Fatalf("FHIR 429: %d %s", w.Code, w.Body)
		}
	})
}

func TestPluginForwardedFor(t *testing.T) {
	backends(t, func(t *testing.T, redisURL string) {
		srv := newGateway(t, contractYAML, redisURL)
		// Through a trusted proxy, each forwarded client has its own counter.
		if got := allowed(t, srv, req{path: "/api/x", remote: "10.1.1.1:5", xff: "203.0.113.1"}, 3); got != 2 {
			t.Fatalf("client 1 via proxy: %d passed", got)
		}
		if got := allowed(t, srv, req{path: "/api/x", remote: "10.1.1.1:5", xff: "203.0.113.2, 10.2.2.2"}, 3); got != 2 {
			t.Fatalf("client 2 via two proxies: %d passed", got)
		}
		// From an untrusted peer, X-Forwarded-For is ignored: rotating it
		// does not buy more requests.
		n := 0
		for i := 0; i < 4; i++ {
			n += allowed(t, srv, req{path: "/api/x", remote: "198.51.100.1:5", xff: fmt.Sprintf("203.0.113.%d", 100+i)}, 1)
		}
		if n != 2 {
			t.Fatalf("spoofed X-Forwarded-For: %d passed, want 2", n)
		}
	})
}

func TestPluginBlockingAndAdmin(t *testing.T) {
	backends(t, func(t *testing.T, redisURL string) {
		srv := newGateway(t, contractYAML, redisURL)
		q := req{path: "/api/x", remote: "192.0.2.50:1"}
		allowed(t, srv, q, 2)
		for i := 0; i < 3; i++ { // three rejections: not yet blocked
			if w := do(srv, q); w.Code != 429 || strings.Contains(w.Body.String(), "blocked") {
				t.Fatalf("rejection %d: %d %s", i, w.Code, w.Body)
			}
		}
		w := do(srv, q) // the fourth blocks for 30s
		if w.Code != 429 || !strings.Contains(w.Body.String(), "blocked for 30 s") || w.Header().Get("Retry-After") != "30" {
			t.Fatalf("fourth rejection: %d %s %v", w.Code, w.Body, w.Header())
		}
		// Another route is blocked too: blocks are per client.
		if w := do(srv, req{path: "/fhir/Patient/1", remote: "192.0.2.50:1"}); w.Code != 429 {
			t.Fatalf("blocked client on another route: %d", w.Code)
		}

		code, body := admin(t, srv, "GET", "/admin/ratelimit/blocks")
		blocks, _ := body["blocks"].([]any)
		if code != 200 || len(blocks) != 1 || blocks[0].(map[string]any)["key"] != "ip:192.0.2.50" {
			t.Fatalf("blocks: %d %v", code, body)
		}
		code, body = admin(t, srv, "GET", "/admin/ratelimit/stats")
		st := body["plugins"].(map[string]any)["limit"].(map[string]any)
		byResult := st["by_result"].(map[string]any)
		if code != 200 || byResult["allowed"].(float64) < 2 || byResult["blocked"].(float64) < 2 {
			t.Fatalf("stats: %d %v", code, body)
		}
		top := st["top_limited"].([]any)
		if len(top) == 0 || top[0].(map[string]any)["key"] != "ip:192.0.2.50" {
			t.Fatalf("top limited: %v", top)
		}
		wantStore := "memory"
		if redisURL != "" {
			wantStore = "redis"
		}
		if st["store"] != wantStore {
			t.Fatalf("store %v, want %s", st["store"], wantStore)
		}

		if code, _ := admin(t, srv, "DELETE", "/admin/ratelimit/blocks/ip:192.0.2.50"); code != 200 {
			t.Fatalf("unblock: %d", code)
		}
		if code, _ := admin(t, srv, "DELETE", "/admin/ratelimit/blocks/ip:192.0.2.50"); code != 404 {
			t.Fatalf("second unblock: %d, want 404", code)
		}
		if w := do(srv, req{path: "/fhir/Patient/1", remote: "192.0.2.50:1"}); w.Code != 200 {
			t.Fatalf("after unblock: %d %s", w.Code, w.Body)
		}
	})
}

func TestPluginHeaderKeyAndOptions(t *testing.T) {
	srv := newGateway(t, `
plugins:
  limit:
    type: ratelimit
    key: header
    header: x-api-key
    default: {limit: 1, window: 1m}
    headers: false
    legacy_headers: false
routes:
  - name: api
    path: /api
    upstream: {{UP}}
    plugins: [limit]
`, "")
	if got := allowed(t, srv, req{path: "/api", header: "X-Api-Key", hvalue: "k1"}, 2); got != 1 {
		t.Fatalf("k1: %d", got)
	}
	w := do(srv, req{path: "/api", header: "X-Api-Key", hvalue: "k2"})
	if w.Code != 200 {
		t.Fatalf("k2: %d", w.Code)
	}
	for _, h := range []string{"RateLimit", "RateLimit-Policy", "X-RateLimit-Limit"} {
		if w.Header().Get(h) != "" {
			t.Errorf("%s sent although disabled", h)
		}
	}
	w = do(srv, req{path: "/api", header: "X-Api-Key", hvalue: "k1"})
	if w.Code != 429 || w.Header().Get("Retry-After") == "" {
		t.Fatalf("k1 again: %d", w.Code)
	}
	_, body := admin(t, srv, "GET", "/admin/ratelimit/stats")
	if s := fmt.Sprint(body); strings.Contains(s, "k1") || !strings.Contains(s, "key:") {
		t.Fatalf("API keys must be hashed in stats: %s", s)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, plugin, want string
	}{
		{"bad key", "key: cookie", "limit.key: must be identity, ip or header"},
		{"header required", "key: header", "limit.header: required"},
		{"bad proxy", "trusted_proxies: [not-an-ip]", "limit.trusted_proxies[0]: invalid IP address"},
		{"role window", "roles: {nurse: {window: -1s}}", "limit.roles.nurse.window: must be at least"},
		{"burst window", "default: {limit: 10, window: 1s, burst: 5, burst_window: 2s}", "limit.default.burst_window: must be shorter"},
		{"cost over limit", "default: {limit: 2, window: 1m, burst: 0}\n    cost: {default: 3}", "limit.default: a request costing 3 could never pass"},
		{"on redis down", "on_redis_down: maybe", "limit.on_redis_down: must be memory, deny or allow"},
		{"block", "block: {after: 5, duration: 1h, max_duration: 1m}", "limit.block.max_duration: must not be less"},
		{"unknown key", "limits: {}", "limits"},
		{"method cost", "cost: {methods: {FETCH: 2}}", "limit.cost.methods.FETCH: unknown method"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			yaml := "plugins:\n  limit:\n    type: ratelimit\n    " + tc.plugin + "\nroutes:\n  - name: api\n    path: /api\n    upstream: http://127.0.0.1:1\n    plugins: [limit]\n"
			_, err := gateway.Parse("t.yaml", []byte(yaml), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "t.yaml:") {
				t.Fatalf("err = %v, want it to name the line and contain %q", err, tc.want)
			}
		})
	}
	// A route override must name a route.
	yaml := "plugins:\n  limit:\n    type: ratelimit\n    routes: {nope: {group: x}}\nroutes:\n  - name: api\n    path: /api\n    upstream: http://127.0.0.1:1\n    plugins: [limit]\n"
	cfg, err := gateway.Parse("t.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), `no route is named "nope"`) {
		t.Fatalf("New = %v", err)
	}
}

// TestConfigOneMistakeOneError: each mistake in a limit is reported once,
// at the key the file wrote; a file that never set burst_window is never
// told to change it.
func TestConfigOneMistakeOneError(t *testing.T) {
	for _, tc := range []struct {
		limit string
		want  []string
	}{
		{"{limit: 0, window: 15m}", []string{"t.yaml:4:15: plugins.limit.default.limit: must be positive"}},
		{"{limit: 100, window: 0s}", []string{"t.yaml:4:27: plugins.limit.default.window: must be at least 10ms"}},
		{"{limit: 100, window: 500ms}", []string{"t.yaml:4:27: plugins.limit.default.window: must be longer than the burst window (1s by default)"}},
		{"{limit: 100, window: 1m, burst_window: 2m}", []string{"t.yaml:4:39: plugins.limit.default.burst_window: must be shorter than the window"}},
		{"{limit: 0, window: 0s}", []string{"limit.default.limit: must be positive", "limit.default.window: must be at least 10ms"}},
	} {
		t.Run(tc.limit, func(t *testing.T) {
			yaml := "plugins:\n  limit:\n    type: ratelimit\n    default: " + tc.limit + "\nroutes:\n  - name: api\n    path: /api\n    upstream: http://127.0.0.1:1\n    plugins: [limit]\n"
			_, err := gateway.Parse("t.yaml", []byte(yaml), nil)
			if err == nil {
				t.Fatal("no error")
			}
			lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
			if len(lines) != len(tc.want) {
				t.Fatalf("%d errors, want %d:\n%v", len(lines), len(tc.want), err)
			}
			for i, w := range tc.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("error %d = %q, want it to contain %q", i, lines[i], w)
				}
			}
		})
	}
}

// TestBundleCostsItsEntries: a batch or transaction posted to the FHIR
// base costs the sum of its entries (a search entry as a search), so a
// Bundle is no way around the limit; the body reaches the server intact.
func TestBundleCostsItsEntries(t *testing.T) {
	backends(t, func(t *testing.T, redisURL string) {
		srv := newGateway(t, contractYAML, redisURL)
		bundle := func(typ string, entries ...string) string {
			return `{"resourceType":"Bundle","type":"` + typ + `","entry":[` + strings.Join(entries, ",") + `]}`
		}
		search := `{"request":{"method":"GET","url":"Patient?name=x"}}`
		read := `{"request":{"method":"GET","url":"Patient/1"}}`
		del := `{"request":{"method":"DELETE","url":"Patient/2"}}`
		// The physician's limit is 5 a minute; a search costs 2.
		q := req{method: "POST", path: "/fhir/R4", user: "ivy", role: "physician", body: bundle("batch", search, read, del)}
		w := do(srv, q)
		if w.Code != http.StatusOK || w.Header().Get("X-RateLimit-Remaining") != "1" {
			t.Fatalf("batch costing 4: %d, remaining %q", w.Code, w.Header().Get("X-RateLimit-Remaining"))
		}
		if got, want := w.Header().Get("X-Body-Sha256"), fmt.Sprintf("%x", sha256.Sum256([]byte(q.body))); got != want {
			t.Errorf("the body changed on its way: %s, want %s", got, want)
		}
		q.body = bundle("transaction", read, read)
		if w := do(srv, q); w.Code != http.StatusTooManyRequests {
			t.Errorf("transaction costing 2 with 1 left: %d", w.Code)
		}
		// Not a Bundle: one request.
		q.user, q.body = "jo", `{"resourceType":"Patient"}`
		if w := do(srv, q); w.Code != http.StatusOK || w.Header().Get("X-RateLimit-Remaining") != "4" {
			t.Errorf("a plain POST: %d, remaining %q", w.Code, w.Header().Get("X-RateLimit-Remaining"))
		}
	})
}
