package gateway

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestChainRunsInRouteOrder(t *testing.T) {
	srv, _ := newTestServer(t, `
plugins:
  a: {type: recorder, label: a}
  b: {type: recorder, label: b}
  c: {type: recorder, label: c}
routes:
  - name: fhir
    fhir: true
    plugins: [c, a, b]
  - name: other
    path: /other/*rest
    fhir: true
    plugins: [b]
`)
	rec := do(srv, "GET", "/fhir/R4/Patient/1", nil)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if got := rec.Header().Get("X-Chain-Seen"); got != "c,a,b" {
		t.Errorf("plugins ran as %q, want c,a,b", got)
	}
	if got := rec.Header().Values("X-Chain-Out"); !slices.Equal(got, []string{"c", "a", "b"}) {
		t.Errorf("response passed %v, want [c a b]", got)
	}
	if got := do(srv, "GET", "/other/x", nil).Header().Get("X-Chain-Seen"); got != "b" {
		t.Errorf("second route ran %q, want b", got)
	}
}

func TestPluginAnswersWithoutNext(t *testing.T) {
	srv, _ := newTestServer(t, `
plugins:
  deny: {type: recorder, label: deny, deny: 403}
  after: {type: recorder, label: after}
routes:
  - fhir: true
    plugins: [deny, after]
  - path: /plain
    upstream: http://127.0.0.1:9
    plugins: [deny]
`)
	rec := do(srv, "GET", "/fhir/R4/Patient", nil)
	if rec.Code != 403 || !strings.Contains(rec.Body.String(), `"code":"forbidden"`) ||
		rec.Header().Get("Content-Type") != "application/fhir+json; charset=utf-8" {
		t.Errorf("FHIR route deny: %d %s %s", rec.Code, rec.Header(), rec.Body)
	}
	rec = do(srv, "GET", "/plain", nil)
	if rec.Code != 403 || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Errorf("plain route deny: %d %s %s", rec.Code, rec.Header(), rec.Body)
	}
}

func TestPanickingPluginIsIsolated(t *testing.T) {
	srv, logs := newTestServer(t, `
plugins:
  boom: {type: recorder, label: boom, panic: true}
  fine: {type: recorder, label: fine}
routes:
  - name: bad
    path: /fhir/R4/bad/*rest
    fhir: true
    plugins: [fine, boom]
  - name: good
    fhir: true
    plugins: [fine]
`)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			rec := do(srv, "GET", "/fhir/R4/bad/x", nil)
			if rec.Code != 500 || !strings.Contains(rec.Body.String(), "OperationOutcome") {
				t.Errorf("panicking chain: %d %s", rec.Code, rec.Body)
			}
		}()
		go func() {
			defer wg.Done()
			if rec := do(srv, "GET", "/fhir/R4/Patient/1", nil); rec.Code != 200 {
				t.Errorf("healthy route: %d", rec.Code)
			}
		}()
	}
	wg.Wait()
	if !strings.Contains(logs.String(), `"msg":"panic recovered","plugin":"boom"`) ||
		!strings.Contains(logs.String(), `"request_id":"`) {
		t.Errorf("panic not logged with plugin and request id:\n%s", logs)
	}
	metrics := scrape(t, srv)
	if !strings.Contains(metrics, `omnigate_panics_total{plugin="boom"} 20`) {
		t.Errorf("panics not counted:\n%s", grep(metrics, "panics"))
	}
	// The terminal handler's panics are isolated too.
	if rec := do(srv, "GET", "/fhir/R4/panic", nil); rec.Code != 500 {
		t.Errorf("handler panic: %d", rec.Code)
	}
}

func TestPanicAfterResponseStartedAbortsConnection(t *testing.T) {
	srv, _ := newTestServer(t, `
plugins:
  boom: {type: recorder, label: boom}
routes:
  - path: /x
    upstream: http://127.0.0.1:9
`)
	// Exercise recoverPanic directly through a link whose plugin writes
	// and then panics.
	rt := srv.cur.Load()
	l := &link{name: "late", srv: srv, next: http.NotFoundHandler(), dur: srv.metrics.pluginDuration.WithLabelValues("late"),
		plugin: PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
			w.WriteHeader(200)
			w.Write([]byte("partial"))
			panic("late")
		})}
	r, _ := srv.newRoute(rt.cfg, RouteInfo{Name: "late"}, l, 1<<20, false)
	ts := httptest.NewServer(r)
	defer ts.Close()
	resp, err := http.Get(ts.URL)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("a panic after the response started must abort the connection, got a clean response")
	}
}

func TestUpstreamProxy(t *testing.T) {
	var mu sync.Mutex
	var seen *http.Request
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Clone(context.Background())
		mu.Unlock()
		if r.URL.Path == "/base/stream" {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "data: %d\n\n", i)
				w.(http.Flusher).Flush()
			}
			return
		}
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "must not pass")
		w.Header().Set("X-Request-Id", r.Header.Get("X-Request-Id")) // an upstream that echoes it
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"path":"`+r.URL.Path+`","query":"`+r.URL.RawQuery+`"}`)
	}))
	defer up.Close()
	srv, _ := newTestServer(t, `
routes:
  - name: legacy
    path: /legacy/*rest
    upstream:
      url: `+up.URL+`/base
      strip_prefix: /legacy
`)
	ts := httptest.NewServer(srv)
	defer ts.Close()
	req, _ := http.NewRequest("GET", ts.URL+"/legacy/Patient/7?name=x", nil)
	req.Header.Set("X-Request-Id", "client-id-1")
	req.Header.Set("Connection", "X-Secret")
	req.Header.Set("X-Secret", "hop-by-hop")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != `{"path":"/base/Patient/7","query":"name=x"}` {
		t.Fatalf("proxied: %d %s", resp.StatusCode, body)
	}
	if ids := resp.Header.Values("X-Request-Id"); len(ids) != 1 || ids[0] != "client-id-1" {
		t.Errorf("request id not passed back once: %q", ids)
	}
	if resp.Header.Get("X-Hop") != "" {
		t.Errorf("hop-by-hop response header passed: %q", resp.Header.Get("X-Hop"))
	}
	mu.Lock()
	got := seen
	mu.Unlock()
	if got.Header.Get("X-Request-Id") != "client-id-1" {
		t.Errorf("request id not passed upstream: %q", got.Header.Get("X-Request-Id"))
	}
	if got.Header.Get("X-Secret") != "" {
		t.Errorf("hop-by-hop request header passed upstream")
	}
	if got.Header.Get("X-Forwarded-For") != "127.0.0.1" || got.Header.Get("X-Forwarded-Proto") != "http" ||
		got.Header.Get("X-Forwarded-Host") != strings.TrimPrefix(ts.URL, "http://") {
		t.Errorf("X-Forwarded-*: for=%q proto=%q host=%q", got.Header.Get("X-Forwarded-For"),
			got.Header.Get("X-Forwarded-Proto"), got.Header.Get("X-Forwarded-Host"))
	}

	// Streaming: event-stream chunks arrive as they are flushed.
	resp, err = http.Get(ts.URL + "/legacy/stream")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "data: 0\n\ndata: 1\n\ndata: 2\n\n" {
		t.Errorf("stream body %q", body)
	}
}

func TestUpstreamErrors(t *testing.T) {
	// A port that refuses connections.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + l.Addr().String()
	l.Close()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers: the gateway gives up at its timeout
	}))
	defer slow.Close()
	srv, logs := newTestServer(t, `
routes:
  - name: down
    path: /fhir/R4/*path
    upstream: `+dead+`
    fhir_errors: true
  - name: plain
    path: /plain
    upstream: `+dead+`
  - name: slow
    path: /slow
    fhir_errors: true
    upstream: {url: "`+slow.URL+`", timeout: 50ms}
`)
	rec := do(srv, "GET", "/fhir/R4/Patient/1", nil)
	var oo struct {
		ResourceType string
		Issue        []struct{ Severity, Code string }
	}
	json.Unmarshal(rec.Body.Bytes(), &oo)
	if rec.Code != 502 || oo.ResourceType != "OperationOutcome" || len(oo.Issue) != 1 || oo.Issue[0].Code != "transient" {
		t.Errorf("upstream down: %d %s", rec.Code, rec.Body)
	}
	if rec := do(srv, "GET", "/plain", nil); rec.Code != 502 || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Errorf("plain upstream down: %d %s", rec.Code, rec.Header())
	}
	rec = do(srv, "GET", "/slow", nil)
	if rec.Code != 504 || !strings.Contains(rec.Body.String(), `"code":"timeout"`) {
		t.Errorf("upstream timeout: %d %s", rec.Code, rec.Body)
	}
	m := scrape(t, srv)
	for _, want := range []string{
		`omnigate_upstream_errors_total{kind="connect",route="down"} 1`,
		`omnigate_upstream_errors_total{kind="timeout",route="slow"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("missing %s in\n%s", want, grep(m, "upstream_errors"))
		}
	}
	if !strings.Contains(logs.String(), `"msg":"upstream error"`) {
		t.Errorf("upstream error not logged")
	}
}

func TestRoutingLayersAndMethods(t *testing.T) {
	srv, _ := newTestServer(t, `
plugins:
  all: {type: recorder, label: all}
  meta: {type: recorder, label: meta}
  pat: {type: recorder, label: pat}
routes:
  - name: all
    fhir: true
    plugins: [all]
  - name: metadata
    path: /fhir/R4/metadata
    methods: [GET]
    fhir: true
    plugins: [meta]
  - name: patient
    path: /fhir/R4/Patient/:id
    methods: [GET, PUT]
    fhir: true
    plugins: [pat]
  - name: readonly
    path: /ro/*rest
    methods: [GET, HEAD]
    fhir: true
`)
	tests := []struct {
		method, path string
		status       int
		chain        string
	}{
		{"GET", "/fhir/R4/metadata", 200, "meta"},
		{"POST", "/fhir/R4/metadata", 200, "all"}, // falls through to the catch-all
		{"GET", "/fhir/R4/Patient/7", 200, "pat"},
		{"DELETE", "/fhir/R4/Patient/7", 200, "all"},
		{"GET", "/fhir/R4/Patient/7/_history", 200, "all"},
		{"POST", "/fhir/R4", 200, "all"}, // the base itself (transactions)
		{"GET", "/fhir/R4/./Patient//7", 200, "pat"},
		{"GET", "/ro/x", 200, ""},
		{"POST", "/ro/x", 405, ""},
		{"GET", "/nothing", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			rec := do(srv, tt.method, tt.path, nil)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			if tt.status == 200 && rec.Header().Get("X-Chain-Seen") != tt.chain {
				t.Errorf("chain %q, want %q", rec.Header().Get("X-Chain-Seen"), tt.chain)
			}
			if tt.status == 405 && rec.Header().Get("Allow") != "GET, HEAD" {
				t.Errorf("Allow = %q", rec.Header().Get("Allow"))
			}
		})
	}
	// Unmatched paths under the FHIR base answer OperationOutcome.
	srv2, _ := newTestServer(t, "routes:\n  - path: /fhir/R4/metadata\n    fhir: true\n")
	rec := do(srv2, "GET", "/fhir/R4/Nope", nil)
	if rec.Code != 404 || !strings.Contains(rec.Body.String(), "OperationOutcome") {
		t.Errorf("unmatched FHIR path: %d %s", rec.Code, rec.Body)
	}
}

func TestRequestIDs(t *testing.T) {
	srv, logs := newTestServer(t, "routes:\n  - fhir: true\n")
	rec := do(srv, "GET", "/fhir/R4/Patient/1", nil, "X-Request-Id", "abc-123")
	if rec.Header().Get("X-Request-Id") != "abc-123" {
		t.Errorf("well-formed client id not kept: %q", rec.Header().Get("X-Request-Id"))
	}
	for _, bad := range []string{"has space", strings.Repeat("x", 129), "inj\"ect", "ünï"} {
		rec := do(srv, "GET", "/fhir/R4/Patient/1", nil, "X-Request-Id", bad)
		if got := rec.Header().Get("X-Request-Id"); got == bad || !validRequestID(got) {
			t.Errorf("malformed id %q: answered %q", bad, got)
		}
	}
	a := do(srv, "GET", "/fhir/R4/Patient/1", nil).Header().Get("X-Request-Id")
	b := do(srv, "GET", "/fhir/R4/Patient/1", nil).Header().Get("X-Request-Id")
	if a == "" || a == b {
		t.Errorf("generated ids %q and %q", a, b)
	}
	if !strings.Contains(logs.String(), `"request_id":"abc-123"`) {
		t.Errorf("access log lacks the request id")
	}
}

func TestAccessLogHasNoSecrets(t *testing.T) {
	srv, logs := newTestServer(t, `
plugins:
  who: {type: recorder, label: whoami}
routes:
  - fhir: true
    plugins: [who]
`)
	do(srv, "GET", "/fhir/R4/Patient?name=Jane+Doe&birthdate=1970-01-01", nil,
		"Authorization", "Bearer sekrit-token-value", "Cookie", "omnigate_session=cookie-token", "X-User", "42")
	line := logs.String()
	for _, secret := range []string{"sekrit-token-value", "cookie-token", "Jane", "1970-01-01"} {
		if strings.Contains(line, secret) {
			t.Errorf("access log contains %q:\n%s", secret, line)
		}
	}
	for _, want := range []string{`"method":"GET"`, `"route":"/fhir/R4/*path"`, `"status":200`, `"user":"u-42"`, `"duration_ms":`, `"bytes":`} {
		if !strings.Contains(line, want) {
			t.Errorf("access log lacks %s:\n%s", want, line)
		}
	}
}

func TestBodyLimitAndCompression(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			return // the proxy reports the limit
		}
		w.Header().Set("Content-Type", r.URL.Query().Get("ct"))
		io.WriteString(w, strings.Repeat(`{"resourceType":"Observation"}`, 200))
	}))
	defer up.Close()
	srv, _ := newTestServer(t, `
routes:
  - name: api
    path: /api/*rest
    upstream: `+up.URL+`
    fhir_errors: true
    max_body: 1KiB
  - name: raw
    path: /raw/*rest
    upstream: `+up.URL+`
    compress: false
`)
	// Declared length over the limit: 413 before anything is read.
	rec := do(srv, "POST", "/api/x", strings.NewReader(strings.Repeat("a", 2000)))
	if rec.Code != 413 || !strings.Contains(rec.Body.String(), "OperationOutcome") {
		t.Errorf("declared oversize body: %d %s", rec.Code, rec.Body)
	}
	// Unknown length (chunked) over the limit: cut while streaming.
	req := httptest.NewRequest("POST", "/api/x", io.NopCloser(strings.NewReader(strings.Repeat("a", 2000))))
	req.ContentLength = -1
	rr := httptest.NewRecorder()
	srv.ServeHTTP(rr, req)
	if rr.Code != 413 {
		t.Errorf("streamed oversize body: %d %s", rr.Code, rr.Body)
	}

	rec = do(srv, "GET", "/api/x?ct=application/fhir%2Bjson", nil, "Accept-Encoding", "gzip")
	if rec.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("JSON not compressed: %s", rec.Header())
	}
	zr, err := gzip.NewReader(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := io.ReadAll(zr)
	if len(plain) != 30*200 {
		t.Errorf("decompressed %d bytes", len(plain))
	}
	if rec := do(srv, "GET", "/api/x?ct=application/zip", nil, "Accept-Encoding", "gzip"); rec.Header().Get("Content-Encoding") != "" {
		t.Errorf("already-compressed type was compressed")
	}
	if rec := do(srv, "GET", "/raw/x?ct=application/json", nil, "Accept-Encoding", "gzip"); rec.Header().Get("Content-Encoding") != "" {
		t.Errorf("compression off on route, but compressed")
	}
	if rec := do(srv, "GET", "/api/x?ct=application/json", nil); rec.Header().Get("Content-Encoding") != "" {
		t.Errorf("compressed without Accept-Encoding")
	}
}

func TestMetricsExposeRouteHistogram(t *testing.T) {
	srv, _ := newTestServer(t, `
plugins:
  p1: {type: recorder, label: p1}
routes:
  - name: fhir
    fhir: true
    plugins: [p1]
`)
	for i := 0; i < 3; i++ {
		do(srv, "GET", "/fhir/R4/Patient/1", nil)
	}
	do(srv, "DELETE", "/nowhere", nil)
	m := scrape(t, srv)
	for _, want := range []string{
		`omnigate_http_request_duration_seconds_bucket{route="fhir",le="0.005"}`,
		`omnigate_http_request_duration_seconds_count{route="fhir"} 3`,
		`omnigate_http_requests_total{method="GET",route="fhir",status="200"} 3`,
		`omnigate_http_requests_total{method="DELETE",route="unmatched",status="404"} 1`,
		`omnigate_plugin_duration_seconds_count{plugin="p1"} 3`,
		`omnigate_http_requests_in_flight 0`,
		`go_goroutines`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestAdminEndpoints(t *testing.T) {
	srv, _ := newTestServer(t, `
admin:
  listen: 127.0.0.1:0
  token: admin-secret-of-thirty-two-bytes-at-least
plugins:
  p1: {type: recorder, label: p1}
routes:
  - fhir: true
    plugins: [p1]
`)
	admin := srv.AdminHandler()
	for _, path := range []string{"/ping", "/metrics", "/debug/pprof/"} {
		if rec := do(admin, "GET", path, nil); rec.Code != 401 {
			t.Errorf("%s without token: %d", path, rec.Code)
		}
		if rec := do(admin, "GET", path, nil, "Authorization", "Bearer wrong"); rec.Code != 401 {
			t.Errorf("%s with a wrong token: %d", path, rec.Code)
		}
		if rec := do(admin, "GET", path, nil, "Authorization", "Bearer admin-secret-of-thirty-two-bytes-at-least"); rec.Code != 200 {
			t.Errorf("%s with the token: %d", path, rec.Code)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if rec := do(admin, "GET", path, nil); rec.Code != 200 {
			t.Errorf("%s must not need the token: %d", path, rec.Code)
		}
	}
	rec := do(admin, "GET", "/ping", nil, "Authorization", "Bearer admin-secret-of-thirty-two-bytes-at-least")
	var ping PingResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &ping); err != nil {
		t.Fatal(err)
	}
	if ping.Status != "ok" || ping.Components["redis"].Status != "disabled" ||
		ping.Plugins["p1"].Status != "loaded" || ping.Plugins["p1"].Type != "recorder" {
		t.Errorf("ping = %+v", ping)
	}
}

type downPlugin struct{ recorder }

func (*downPlugin) Health() Health {
	return Health{Status: StatusDown, Required: true, Detail: "process exited"}
}

func TestPingReportsRequiredComponentDown(t *testing.T) {
	srv, _ := newTestServer(t, "routes:\n  - fhir: true\n")
	rt := srv.cur.Load()
	rt.plugins = append(rt.plugins, namedPlugin{"ext", &downPlugin{}})
	rec := do(srv.AdminHandler(), "GET", "/ping", nil)
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), `"status": "down"`) {
		t.Errorf("required plugin down: %d %s", rec.Code, rec.Body)
	}
}

type degradedPlugin struct{ recorder }

func (*degradedPlugin) Health() Health {
	return Health{Status: StatusDegraded, Detail: "redis down: counting in memory"}
}

// A plugin that works in a reduced mode (degraded) makes the top-level
// status degraded, still 200: the instance serves, but an operator should
// look.
func TestPingReportsDegradedPlugin(t *testing.T) {
	srv, _ := newTestServer(t, "routes:\n  - fhir: true\n")
	rt := srv.cur.Load()
	rt.plugins = append(rt.plugins, namedPlugin{"limit", &degradedPlugin{}})
	rec := do(srv.AdminHandler(), "GET", "/ping", nil)
	var ping PingResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &ping); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 200 || ping.Status != "degraded" || ping.Plugins["limit"].Status != StatusDegraded {
		t.Errorf("degraded plugin: %d %s", rec.Code, rec.Body)
	}
}

// While a required component (a database the FHIR store lives in) is down,
// /readyz answers 503 naming it, so that load balancers send traffic to
// other instances; it is ready again once the component is back.
func TestReadyzFollowsRequiredComponents(t *testing.T) {
	srv, _ := newTestServer(t, "routes:\n  - fhir: true\n")
	var down atomic.Bool
	rt := srv.cur.Load()
	rt.health = append(rt.health, healthCheck{"fhir_store", func() Health {
		if down.Load() {
			return Health{Status: StatusDown, Required: true, Detail: "connection refused"}
		}
		return Health{Status: StatusUp, Required: true}
	}}, healthCheck{"optional", func() Health { return Health{Status: StatusDown} }})
	if rec := do(srv.AdminHandler(), "GET", "/readyz", nil); rec.Code != 200 {
		t.Fatalf("/readyz with the store up: %d %s", rec.Code, rec.Body)
	}
	down.Store(true)
	rec := do(srv.AdminHandler(), "GET", "/readyz", nil)
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), `"fhir_store"`) || strings.Contains(rec.Body.String(), "optional") {
		t.Errorf("/readyz with the store down: %d %s", rec.Code, rec.Body)
	}
	if rec := do(srv.AdminHandler(), "GET", "/ping", nil); rec.Code != 503 || !strings.Contains(rec.Body.String(), `"status": "down"`) {
		t.Errorf("/ping with the store down: %d %s", rec.Code, rec.Body)
	}
	down.Store(false)
	if rec := do(srv.AdminHandler(), "GET", "/readyz", nil); rec.Code != 200 {
		t.Errorf("/readyz with the store back: %d %s", rec.Code, rec.Body)
	}
}

func scrape(t *testing.T, srv *Server) string {
	t.Helper()
	rec := do(srv.AdminHandler(), "GET", "/metrics", nil)
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestClientIPHonoursTrustedProxiesOnly(t *testing.T) {
	srv, _ := newTestServer(t, `
server:
  trusted_proxies: [10.0.0.0/8, 192.0.2.7]
plugins:
  probe: {type: client-ip-probe}
routes:
  - fhir: true
    plugins: [probe]
`)
	for _, tc := range []struct{ remote, xff, want string }{
		{"203.0.113.5:1234", "1.2.3.4", "203.0.113.5"},                      // untrusted peer: XFF ignored
		{"10.1.2.3:80", "198.51.100.9", "198.51.100.9"},                     // trusted load balancer
		{"192.0.2.7:80", "6.6.6.6, 198.51.100.9, 10.0.0.1", "198.51.100.9"}, // walk past trusted hops only
		{"10.1.2.3:80", "", "10.1.2.3"},
	} {
		req := httptest.NewRequest("GET", "/fhir/R4/Patient/1", nil)
		req.RemoteAddr = tc.remote
		if tc.xff != "" {
			req.Header.Set("X-Forwarded-For", tc.xff)
		}
		srv.ServeHTTP(httptest.NewRecorder(), req)
		if got := clientIPSeen; got != tc.want {
			t.Errorf("remote %s xff %q: client %s, want %s", tc.remote, tc.xff, got, tc.want)
		}
	}
	if _, err := Parse("t.yaml", []byte("server: {trusted_proxies: [nope]}\nroutes: [{fhir: true}]\n"), nil); err == nil ||
		!strings.Contains(err.Error(), `server.trusted_proxies[0]: invalid IP address "nope"`) {
		t.Errorf("bad trusted proxy: %v", err)
	}
}

func TestMetricNamesIncludeVectorsWithoutSeries(t *testing.T) {
	srv, _ := newTestServer(t, "routes:\n  - fhir: true\n")
	names := srv.MetricNames()
	for _, want := range []string{MetricPanics, MetricUpstreamErrors, MetricRequests, MetricPluginDuration, "go_goroutines"} {
		if !slices.Contains(names, want) {
			t.Errorf("MetricNames lacks %s (no series yet, but registered)", want)
		}
	}
}
