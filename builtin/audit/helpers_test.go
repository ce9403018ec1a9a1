package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/omnigate/omnigate/builtin/fhir" // the embedded FHIR server, the terminal of fhir routes
	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

func TestMain(m *testing.M) {
	// as sets the identity from test headers, standing in for sessions.
	gateway.RegisterPlugin("as", func() *struct{} { return &struct{}{} },
		func(context.Context, *struct{}, *gateway.Env) (gateway.Plugin, error) {
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if u := r.Header.Get("X-Test-User"); u != "" {
					var scopes []string
					if s := r.Header.Get("X-Test-Scopes"); s != "" {
						scopes = strings.Fields(s)
					}
					gateway.SetIdentity(r.Context(), &gateway.Identity{UserID: u, Role: r.Header.Get("X-Test-Role"),
						FHIRUser: r.Header.Get("X-Test-FHIRUser"), PatientID: r.Header.Get("X-Test-Patient"),
						SessionID: "sess-" + u, Scopes: scopes, Method: "session"})
				}
				next.ServeHTTP(w, r)
			}), nil
		})
	// testauthz decides like the authz plugin does, with the access
	// package: a policy from the identity's scopes, a decision per
	// interaction (per entry for Bundles), refusals answered here, the
	// decision written to the access.Record for the plugins before it.
	gateway.RegisterPlugin("testauthz", func() *struct{} { return &struct{}{} },
		func(_ context.Context, _ *struct{}, env *gateway.Env) (gateway.Plugin, error) {
			base := env.Config.FHIRBasePath()
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				testAuthz(base, w, r, next)
			}), nil
		})
	// testaudit is the audit plugin on the clock of the test hook it names.
	gateway.RegisterPlugin("testaudit", func() *testAuditConfig { return &testAuditConfig{Config: *Defaults()} },
		func(ctx context.Context, cfg *testAuditConfig, env *gateway.Env) (gateway.Plugin, error) {
			v, ok := testHooks.Load(cfg.Hook)
			if !ok {
				return nil, fmt.Errorf("unknown test hook %q", cfg.Hook)
			}
			h := v.(*testHook)
			p, err := newPlugin(ctx, &cfg.Config, env, options{clock: h.clock})
			if err != nil {
				return nil, err
			}
			h.plugin.Store(p)
			return p, nil
		})
	// flaky sinks fail while their failures counter (named by path) is
	// above zero, then write to the file sink at path.
	sinkTypes["flaky"] = func(sc SinkConfig, _ sinkDeps) (sink, error) {
		return &flakySink{file: newFileSink(sc.Path), left: flakyCounter(sc.Path)}, nil
	}
	os.Exit(m.Run())
}

// testAuthz: scopes from the identity, X-Break-Glass widens them to
// user/*.rs with the header's reason.
func testAuthz(base string, w http.ResponseWriter, r *http.Request, next http.Handler) {
	id := gateway.IdentityFrom(r.Context())
	rec := access.RecordFrom(r.Context())
	req, ok := fhirreq.Parse(r.Method, r.URL.Path, base)
	if !ok || req.Interaction == fhirreq.Capabilities {
		next.ServeHTTP(w, r)
		return
	}
	var scopes []string
	opts := access.PolicyOptions{}
	if id != nil {
		scopes, opts.Patient = id.Scopes, id.PatientID
		opts.ConfineToPatient = id.Role == "patient"
	}
	if bg := r.Header.Get("X-Break-Glass"); bg != "" {
		scopes = append(scopes, "user/*.rs")
		opts.BreakGlass = bg
	}
	pol := access.NewPolicy(access.ParseScopes(scopes), opts)
	data := access.RecordData{Decided: true, Interaction: req.Interaction, Type: req.Type, BreakGlass: pol.BreakGlass()}
	allowed, reason, patient := true, "", ""
	if req.Interaction == fhirreq.Batch {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		if b, err := fhirreq.ParseBundle(body, base); err == nil {
			for _, e := range b.Entries {
				d := pol.DecideInteraction(e.Interaction, e.Type)
				data.Entries = append(data.Entries, access.EntryDecision{Index: e.Index, Interaction: e.Interaction, Type: e.Type, Allowed: d.Allowed, Reason: d.Reason})
				if !d.Allowed && b.Type == "transaction" {
					allowed, reason = false, fmt.Sprintf("entry %d: %s", e.Index, d.Reason)
				}
			}
		}
	} else {
		d := pol.DecideInteraction(req.Interaction, req.Type)
		allowed, reason, patient = d.Allowed, d.Reason, d.Compartment
	}
	if allowed && pol.BreakGlass() != "" {
		reason = "break-glass"
	}
	data.Allowed, data.Reason, data.Patient = allowed, reason, patient
	rec.Set(data)
	if !allowed {
		gateway.Error(w, r, http.StatusForbidden, reason)
		return
	}
	next.ServeHTTP(w, r.WithContext(access.WithPolicy(r.Context(), pol)))
}

type testAuditConfig struct {
	Config `yaml:",inline"`
	Hook   string `yaml:"test_hook"`
}

// testHook hands a clock to an audit plugin built through the gateway, and
// the plugin back to the test.
type testHook struct {
	clock  *testClock
	plugin atomic.Pointer[Plugin]
}

var (
	testHooks  sync.Map // id -> *testHook
	testHookID atomic.Int64
)

// testClock moves only when the test advances it, from a fixed date.
type testClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*testTimer
}

type testTimer struct {
	at   time.Time
	d    time.Duration
	f    func()
	done bool
}

var testEpoch = time.Date(2026, 9, 1, 10, 0, 0, 0, time.UTC)

func newTestClock() *testClock { return &testClock{now: testEpoch} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d and starts the functions that are due.
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []func()
	kept := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.done:
		case !t.at.After(c.now):
			t.done = true
			due = append(due, t.f)
		default:
			kept = append(kept, t)
		}
	}
	c.timers = kept
	c.mu.Unlock()
	for _, f := range due {
		go f()
	}
}

func (c *testClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &testTimer{at: c.now.Add(d), d: d, f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		stopped := !t.done
		t.done = true
		return stopped
	}
}

// pending returns the durations of the timers waiting, in order of set up.
func (c *testClock) pending() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Duration
	for _, t := range c.timers {
		if !t.done {
			out = append(out, t.d)
		}
	}
	return out
}

// flakySink fails while *left > 0 (counting down), then writes to file.
type flakySink struct {
	file  *fileSink
	left  *atomic.Int64
	calls atomic.Int64
}

var flakyCounters sync.Map // path -> *atomic.Int64

func flakyCounter(path string) *atomic.Int64 {
	v, _ := flakyCounters.LoadOrStore(path, &atomic.Int64{})
	return v.(*atomic.Int64)
}

func (s *flakySink) write(ctx context.Context, lines [][]byte) (int, error) {
	s.calls.Add(1)
	for {
		n := s.left.Load()
		if n == 0 {
			return s.file.write(ctx, lines)
		}
		if n < 0 { // fails for ever
			return 0, errors.New("flaky sink: down")
		}
		if s.left.CompareAndSwap(n, n-1) {
			return 0, fmt.Errorf("flaky sink: failure (%d more)", n-1)
		}
	}
}

func (s *flakySink) close() error { return s.file.close() }

// gw is a gateway with the real embedded FHIR server, the "as" identity
// plugin, the audit plugin on a test clock, and (unless noAuthz) testauthz.
type gw struct {
	t     testing.TB
	text  string // the config
	hook  string // the test hook's id
	srv   *gateway.Server
	clock *testClock
	p     *Plugin
	dir   string // the spool
	file  string // the file sink's path
}

type gwOptions struct {
	audit   string // the audit plugin's keys besides type, test_hook
	noAuthz bool
	store   string // the FHIR store's path; default in memory
	fhir    string // more keys of the fhir section
}

// newGateway builds a gateway. Unless audit names sinks, they are a fhir
// sink and a file sink (gw.file).
func newGateway(t testing.TB, o gwOptions) *gw {
	t.Helper()
	tmp := t.TempDir()
	g := &gw{t: t, dir: filepath.Join(tmp, "spool"), file: filepath.Join(tmp, "audit.jsonl")}
	id := strconv.FormatInt(testHookID.Add(1), 10)
	hook := &testHook{clock: newTestClock()}
	testHooks.Store(id, hook)
	t.Cleanup(func() { testHooks.Delete(id) })
	g.clock = hook.clock
	audit := o.audit
	if !strings.Contains(audit, "sinks:") {
		audit += "\nsinks: [{type: fhir}, {type: file, path: " + strconv.Quote(g.file) + "}]"
	}
	if !strings.Contains(audit, "spool_dir:") {
		audit += "\nspool_dir: " + strconv.Quote(g.dir)
	}
	store := o.store
	if store == "" {
		store = ":memory:"
	}
	chain := "[as, audit, authz]"
	if o.noAuthz {
		chain = "[as, audit]"
	}
	text := `
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
fhir:
  store: {path: ` + strconv.Quote(store) + `}
` + indent(o.fhir, "  ") + `
plugins:
  as: {type: as}
  authz: {type: testauthz}
  audit:
    type: testaudit
    test_hook: "` + id + `"
` + indent(audit, "    ") + `
routes:
  - name: fhir
    fhir: true
    plugins: ` + chain + `
`
	cfg, err := gateway.Parse("test.yaml", []byte(text), nil)
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	g.srv, g.p, g.text, g.hook = srv, hook.plugin.Load(), text, id
	g.waitStarted()
	return g
}

// reload swaps in the config text (use g.text to start from), and points
// g.p at the audit plugin it built.
func (g *gw) reload(text string) error {
	g.t.Helper()
	cfg, err := gateway.Parse("test.yaml", []byte(text), nil)
	if err != nil {
		return err
	}
	v, _ := testHooks.Load(g.hook)
	hook := v.(*testHook)
	before := hook.plugin.Load()
	if err := g.srv.Reload(context.Background(), cfg); err != nil {
		return err
	}
	if p := hook.plugin.Load(); p != before {
		g.p = p
		g.waitStarted()
	}
	return nil
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

// waitStarted waits until the shippers run (OnStart runs in a goroutine).
func (g *gw) waitStarted() {
	g.t.Helper()
	eventually(g.t, "shippers started", func() bool {
		g.p.pipe.mu.Lock()
		applied := g.p.pipe.gen >= g.p.gen
		g.p.pipe.mu.Unlock()
		return applied && len(g.p.pipe.sinkStates()) == len(g.p.cfg.Sinks)
	})
}

// eventually waits for cond, failing the test after 30s: a deadline for
// a condition, not a guess at how long something takes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// as is a caller.
type as struct {
	user, role, fhirUser, patient, scopes string
}

var (
	physician = as{user: "dr-house", role: "physician", fhirUser: "Practitioner/p1", scopes: "user/*.cruds"}
	nurse     = as{user: "nurse-joy", role: "nurse", fhirUser: "Practitioner/p2", scopes: "user/*.rs"}
	auditor   = as{user: "auditor", role: "admin", scopes: "user/AuditEvent.rs"}
)

func (a as) headers() []string {
	if a.user == "" {
		return nil
	}
	return []string{"X-Test-User", a.user, "X-Test-Role", a.role, "X-Test-FHIRUser", a.fhirUser,
		"X-Test-Patient", a.patient, "X-Test-Scopes", a.scopes}
}

// do serves a request through the gateway.
func (g *gw) do(who as, method, path, body string, hdr ...string) *httptest.ResponseRecorder {
	g.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	req.RemoteAddr = "203.0.113.7:4711"
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	hdr = append(who.headers(), hdr...)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	g.srv.ServeHTTP(rec, req)
	return rec
}

// must serves a request and checks its status.
func (g *gw) must(status int, who as, method, path, body string, hdr ...string) *httptest.ResponseRecorder {
	g.t.Helper()
	rec := g.do(who, method, path, body, hdr...)
	if rec.Code != status {
		g.t.Fatalf("%s %s: %d, want %d\n%s", method, path, rec.Code, status, rec.Body)
	}
	return rec
}

// admin serves a request on the admin listener.
func (g *gw) admin(method, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	g.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec
}

// settle flushes the spool and waits until every sink has shipped it.
func (g *gw) settle() {
	g.t.Helper()
	if err := g.p.pipe.flush(); err != nil {
		g.t.Fatal(err)
	}
	eventually(g.t, "sinks caught up", func() bool {
		for _, s := range g.p.pipe.sinkStates() {
			if s.BehindBytes > 0 {
				return false
			}
		}
		return true
	})
}

// records returns the records in the file sink, in order.
func (g *gw) records() []Record {
	g.t.Helper()
	return readRecords(g.t, g.file)
}

func readRecords(t testing.TB, path string) []Record {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: bad line %q: %v", path, sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// byRequest returns the records of request id rid.
func byRequest(recs []Record, rid string) []Record {
	var out []Record
	for _, r := range recs {
		if r.RequestID == rid {
			out = append(out, r)
		}
	}
	return out
}

// events searches the audit trail through the admin endpoint and returns
// the AuditEvents.
func (g *gw) events(query string) []map[string]any {
	g.t.Helper()
	rec := g.admin("GET", "/admin/audit/events?"+query)
	if rec.Code != 200 {
		g.t.Fatalf("events?%s: %d %s", query, rec.Code, rec.Body)
	}
	var b struct {
		Entry []struct {
			Resource map[string]any `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
		g.t.Fatal(err)
	}
	var out []map[string]any
	for _, e := range b.Entry {
		out = append(out, e.Resource)
	}
	return out
}

// entityRefs returns the references of an AuditEvent's entities.
func entityRefs(ev map[string]any) []string {
	var out []string
	for _, e := range ev["entity"].([]any) {
		if what, ok := e.(map[string]any)["what"].(map[string]any); ok {
			if ref, ok := what["reference"].(string); ok {
				out = append(out, ref)
			}
		}
	}
	slices.Sort(out)
	return out
}

func (g *gw) stats() Stats {
	g.t.Helper()
	rec := g.admin("GET", "/admin/audit/stats")
	var out struct {
		Plugins map[string]Stats `json:"plugins"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		g.t.Fatalf("stats: %v\n%s", err, rec.Body)
	}
	return out.Plugins["audit"]
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
