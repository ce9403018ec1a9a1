package wasm

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/gateway"
)

// Guests are built once per test binary; compiled code is cached on disk
// across test binaries and runs.
var (
	buildDir   string
	cacheDir   = testCacheDir() // shared with sdk/wasmtest's test binaries
	builtMu    sync.Mutex
	builtPaths = map[string]string{}
)

// testCacheDir is sdk/wasmtest.CacheDir, which this package cannot import.
func testCacheDir() string {
	if d := os.Getenv("OMNIGATE_WASM_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "omnigate-wasm-cache")
}

func TestMain(m *testing.M) {
	var err error
	buildDir, err = os.MkdirTemp("", "omnigate-wasm-guests")
	if err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(buildDir)
	os.Exit(code)
}

// guest builds testdata/guests/name (or a directory path) and returns the
// module's path.
func guest(t testing.TB, name string) string {
	t.Helper()
	builtMu.Lock()
	defer builtMu.Unlock()
	if p, ok := builtPaths[name]; ok {
		return p
	}
	dir := name
	if !strings.Contains(name, "/") {
		dir = filepath.Join("testdata", "guests", name)
	}
	out := filepath.Join(buildDir, filepath.Base(dir)+".wasm")
	if err := Build(context.Background(), dir, out); err != nil {
		t.Fatal(err)
	}
	builtPaths[name] = out
	return out
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

// generousTimeout is the per-call deadline of tests that are not about the
// deadline: no call of a test guest comes near it, however busy the machine
// (the gateway's default, 10ms, is for benchmarks to check against). Tests
// of the deadline use a guest that loops forever, so that their outcome does
// not depend on the machine's speed either.
const generousTimeout = time.Minute

func newPlugin(t testing.TB, path string, mod func(*Options)) (*Plugin, *logBuffer, *prometheus.Registry) {
	t.Helper()
	logs := &logBuffer{}
	reg := prometheus.NewRegistry()
	opts := Options{
		Name:         "test",
		Path:         path,
		Instances:    2,
		Timeout:      generousTimeout, // tests of the deadline set their own
		StartTimeout: generousTimeout,
		CacheDir:     cacheDir,
		Logger:       slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:   reg,
	}
	if mod != nil {
		mod(&opts)
	}
	p, err := New(context.Background(), opts)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	t.Cleanup(func() { p.Close() })
	return p, logs, reg
}

// upstream answers 200 with the request headers it saw echoed back.
var upstream = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	for _, k := range []string{"X-Seen-Method", "X-Seen-Path", "X-Seen-Route", "X-Seen-User", "X-Seen-FHIR", "X-Hits"} {
		if v := r.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"resourceType":"Patient","id":"p1"}`)
})

type reqOpt func(*http.Request) *http.Request

func withHeader(k, v string) reqOpt {
	return func(r *http.Request) *http.Request { r.Header.Set(k, v); return r }
}

var fhirRoute = gateway.RouteInfo{Name: "fhir", Pattern: "/fhir/R4/*path", FHIR: true}

func serve(p gateway.Plugin, method, target string, opts ...reqOpt) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	r = r.WithContext(gateway.NewRequestContext(r.Context(), fhirRoute, "req-1",
		&gateway.Identity{UserID: "u1", Role: "nurse"}))
	for _, o := range opts {
		r = o(r)
	}
	w := httptest.NewRecorder()
	p.ServeHTTP(w, r, upstream)
	return w
}

func counterValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			if m.Counter != nil {
				total += m.Counter.GetValue()
			}
			if m.Gauge != nil {
				total += m.Gauge.GetValue()
			}
		}
	}
	return total
}

// waitFor waits until cond holds. Its deadline only bounds a test that
// fails: compiling and starting a module under the race detector on a busy
// machine takes many seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var discard = slog.New(slog.DiscardHandler)

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
