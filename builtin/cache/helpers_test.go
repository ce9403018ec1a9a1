package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

func TestMain(m *testing.M) {
	// as sets the identity from test headers (standing in for sessions)
	// and forwards it to the upstream, which echoes it in every body.
	gateway.RegisterPlugin("as", func() *struct{} { return &struct{}{} },
		func(context.Context, *struct{}, *gateway.Env) (gateway.Plugin, error) {
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if u := r.Header.Get("X-Test-User"); u != "" {
					gateway.SetIdentity(r.Context(), &gateway.Identity{UserID: u, Role: r.Header.Get("X-Test-Role"),
						PatientID: r.Header.Get("X-Test-Patient")})
				}
				if id := gateway.IdentityFrom(r.Context()); id != nil {
					r.Header.Set("X-Test-User", id.UserID) // warming requests carry it only in the context
				}
				next.ServeHTTP(w, r)
			}), nil
		})
	// testcache is the cache on the clock of the test hook it names.
	gateway.RegisterPlugin("testcache", func() *testCacheConfig { return &testCacheConfig{Config: *Defaults()} },
		func(ctx context.Context, cfg *testCacheConfig, env *gateway.Env) (gateway.Plugin, error) {
			v, ok := testHooks.Load(cfg.Hook)
			if !ok {
				return nil, fmt.Errorf("unknown test hook %q", cfg.Hook)
			}
			h := v.(*testHook)
			c, err := newCache(ctx, &cfg.Config, env, h.clock)
			if err != nil {
				return nil, err
			}
			h.cache.Store(c)
			return c, nil
		})
	os.Exit(m.Run())
}

// testCacheConfig is the cache's config and the test hook to build it
// with.
type testCacheConfig struct {
	Config `yaml:",inline"`
	Hook   string `yaml:"test_hook"`
}

// testHook hands a clock to a cache built through the gateway, and the
// cache back to the test.
type testHook struct {
	clock *testClock
	cache atomic.Pointer[Cache]
}

var (
	testHooks  sync.Map // id -> *testHook
	testHookID atomic.Int64
)

// testClock is a clock that moves only when the test advances it. It
// starts at a fixed date.
type testClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*testTimer
}

type testTimer struct {
	at   time.Time
	f    func()
	done bool
}

func newTestClock() *testClock {
	return &testClock{now: time.Date(2026, 9, 1, 10, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d and starts the functions that are due,
// each in its own goroutine.
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
	t := &testTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		stopped := !t.done
		t.done = true
		return stopped
	}
}

// fakeFHIR is an upstream FHIR server: GETs answer a body naming the path,
// the caller (X-Test-User) and a call count; writes answer 200/201.
type fakeFHIR struct {
	*httptest.Server
	calls   sync.Map // path -> *atomic.Int64
	holds   sync.Map // path -> chan struct{}: GETs of path wait until it is closed
	total   atomic.Int64
	delay   atomic.Int64 // ns
	failing atomic.Bool
	version atomic.Int64
}

func newFakeFHIR(t testing.TB) *fakeFHIR {
	f := &fakeFHIR{}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

// hold makes GETs of path wait, after they are counted, until release is
// called or their request ends. Release is also called when the test ends.
func (f *fakeFHIR) hold(t testing.TB, path string) (release func()) {
	ch := make(chan struct{})
	f.holds.Store(path, ch)
	var once sync.Once
	release = func() {
		once.Do(func() {
			f.holds.Delete(path)
			close(ch)
		})
	}
	t.Cleanup(release)
	return release
}

func (f *fakeFHIR) count(path string) int64 {
	v, _ := f.calls.LoadOrStore(path, &atomic.Int64{})
	return v.(*atomic.Int64).Load()
}

func (f *fakeFHIR) serve(w http.ResponseWriter, r *http.Request) {
	if d := f.delay.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	if f.failing.Load() {
		http.Error(w, "upstream broken", http.StatusInternalServerError)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		v, _ := f.calls.LoadOrStore(r.URL.Path, &atomic.Int64{})
		n := v.(*atomic.Int64).Add(1)
		f.total.Add(1)
		if ch, ok := f.holds.Load(r.URL.Path); ok {
			select {
			case <-ch.(chan struct{}):
			case <-r.Context().Done():
				return
			}
		}
		q := r.URL.Query()
		if cc := q.Get("cc"); cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		if q.Get("cookie") != "" {
			w.Header().Set("Set-Cookie", "a=b")
		}
		if st := q.Get("status"); st != "" {
			var code int
			fmt.Sscan(st, &code)
			w.WriteHeader(code)
			return
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		w.Header().Set("ETag", fmt.Sprintf(`W/"%d"`, f.version.Load()))
		w.Header().Set("Last-Modified", "Tue, 01 Sep 2026 10:00:00 GMT")
		body, _ := json.Marshal(map[string]any{"resourceType": "Bundle", "path": r.URL.Path, "query": r.URL.RawQuery,
			"user": r.Header.Get("X-Test-User"), "call": n, "version": f.version.Load()})
		w.Write(body)
	default:
		io.Copy(io.Discard, r.Body)
		f.version.Add(1)
		if r.Method == http.MethodPost && !strings.HasSuffix(r.URL.Path, "/R4") {
			w.Header().Set("Location", r.URL.Path+"/new1/_history/1")
			w.WriteHeader(http.StatusCreated)
			return
		}
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[]}`)
	}
}

type gw struct {
	t     testing.TB
	srv   *gateway.Server
	clock *testClock // the cache's clock
	cache *Cache
}

// newGateway builds a gateway whose /fhir/R4 routes go to up through the
// "as" identity plugin and the cache configured by cacheYAML.
func newGateway(t testing.TB, redisURL string, up *fakeFHIR, cacheYAML string) *gw {
	t.Helper()
	redis := ""
	if redisURL != "" {
		redis = "redis:\n  url: " + redisURL + "\n  read_timeout: 1s\n  write_timeout: 1s\n  dial_timeout: 1s\n  reconnect_min: 20ms\n  reconnect_max: 200ms\n"
	}
	return newGatewayText(t, redis, up, cacheYAML)
}

// newGatewayText is newGateway with the redis sections given as YAML. The
// cache runs on a test clock of its own (gw.clock).
func newGatewayText(t testing.TB, redis string, up *fakeFHIR, cacheYAML string) *gw {
	t.Helper()
	id := strconv.FormatInt(testHookID.Add(1), 10)
	hook := &testHook{clock: newTestClock()}
	testHooks.Store(id, hook)
	t.Cleanup(func() { testHooks.Delete(id) })
	text := redis + `
plugins:
  as: {type: as}
  cache:
    type: testcache
    test_hook: "` + id + `"
` + indent(cacheYAML, "    ") + `
routes:
  - name: fhir
    path: /fhir/R4/*path
    upstream: ` + up.URL + `
    fhir_errors: true
    plugins: [as, cache]
  - name: analytics
    path: /analytics/*rest
    upstream: ` + up.URL + `
    plugins: [as, cache]
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
	return &gw{t: t, srv: srv, clock: hook.clock, cache: hook.cache.Load()}
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
	req := httptest.NewRequest(method, path, rd)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	g.srv.ServeHTTP(rec, req)
	return rec
}

// get reads as user and returns the X-Cache result and the decoded body.
func (g *gw) get(path, user string, hdr ...string) (string, map[string]any, *httptest.ResponseRecorder) {
	g.t.Helper()
	if user != "" {
		hdr = append(hdr, "X-Test-User", user, "X-Test-Role", "nurse")
	}
	rec := g.do("GET", path, "", hdr...)
	var body map[string]any
	json.Unmarshal(rec.Body.Bytes(), &body)
	return rec.Header().Get("X-Cache"), body, rec
}

func eventually(t testing.TB, what string, limit time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

func (g *gw) ping() string {
	rec := httptest.NewRecorder()
	g.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/ping", nil))
	return rec.Body.String()
}

// srvCacheUp reports whether /ping shows the cache on Redis again.
func (g *gw) srvCacheUp() bool { return strings.Contains(g.ping(), "entries in redis") }

// waitRedisUp waits until every gateway of gs has its cache on Redis (a
// loaded machine may miss the first connection attempt).
func waitRedisUp(t testing.TB, gs ...*gw) {
	t.Helper()
	for _, g := range gs {
		eventually(t, "cache on redis", 30*time.Second, g.srvCacheUp)
	}
}

// srvCacheDown reports whether /ping shows the cache off Redis.
func (g *gw) srvCacheDown() bool { return strings.Contains(g.ping(), "redis down") }

// getAsync starts g.get in a goroutine and returns where its result
// arrives; ctx is the request's context.
func (g *gw) getAsync(ctx context.Context, path, user string) <-chan *httptest.ResponseRecorder {
	out := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		req := httptest.NewRequestWithContext(ctx, "GET", path, nil)
		req.Header.Set("X-Test-User", user)
		req.Header.Set("X-Test-Role", "nurse")
		rec := httptest.NewRecorder()
		g.srv.ServeHTTP(rec, req)
		out <- rec
	}()
	return out
}

// await returns the result from ch, or fails the test after limit.
func await[T any](t testing.TB, what string, limit time.Duration, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(limit):
		t.Fatalf("%s: not within %s", what, limit)
		var zero T
		return zero
	}
}

func parseFHIR(method, path string) (fhirreq.Request, bool) {
	return fhirreq.Parse(method, path, "/fhir/R4")
}
