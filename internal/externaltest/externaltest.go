// Package externaltest runs external policy plugins through a real gateway
// in the gateway's own tests: it builds plugin binaries, starts an
// upstream, builds a gateway from YAML, and finds the plugin processes
// that are left. Plugin authors test without a gateway, with the public
// harness sdk/external/externaltest. The
// test imports plugins/external itself (for "type: external").
//
// Importing it registers the plugin type "test-identity", which sets the
// caller's identity from the request headers X-Test-User, X-Test-Role,
// X-Test-Patient and X-Test-Scopes (space-separated), standing in for the
// session plugin.
package externaltest

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/external/externaltest"
)

type identityConfig struct{}

func init() {
	gateway.RegisterPlugin("test-identity", func() *identityConfig { return &identityConfig{} },
		func(context.Context, *identityConfig, *gateway.Env) (gateway.Plugin, error) {
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if u := r.Header.Get("X-Test-User"); u != "" {
					gateway.SetIdentity(r.Context(), &gateway.Identity{
						UserID:    u,
						Role:      r.Header.Get("X-Test-Role"),
						PatientID: r.Header.Get("X-Test-Patient"),
						Scopes:    strings.Fields(r.Header.Get("X-Test-Scopes")),
						SessionID: "s-" + u,
						Method:    "test",
					})
				}
				next.ServeHTTP(w, r)
			}), nil
		})
}

// Build compiles the main package pkg (an import path or a directory) into
// a temporary directory of t and returns the binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	return externaltest.Build(t, pkg)
}

// Upstream starts an upstream that answers every request with a small
// FHIR Patient, echoing the request headers whose names start with
// X-Seen as response headers. It is closed when t ends.
func Upstream(t testing.TB) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range r.Header {
			if strings.HasPrefix(k, "X-Seen") {
				w.Header()[k] = v
			}
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		io.WriteString(w, `{"resourceType":"Patient","id":"p1"}`)
	}))
	t.Cleanup(up.Close)
	return up
}

// Logs collects log output safely across goroutines.
type Logs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Gateway parses yaml and builds a gateway whose JSON logs go to the
// returned Logs; it is shut down when t ends (Shutdown twice is harmless).
func Gateway(t testing.TB, yaml string) (*gateway.Server, *Logs) {
	t.Helper()
	srv, logs, err := TryGateway(yaml)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Shutdown(srv) })
	return srv, logs
}

// TryGateway is Gateway returning the error of a config that does not load.
func TryGateway(yaml string) (*gateway.Server, *Logs, error) {
	cfg, err := gateway.Parse("test.yaml", []byte(yaml), nil)
	if err != nil {
		return nil, nil, err
	}
	logs := &Logs{}
	srv, err := gateway.New(context.Background(), cfg,
		gateway.Options{Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	return srv, logs, err
}

// Shutdown shuts srv down within 10s, unless it already is.
func Shutdown(srv *gateway.Server) {
	if srv.Draining() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}

// Do serves one request through h; hdr are header name, value pairs.
func Do(h http.Handler, method, target string, body io.Reader, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, body)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// Children returns the ids of this process's child processes, zombies
// included, from /proc. It skips the test when /proc is not there.
func Children(t testing.TB) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skip("no /proc: cannot list child processes")
	}
	self := os.Getpid()
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		rest := string(stat[bytes.LastIndexByte(stat, ')')+1:])
		f := strings.Fields(rest)
		if len(f) > 1 {
			if ppid, _ := strconv.Atoi(f[1]); ppid == self {
				out = append(out, pid)
			}
		}
	}
	return out
}

// Alive reports whether process pid exists and is not a zombie.
func Alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// Eventually polls cond every 10ms until it holds or timeout passes.
func Eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
