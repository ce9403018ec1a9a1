// Package wasmtest runs OmniGate WebAssembly policy plugins inside go test.
// It builds a plugin with the standard toolchain, loads the module into the
// real host (plugins/wasm) with a given config, KV contents and clock, and
// runs requests through it with a given identity in front of a stub
// upstream. Results tell the decision, status, headers and body; the plugin
// records its logs, metrics and KV for assertions.
//
//	func TestRequireHeader(t *testing.T) {
//		p := wasmtest.Load(t, wasmtest.Build(t, "."), wasmtest.Options{
//			Config: map[string]any{"header": "X-Tenant"},
//		})
//		res := p.Do(t, wasmtest.Request{Path: "/fhir/R4/Patient/1"})
//		if res.Decision != wasmtest.Deny || res.Status != 400 {
//			t.Errorf("got %s %d", res.Decision, res.Status)
//		}
//	}
//
// Table-driven cases can also live in YAML files (see Cases) and run with
// RunCases or with "omnigate plugin test PLUGIN.wasm CASES.yaml".
package wasmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/plugins/wasm"
)

// CacheDir is where the harness caches compiled modules, shared by the
// test binaries of a go test run (and later runs): $OMNIGATE_WASM_CACHE,
// else a folder in the temp dir. wazero keys it by module hash and version.
func CacheDir() string {
	if d := os.Getenv("OMNIGATE_WASM_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "omnigate-wasm-cache")
}

var (
	buildMu  sync.Mutex
	buildDir string
	built    = map[string]string{}
)

// Build compiles the Go plugin in dir (GOOS=wasip1 GOARCH=wasm go build
// -buildmode=c-shared) once per test binary and returns the module's path.
// It fails the test with the compiler's output when the build fails.
func Build(t testing.TB, dir string) string {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[abs]; ok {
		return p
	}
	if buildDir == "" {
		if buildDir, err = os.MkdirTemp("", "omnigate-wasmtest"); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(buildDir, fmt.Sprintf("%d-%s.wasm", len(built), filepath.Base(abs)))
	if err := wasm.Build(context.Background(), abs, out); err != nil {
		t.Fatal(err)
	}
	built[abs] = out
	return out
}

// DefaultTimeout is the harness's CPU budget of a call into the guest:
// the gateway's default, so that a test shows what production will do.
// The budget is charged on the CPU clock of the call's thread, so a busy
// machine or a slow host does not eat into it; the wall-clock backstop is
// wasm.DefaultWallTimeout of the budget, as in the gateway.
const DefaultTimeout = wasm.DefaultTimeout

// StartTimeout bounds starting an instance in the harness: generous, since
// starting a guest is not what a plugin's tests are about and is slow under
// the race detector.
const StartTimeout = time.Minute

// Options configure a plugin under test.
type Options struct {
	// Name is the plugin's name (logs, metrics, KV namespace). Default "test".
	Name string
	// Config is the plugin's config: []byte or string of JSON, or any
	// value, marshalled to JSON. Default: none ("null").
	Config any
	// KV seeds the store: guest keys to values.
	KV map[string]string
	// Now starts the clock. Default 2026-01-01T00:00:00Z. Advance it with
	// Plugin.Advance.
	Now time.Time
	// FailOpen selects the "fail: open" mode.
	FailOpen bool
	// Timeout is the CPU budget of one call, as the plugin's "timeout".
	// Default DefaultTimeout, the gateway's default: a plugin whose calls
	// need more fails its tests as it would fail its requests. A plugin
	// configured with a larger budget in production sets the same here.
	Timeout time.Duration
	// WallTimeout is the wall-clock backstop of one call, as the plugin's
	// "wall_timeout". Default wasm.DefaultWallTimeout(Timeout).
	WallTimeout time.Duration
	// MemoryLimit, Instances, MaxRequestBody and MaxResponseBody are as in
	// wasm.Options. Instances defaults to 1.
	MemoryLimit     int64
	Instances       int
	MaxRequestBody  int64
	MaxResponseBody int64
	// SharedKV makes the plugin use another's KV store and clock, as two
	// gateway instances share one Redis.
	SharedKV *Plugin
}

// Plugin is a loaded plugin under test with its own KV, clock, log and
// metrics registry.
type Plugin struct {
	name  string
	p     *wasm.Plugin
	kv    *wasm.MemoryKV
	reg   *prometheus.Registry
	logs  *logRecorder
	clock *clock
	seq   int

	respStops float64
}

// Load loads the module at path; the test fails if it does not load. The
// plugin is closed when the test ends.
func Load(t testing.TB, path string, opts Options) *Plugin {
	t.Helper()
	p, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// Open is Load without a testing.TB, for tools: the caller closes it.
func Open(path string, opts Options) (*Plugin, error) {
	if opts.Name == "" {
		opts.Name = "test"
	}
	if opts.Now.IsZero() {
		opts.Now = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if opts.Instances == 0 {
		opts.Instances = 1
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	conf, err := configBytes(opts.Config)
	if err != nil {
		return nil, err
	}
	c := &clock{t: opts.Now}
	kv := wasm.NewMemoryKV(wasm.MemoryKVOptions{Now: c.Now})
	if opts.SharedKV != nil {
		c, kv = opts.SharedKV.clock, opts.SharedKV.kv
	}
	tp := &Plugin{name: opts.Name, kv: kv, reg: prometheus.NewRegistry(), logs: &logRecorder{}, clock: c}
	for k, v := range opts.KV {
		tp.SetKV(k, v, 0)
	}
	tp.p, err = wasm.New(context.Background(), wasm.Options{
		Name:            opts.Name,
		Path:            path,
		Config:          conf,
		FailOpen:        opts.FailOpen,
		Timeout:         opts.Timeout,
		WallTimeout:     opts.WallTimeout,
		StartTimeout:    StartTimeout,
		MemoryLimit:     opts.MemoryLimit,
		Instances:       opts.Instances,
		MaxRequestBody:  opts.MaxRequestBody,
		MaxResponseBody: opts.MaxResponseBody,
		CacheDir:        CacheDir(),
		Logger:          slog.New(tp.logs),
		Registerer:      tp.reg,
		KV:              kv,
		Now:             c.Now,
	})
	if err != nil {
		return nil, err
	}
	return tp, nil
}

func configBytes(c any) ([]byte, error) {
	switch v := c.(type) {
	case nil:
		return nil, nil
	case []byte:
		return v, nil
	case string:
		return []byte(v), nil
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("wasmtest: config: %w", err)
	}
	return b, nil
}

// Close closes the plugin.
func (p *Plugin) Close() error { return p.p.Close() }

// Host returns the plugin as the gateway runs it.
func (p *Plugin) Host() *wasm.Plugin { return p.p }

// Decisions.
const (
	// Allow: the request reached the upstream (the plugin may have changed
	// it, or the response).
	Allow = "allow"
	// Deny: the plugin answered the request itself (Deny or Respond), in
	// the request or the response phase.
	Deny = "deny"
	// Fail: the plugin failed (trap, panic, deadline, ABI error); the
	// response is the failure mode's.
	Fail = "fail"
)

// Request is a request to run through the plugin.
type Request struct {
	// Method defaults to GET.
	Method string
	// Path is the request target: path and query. Default "/".
	Path string
	// Header holds request headers.
	Header map[string]string
	// Body is the request body. A batch or transaction Bundle POSTed to
	// the FHIR base gives the plugin its entries as interactions
	// (wasm.Request.Interactions), as the gateway does.
	Body string
	// Identity is the caller; nil is anonymous.
	Identity *gateway.Identity
	// Route is the matched route's name. Default "fhir".
	Route string
	// NotFHIR makes the route a plain one: no FHIR context, errors as
	// application/problem+json. By default the route is a FHIR route at
	// FHIRBase.
	NotFHIR bool
	// FHIRBase is the FHIR base path of the route. Default "/fhir/R4".
	FHIRBase string
	// RemoteAddr is the client's address. Default "192.0.2.1:1234".
	RemoteAddr string
	// Upstream is what the rest of the chain answers.
	Upstream Upstream
}

// Upstream is the stub response behind the plugin.
type Upstream struct {
	// Status defaults to 200.
	Status int
	// Header holds response headers. Content-Type defaults to
	// application/fhir+json.
	Header map[string]string
	// Body is the response body. Default `{"resourceType":"Patient","id":"example"}`.
	Body string
}

// Result is what a request got.
type Result struct {
	// Decision is Allow, Deny or Fail.
	Decision string
	// Status, Header and Body are the response the client got.
	Status int
	Header http.Header
	Body   string
	// UpstreamCalled reports whether the request reached the upstream,
	// UpstreamHeader holds the request headers it saw and UpstreamBody the
	// request body it read.
	UpstreamCalled bool
	UpstreamHeader http.Header
	UpstreamBody   string
	// Logs are the log records written while serving the request.
	Logs []LogRecord
}

// Do runs one request through the plugin.
func (p *Plugin) Do(t testing.TB, req Request) *Result {
	t.Helper()
	return p.Serve(req)
}

// Serve is Do without a testing.TB.
func (p *Plugin) Serve(req Request) *Result {
	if req.Method == "" {
		req.Method = http.MethodGet
	}
	if req.Path == "" {
		req.Path = "/"
	}
	if req.Route == "" {
		req.Route = "fhir"
	}
	if req.FHIRBase == "" {
		req.FHIRBase = "/fhir/R4"
	}
	var body io.Reader
	if req.Body != "" {
		body = strings.NewReader(req.Body)
	}
	r := httptest.NewRequest(req.Method, req.Path, body)
	if req.RemoteAddr != "" {
		r.RemoteAddr = req.RemoteAddr
	}
	for k, v := range req.Header {
		r.Header.Set(k, v)
	}
	p.seq++
	id := fmt.Sprintf("wasmtest-%d", p.seq)
	r.Header.Set(gateway.RequestIDHeader, id)
	info := gateway.RouteInfo{Name: req.Route, Pattern: "/*path"}
	if !req.NotFHIR {
		info.FHIR, info.Pattern = true, strings.TrimSuffix(req.FHIRBase, "/")+"/*path"
	}
	var ident *gateway.Identity
	if req.Identity != nil {
		c := *req.Identity
		ident = &c
	}
	r = r.WithContext(gateway.NewRequestContext(r.Context(), info, id, ident))

	res := &Result{}
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res.UpstreamCalled = true
		res.UpstreamHeader = r.Header.Clone()
		if b, err := io.ReadAll(r.Body); err == nil {
			res.UpstreamBody = string(b)
		}
		u := req.Upstream
		w.Header().Set("Content-Type", "application/fhir+json")
		for k, v := range u.Header {
			w.Header().Set(k, v)
		}
		if u.Status == 0 {
			u.Status = http.StatusOK
		}
		if u.Body == "" {
			u.Body = `{"resourceType":"Patient","id":"example"}`
		}
		w.WriteHeader(u.Status)
		io.WriteString(w, u.Body)
	})
	failures := p.failures()
	before := p.logs.len()
	rec := httptest.NewRecorder()
	rec.Header().Set(gateway.RequestIDHeader, id)
	p.p.ServeHTTP(rec, r, up)
	res.Status, res.Header, res.Body = rec.Code, rec.Header(), rec.Body.String()
	res.Logs = p.logs.since(before)
	switch {
	case p.failures() > failures:
		res.Decision = Fail
	case res.UpstreamCalled && !p.stoppedInResponse(res):
		res.Decision = Allow
	default:
		res.Decision = Deny
	}
	return res
}

// stoppedInResponse tells whether a response-phase plugin replaced the
// upstream's answer with a local reply (counted as a stop).
func (p *Plugin) stoppedInResponse(res *Result) bool {
	n := p.metric(wasm.MetricDecisions, map[string]string{"phase": "response", "action": "stop"})
	prev := p.respStops
	p.respStops = n
	return n > prev
}

func (p *Plugin) failures() float64 { return p.metric(wasm.MetricFailures, nil) }

// Counter returns the value of the plugin's counter name (wasm.Count).
func (p *Plugin) Counter(name string) float64 {
	return p.metric(wasm.MetricCounter, map[string]string{"name": name})
}

// Metric sums the samples of the metric called name whose labels include
// labels.
func (p *Plugin) metric(name string, labels map[string]string) float64 {
	mfs, err := p.reg.Gather()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				ok := false
				for _, lp := range m.GetLabel() {
					ok = ok || lp.GetName() == k && lp.GetValue() == v
				}
				if !ok {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			}
		}
	}
	return total
}

// Registry returns the plugin's metrics registry.
func (p *Plugin) Registry() *prometheus.Registry { return p.reg }

func (p *Plugin) kvKey(key string) string { return "wasm:" + p.name + ":" + key }

// KV returns the value the plugin stored under key.
func (p *Plugin) KV(key string) (string, bool) {
	v, ok, _ := p.kv.Get(context.Background(), p.kvKey(key))
	return string(v), ok
}

// SetKV stores a value as the plugin would (ttl 0: no expiry).
func (p *Plugin) SetKV(key, val string, ttl time.Duration) {
	p.kv.Set(context.Background(), p.kvKey(key), []byte(val), ttl)
}

// Now returns the plugin's clock.
func (p *Plugin) Now() time.Time { return p.clock.Now() }

// Advance moves the plugin's clock (and KV expiry) forward by d.
func (p *Plugin) Advance(d time.Duration) { p.clock.Advance(d) }

// Logs returns every log record written since the plugin was loaded.
func (p *Plugin) Logs() []LogRecord { return p.logs.since(0) }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// LogRecord is one record the plugin (or the host about it) logged.
type LogRecord struct {
	Level   slog.Level
	Message string
	Attrs   map[string]string
}

func (r LogRecord) String() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, k := range slices.Sorted(maps.Keys(r.Attrs)) {
		fmt.Fprintf(&b, " %s=%s", k, r.Attrs[k])
	}
	return b.String()
}

// logRecorder is a slog.Handler that keeps records.
type logRecorder struct {
	mu    sync.Mutex
	recs  []LogRecord
	attrs []slog.Attr
	root  *logRecorder
}

func (l *logRecorder) base() *logRecorder {
	if l.root != nil {
		return l.root
	}
	return l
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	rec := LogRecord{Level: r.Level, Message: r.Message, Attrs: map[string]string{}}
	for _, a := range l.attrs {
		rec.Attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.Attrs[a.Key] = a.Value.String()
		return true
	})
	b := l.base()
	b.mu.Lock()
	b.recs = append(b.recs, rec)
	b.mu.Unlock()
	return nil
}

func (l *logRecorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &logRecorder{attrs: append(append([]slog.Attr(nil), l.attrs...), attrs...), root: l.base()}
}

func (l *logRecorder) WithGroup(string) slog.Handler { return l }

func (l *logRecorder) len() int {
	b := l.base()
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.recs)
}

func (l *logRecorder) since(i int) []LogRecord {
	b := l.base()
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]LogRecord(nil), b.recs[i:]...)
}
