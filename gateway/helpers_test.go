package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorderConfig configures the "recorder" test plugin.
type recorderConfig struct {
	Label string `yaml:"label"`
	Panic bool   `yaml:"panic"`
	Deny  int    `yaml:"deny"`
	// Gate names a requestGate that holds requests in the plugin until
	// the test releases them.
	Gate string `yaml:"gate"`
}

func (c *recorderConfig) Validate() error {
	if c.Label == "" {
		return FieldErrorf("label", "required")
	}
	return nil
}

// recorder appends its label to X-Chain on the way in and to X-Chain-Out
// on the way out, so tests see the order the chain ran in.
type recorder struct {
	cfg    recorderConfig
	closed *closeLog
}

type closeLog struct {
	mu    sync.Mutex
	names []string
}

func (l *closeLog) add(n string) {
	l.mu.Lock()
	l.names = append(l.names, n)
	l.mu.Unlock()
}

func (l *closeLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.names...)
}

// mark returns where the log is now; since(mark) lists what closed after,
// so that a test repeated (go test -count) sees its own closes only.
func (l *closeLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.names)
}

func (l *closeLog) since(mark int) []string { return l.get()[mark:] }

var closes = &closeLog{}

// clientIPSeen is what the "client-ip-probe" plugin saw of the last request
// (requests made with ServeHTTP, on the test's goroutine).
var clientIPSeen string

func (p *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	r.Header.Add("X-Chain", p.cfg.Label)
	if p.cfg.Gate != "" {
		g, _ := requestGates.Load(p.cfg.Gate)
		g.(*requestGate).hold()
	}
	if p.cfg.Panic {
		panic("recorder " + p.cfg.Label + " panics")
	}
	if p.cfg.Deny != 0 {
		Error(w, r, p.cfg.Deny, "denied by "+p.cfg.Label)
		return
	}
	if p.cfg.Label == "whoami" {
		SetIdentity(r.Context(), &Identity{UserID: "u-" + r.Header.Get("X-User"), Role: "nurse"})
	}
	w.Header().Add("X-Chain-Out", p.cfg.Label)
	next.ServeHTTP(w, r)
}

func (p *recorder) Close() error {
	closes.add(p.cfg.Label)
	return nil
}

// requestGate holds the requests of "recorder" plugins configured with its
// name: a test knows when a request is in the plugin (entered) and decides
// when it goes on (release), instead of guessing with sleeps.
type requestGate struct {
	enterOnce sync.Once
	entered   chan struct{} // closed when the first request is held
	release   chan struct{} // closed by open
	openOnce  sync.Once
}

// open lets the held requests, and later ones, go on.
func (g *requestGate) open() { g.openOnce.Do(func() { close(g.release) }) }

var requestGates sync.Map

// newRequestGate registers a gate under name for the test's duration.
func newRequestGate(t *testing.T, name string) *requestGate {
	g := &requestGate{entered: make(chan struct{}), release: make(chan struct{})}
	requestGates.Store(name, g)
	t.Cleanup(func() { requestGates.Delete(name) })
	return g
}

func (g *requestGate) hold() {
	g.enterOnce.Do(func() { close(g.entered) })
	<-g.release
}

// waitEntered waits until a request is held by g.
func (g *requestGate) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the gated plugin")
	}
}

// heldClose is the "held-close" test plugin: its Close reports that it
// began and then waits until the test releases it, so a test can act while
// the gateway is closing plugins. It mounts GET /admin/held on the admin
// listener and keeps the gateway's in-process handler, as a cache warmer
// would.
type heldCloseConfig struct {
	Label string `yaml:"label"`
}

type heldClose struct {
	gate *closeGate
}

// closeGate is what a test holds of a held-close plugin.
type closeGate struct {
	closing chan struct{} // closed when Close begins
	release chan struct{} // closed by the test to let Close return
	handler http.Handler  // the gateway's in-process handler (Env.Handler)
}

func newCloseGate() *closeGate {
	return &closeGate{closing: make(chan struct{}), release: make(chan struct{})}
}

// closeGates maps labels to the gates of held-close plugins; tests add
// theirs before building the server.
var closeGates sync.Map

func (p *heldClose) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	next.ServeHTTP(w, r)
}

func (p *heldClose) Close() error {
	close(p.gate.closing)
	<-p.gate.release
	return nil
}

// fakeFHIR stands in for the embedded FHIR server in gateway tests.
type fakeFHIRConfig struct {
	BasePathValue string `yaml:"base_path"`
}

func (c *fakeFHIRConfig) BasePath() string { return c.BasePathValue }

func TestMain(m *testing.M) {
	RegisterPlugin("recorder", func() *recorderConfig { return &recorderConfig{} },
		func(ctx context.Context, cfg *recorderConfig, env *Env) (Plugin, error) {
			if cfg.Label == "fail-build" {
				return nil, errors.New("cannot build")
			}
			return &recorder{cfg: *cfg, closed: closes}, nil
		})
	RegisterPlugin("client-ip-probe", func() *struct{} { return &struct{}{} },
		func(context.Context, *struct{}, *Env) (Plugin, error) {
			return PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				clientIPSeen = ClientIP(r).String()
				next.ServeHTTP(w, r)
			}), nil
		})
	RegisterPlugin("held-close", func() *heldCloseConfig { return &heldCloseConfig{} },
		func(ctx context.Context, cfg *heldCloseConfig, env *Env) (Plugin, error) {
			g, ok := closeGates.Load(cfg.Label)
			if !ok {
				return nil, errors.New("no close gate for label " + cfg.Label)
			}
			gate := g.(*closeGate)
			gate.handler = env.Handler()
			env.HandleAdmin("GET", "/admin/held", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				WriteJSON(w, http.StatusOK, map[string]string{"held": cfg.Label})
			}))
			return &heldClose{gate: gate}, nil
		})
	RegisterFHIRHandler(func() *fakeFHIRConfig { return &fakeFHIRConfig{BasePathValue: "/fhir/R4"} },
		func(ctx context.Context, cfg *fakeFHIRConfig, env *Env) (http.Handler, error) {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/fhir/R4/Patient/example" { // benchmarks: the same work as the bare handler
					w.Header().Set("Content-Type", "application/fhir+json")
					w.Write(benchBody)
					return
				}
				if r.URL.Path == cfg.BasePathValue+"/panic" {
					panic("fhir handler panics")
				}
				if r.URL.Path == cfg.BasePathValue+"/replay" {
					replayBuffered(w)
					return
				}
				if r.URL.Path == cfg.BasePathValue+"/hold" {
					serveHold(w, r)
					return
				}
				w.Header().Set("Content-Type", "application/fhir+json")
				w.Header().Set("X-Chain-Seen", strings.Join(r.Header.Values("X-Chain"), ","))
				io.WriteString(w, `{"resourceType":"Patient","id":"1","path":"`+r.URL.Path+`"}`)
			}), nil
		})
	os.Exit(m.Run())
}

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newTestServer parses yaml and builds a server whose logs go to the
// returned buffer.
func newTestServer(t *testing.T, yaml string) (*Server, *logBuffer) {
	t.Helper()
	cfg, err := Parse("test.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatalf("parse config: %v", err)
	}
	logs := &logBuffer{}
	srv, err := New(context.Background(), cfg, Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatalf("build server: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if !srv.Draining() {
			srv.Shutdown(ctx)
		}
	})
	return srv, logs
}

func do(h http.Handler, method, target string, body io.Reader, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, body)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
