package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func startTestServer(t *testing.T, yaml string) *Server {
	t.Helper()
	srv, _ := newTestServer(t, "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n"+yaml)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	return srv
}

func get(t *testing.T, url string) (int, string, error) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// eventually polls cond until it holds or 10s pass.
func eventually(cond func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func TestGracefulDrain(t *testing.T) {
	gate := newRequestGate(t, "drain")
	defer gate.open() // also when the test fails early
	closed := closes.mark()
	srv := startTestServer(t, `
server:
  shutdown_delay: 300ms
  shutdown_timeout: 1m
plugins:
  slow: {type: recorder, label: drain-slow, gate: drain}
  first: {type: recorder, label: drain-first}
routes:
  - name: slow
    path: /fhir/R4/slow
    fhir: true
    plugins: [first, slow]
  - name: fast
    fhir: true
`)
	// The shutdown delay is over when the test says so.
	delayAsked := make(chan time.Duration, 1)
	delayOver := make(chan time.Time)
	srv.after = func(d time.Duration) <-chan time.Time { delayAsked <- d; return delayOver }
	base := "http://" + srv.Addr()
	admin := "http://" + srv.AdminAddr()

	slowDone := make(chan int, 1)
	go func() {
		code, _, err := get(t, base+"/fhir/R4/slow")
		if err != nil {
			t.Errorf("in-flight request failed during drain: %v", err)
		}
		slowDone <- code
	}()
	gate.waitEntered(t) // the slow request is in flight

	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- srv.Shutdown(context.Background()) }()
	select {
	case d := <-delayAsked:
		if d != 300*time.Millisecond {
			t.Errorf("shutdown delay %v, want 300ms", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not begin its delay")
	}

	// During the delay: not ready, but still serving.
	if code, _, _ := get(t, admin+"/readyz"); code != 503 {
		t.Errorf("/readyz while draining = %d, want 503", code)
	}
	if code, body, _ := get(t, admin+"/ping"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("/ping while draining = %d %s", code, body)
	}
	if code, _, err := get(t, base+"/fhir/R4/Patient/1"); err != nil || code != 200 {
		t.Errorf("request during the shutdown delay: %d %v", code, err)
	}
	close(delayOver) // past the delay: the listener closes

	if !eventually(func() bool { _, _, err := get(t, base+"/fhir/R4/Patient/1"); return err != nil }) {
		t.Error("new requests still accepted after the shutdown delay")
	}
	select {
	case err := <-shutdownDone:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	default:
	}
	gate.open()
	if code := <-slowDone; code != 200 {
		t.Errorf("in-flight request finished with %d, want 200", code)
	}
	if err := <-shutdownDone; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	// Plugins close after the drain, in reverse order of construction.
	got := slices.DeleteFunc(closes.since(closed), func(s string) bool { return !strings.HasPrefix(s, "drain-") })
	if !slices.Equal(got, []string{"drain-first", "drain-slow"}) {
		t.Errorf("closed %v, want [drain-first drain-slow] (reverse of construction)", got)
	}
}

func TestReloadSwapsChainsAndClosesOld(t *testing.T) {
	gate := newRequestGate(t, "reload")
	defer gate.open()
	closed := closes.mark()
	srv := startTestServer(t, `
server: {shutdown_timeout: 1h}   # the old config waits for its request, however long
plugins:
  old: {type: recorder, label: reload-old, gate: reload}
routes:
  - fhir: true
    plugins: [old]
`)
	base := "http://" + srv.Addr()
	inflight := make(chan string, 1)
	go func() {
		resp, err := http.Get(base + "/fhir/R4/Patient/1")
		if err != nil {
			t.Errorf("in-flight request across reload: %v", err)
			inflight <- ""
			return
		}
		resp.Body.Close()
		inflight <- resp.Header.Get("X-Chain-Seen")
	}()
	gate.waitEntered(t) // the request is in the old chain

	cfg, err := Parse("new.yaml", []byte(`
listen: 127.0.0.1:0
admin: 127.0.0.1:0
plugins:
  new: {type: recorder, label: reload-new}
routes:
  - fhir: true
    plugins: [new]
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(base + "/fhir/R4/Patient/1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Chain-Seen"); got != "reload-new" {
		t.Errorf("after reload the chain is %q, want reload-new", got)
	}
	if slices.Contains(closes.since(closed), "reload-old") {
		t.Error("old plugin closed while a request was still using it")
	}
	gate.open()
	if got := <-inflight; got != "reload-old" {
		t.Errorf("in-flight request ran %q, want it to finish on the old chain", got)
	}
	if !eventually(func() bool { return slices.Contains(closes.since(closed), "reload-old") }) {
		t.Fatal("old plugin not closed after its last request")
	}
	if slices.Contains(closes.since(closed), "reload-new") {
		t.Error("new plugin closed")
	}
	m := scrape(t, srv)
	if !strings.Contains(m, `omnigate_config_reloads_total{result="success"} 1`) {
		t.Errorf("reload not counted:\n%s", grep(m, "reload"))
	}
}

func TestBadReloadKeepsOldConfig(t *testing.T) {
	closed := closes.mark()
	srv := startTestServer(t, `
plugins:
  keep: {type: recorder, label: keep}
routes:
  - fhir: true
    plugins: [keep]
`)
	base := "http://" + srv.Addr()
	// A config that does not parse.
	err := srv.ReloadFrom(context.Background(), func() (*Config, error) {
		return Parse("bad.yaml", []byte("routes:\n  - fhir: true\n    plugins: [missing]\n"), nil)
	})
	if err == nil || !strings.Contains(err.Error(), `bad.yaml:3:15: routes[0].plugins[0]: no plugin named "missing"`) {
		t.Errorf("reload of a bad config: %v", err)
	}
	// A config that parses but fails to build.
	cfg, perr := Parse("fails.yaml", []byte(`
plugins:
  broken: {type: recorder, label: fail-build}
routes:
  - fhir: true
    plugins: [broken]
`), nil)
	if perr != nil {
		t.Fatal(perr)
	}
	if err := srv.Reload(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "fails.yaml:3:3: plugins.broken: cannot build") {
		t.Errorf("reload of a config that fails to build: %v", err)
	}
	resp, err := http.Get(base + "/fhir/R4/Patient/1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Chain-Seen") != "keep" {
		t.Errorf("old config not serving: %d chain=%q", resp.StatusCode, resp.Header.Get("X-Chain-Seen"))
	}
	if slices.Contains(closes.since(closed), "keep") {
		t.Error("old plugin closed by a failed reload")
	}
	if m := scrape(t, srv); !strings.Contains(m, `omnigate_config_reloads_total{result="failure"} 2`) {
		t.Errorf("failed reloads not counted:\n%s", grep(m, "reload"))
	}
}

func TestSharedObjectsSurviveReload(t *testing.T) {
	srv, _ := newTestServer(t, "routes:\n  - fhir: true\n")
	type res struct{ closed bool }
	made := 0
	var first *res
	get := func(rt *runtime) *res {
		env := srv.env(rt, "p", "t")
		v, err := env.Shared("conn", func() (any, error) { made++; return &res{}, nil })
		if err != nil {
			t.Fatal(err)
		}
		return v.(*res)
	}
	rt1 := srv.cur.Load()
	first = get(rt1)
	rt2 := &runtime{cfg: rt1.cfg, srv: srv, idle: make(chan struct{})}
	if get(rt2) != first || made != 1 {
		t.Fatalf("second load did not share the object (made %d)", made)
	}
	srv.releaseShared(rt1)
	if _, ok := srv.shared["conn"]; !ok {
		t.Fatal("object released while the new load still uses it")
	}
	srv.releaseShared(rt2)
	if _, ok := srv.shared["conn"]; ok {
		t.Fatal("object kept after the last load released it")
	}
}

func TestStartFailsOnBusyPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srv, _ := newTestServer(t, "listen: "+l.Addr().String()+"\nroutes:\n  - fhir: true\n")
	if err := srv.Start(); err == nil || !strings.Contains(err.Error(), "listen:") {
		t.Errorf("Start on a busy port: %v", err)
	}
}

// answerWithin runs a request through h in a goroutine and returns its
// answer; the test fails if none comes within the deadline (a caller that
// waits for a runtime Shutdown will never bring back would hang here).
func answerWithin(t *testing.T, h http.Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- do(h, method, target, nil) }()
	select {
	case rec := <-done:
		return rec
	case <-time.After(10 * time.Second):
		t.Fatalf("%s %s: no answer while the gateway shuts down", method, target)
		return nil
	}
}

// After Shutdown has retired the last config, every caller is answered at
// once with 503 and Retry-After: admin requests, endpoints plugins mount,
// and requests plugins make in process, even while a plugin's Close holds
// Shutdown up. Shutdown then completes when Close returns.
func TestShutdownAnswersCallersWhilePluginsClose(t *testing.T) {
	gate := newCloseGate()
	closeGates.Store("shutdown-window", gate)
	defer closeGates.Delete("shutdown-window")
	release := sync.OnceFunc(func() { close(gate.release) })
	defer release() // also when the test fails early
	srv := startTestServer(t, `
plugins:
  held: {type: held-close, label: shutdown-window}
routes:
  - fhir: true
    plugins: [held]
  - name: plain
    path: /plain
    upstream: http://127.0.0.1:9
`)
	admin := srv.AdminHandler()
	if rec := do(gate.handler, "GET", "/fhir/R4/Patient/1", nil); rec.Code != 200 {
		t.Fatalf("in-process request before shutdown: %d %s", rec.Code, rec.Body)
	}
	if rec := do(admin, "GET", "/admin/held", nil); rec.Code != 200 {
		t.Fatalf("plugin admin endpoint before shutdown: %d %s", rec.Code, rec.Body)
	}

	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- srv.Shutdown(context.Background()) }()
	select {
	case <-gate.closing:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not begin closing the plugin")
	}

	// Over the admin listener, which serves until the plugins are closed.
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + srv.AdminAddr() + "/ping")
	if err != nil {
		t.Fatalf("/ping while plugins close: %v", err)
	}
	var ping PingResponse
	json.NewDecoder(resp.Body).Decode(&ping)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || ping.Status != "draining" {
		t.Errorf("/ping while plugins close: %d Retry-After %q, status %q", resp.StatusCode, resp.Header.Get("Retry-After"), ping.Status)
	}
	rec := answerWithin(t, admin, "GET", "/admin/held")
	if rec.Code != 503 || rec.Header().Get("Retry-After") == "" || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Errorf("plugin admin endpoint while plugins close: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	// In process, as a cache warmer: an OperationOutcome on FHIR routes.
	rec = answerWithin(t, gate.handler, "GET", "/fhir/R4/Patient/1")
	var oo struct {
		ResourceType string
		Issue        []struct{ Severity, Code string }
	}
	json.Unmarshal(rec.Body.Bytes(), &oo)
	if rec.Code != 503 || rec.Header().Get("Retry-After") == "" || oo.ResourceType != "OperationOutcome" ||
		len(oo.Issue) != 1 || oo.Issue[0].Code != "transient" {
		t.Errorf("in-process FHIR request while plugins close: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	rec = answerWithin(t, gate.handler, "GET", "/plain")
	if rec.Code != 503 || rec.Header().Get("Retry-After") == "" || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Errorf("in-process plain request while plugins close: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	select {
	case err := <-shutdownDone:
		t.Fatalf("Shutdown returned (%v) while a plugin was still closing", err)
	default:
	}

	release()
	select {
	case err := <-shutdownDone:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not complete after the plugin closed")
	}
	// After Shutdown: still answered at once, and no reload brings plugins back.
	if rec := answerWithin(t, gate.handler, "GET", "/fhir/R4/Patient/1"); rec.Code != 503 {
		t.Errorf("in-process request after Shutdown: %d", rec.Code)
	}
	if err := srv.Reload(context.Background(), srv.Config()); err == nil {
		t.Error("Reload after Shutdown succeeded")
	}
}
