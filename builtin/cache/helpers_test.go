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
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/gateway/fhirreq"
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
	os.Exit(m.Run())
}

// fakeFHIR is an upstream FHIR server: GETs answer a body naming the path,
// the caller (X-Test-User) and a call count; writes answer 200/201.
type fakeFHIR struct {
	*httptest.Server
	calls   sync.Map // path -> *atomic.Int64
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
	t   testing.TB
	srv *gateway.Server
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

// newGatewayText is newGateway with the redis sections given as YAML.
func newGatewayText(t testing.TB, redis string, up *fakeFHIR, cacheYAML string) *gw {
	t.Helper()
	text := redis + `
plugins:
  as: {type: as}
  cache:
    type: cache
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
	return &gw{t: t, srv: srv}
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

func parseFHIR(method, path string) (fhirreq.Request, bool) {
	return fhirreq.Parse(method, path, "/fhir/R4")
}
