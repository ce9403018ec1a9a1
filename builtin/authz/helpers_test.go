package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/omnigate/omnigate/builtin/fhir"
	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/gateway"
)

func TestMain(m *testing.M) {
	// as sets the identity from test headers, standing in for the session
	// plugin (one test uses the real one): X-Test-User, X-Test-Role,
	// X-Test-Scopes (space-separated), X-Test-Patient.
	gateway.RegisterPlugin("as", func() *struct{} { return &struct{}{} },
		func(context.Context, *struct{}, *gateway.Env) (gateway.Plugin, error) {
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if u := r.Header.Get("X-Test-User"); u != "" {
					id := &gateway.Identity{UserID: u, Role: r.Header.Get("X-Test-Role"), PatientID: r.Header.Get("X-Test-Patient")}
					if s := r.Header.Get("X-Test-Scopes"); s != "" {
						id.Scopes = strings.Fields(s)
					}
					gateway.SetIdentity(r.Context(), id)
				}
				next.ServeHTTP(w, r)
			}), nil
		})
	// record puts an access.Record on the context, as an audit plugin
	// does, and keeps what authz wrote in it under the request id.
	gateway.RegisterPlugin("record", func() *struct{} { return &struct{}{} },
		func(context.Context, *struct{}, *gateway.Env) (gateway.Plugin, error) {
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				ctx, rec := access.WithRecord(r.Context())
				next.ServeHTTP(w, r.WithContext(ctx))
				records.Store(gateway.RequestID(r.Context()), rec.Get())
			}), nil
		})
	// probe answers, in X-Test-Policy, what policy reached the handler
	// after authz, and in X-Test-Break-Glass, whether the break-glass
	// header did.
	gateway.RegisterPlugin("probe", func() *struct{} { return &struct{}{} },
		func(context.Context, *struct{}, *gateway.Env) (gateway.Plugin, error) {
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if p := access.FromContext(r.Context()); p != nil {
					var s []string
					for _, sc := range p.Scopes() {
						s = append(s, sc.String())
					}
					w.Header().Set("X-Test-Policy", "patient="+p.Patient()+";scopes="+strings.Join(s, " ")+";bg="+p.BreakGlass())
				} else {
					w.Header().Set("X-Test-Policy", "none")
				}
				if r.Header.Get(DefaultBreakGlassHeader) != "" {
					w.Header().Set("X-Test-Break-Glass", "leaked")
				}
				next.ServeHTTP(w, r)
			}), nil
		})
	// authz-test is authz on a clock that starts at a fixed instant and
	// moves one second per reading.
	gateway.RegisterPlugin("authz-test", Defaults, func(ctx context.Context, cfg *Config, env *gateway.Env) (gateway.Plugin, error) {
		var mu sync.Mutex
		now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		p, err := newPlugin(cfg, env, func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			now = now.Add(time.Second)
			return now
		})
		if err == nil {
			lastBuilt.Store(p)
		}
		return p, err
	})
	code := m.Run()
	if sharedB != nil {
		sharedB.shutdown()
	}
	os.Exit(code)
}

// lastBuilt is the last authz-test plugin built, for benchmarks that call
// it directly.
var lastBuilt atomic.Pointer[Plugin]

// records holds the access records the record plugin saw, by request id.
var records sync.Map

func recordOf(t testing.TB, rec *httptest.ResponseRecorder) access.RecordData {
	t.Helper()
	v, ok := records.Load(rec.Header().Get("X-Request-Id"))
	if !ok {
		t.Fatalf("no access record for request %s", rec.Header().Get("X-Request-Id"))
	}
	return v.(access.RecordData)
}

// logBuffer collects a gateway's log lines.
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

// gw is a gateway under test.
type gw struct {
	*gateway.Server
	logs *logBuffer
}

func newGateway(t testing.TB, yaml string) *gw {
	t.Helper()
	g := startGateway(t, yaml)
	t.Cleanup(g.shutdown)
	return g
}

// startGateway builds a gateway that the caller shuts down.
func startGateway(t testing.TB, yaml string) *gw {
	t.Helper()
	cfg, err := gateway.Parse("t.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return &gw{Server: srv, logs: logs}
}

func (g *gw) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g.Shutdown(ctx)
}

// who is the identity a request is made as.
type who struct {
	user, role, patient, scopes string
}

var (
	physician = who{user: "dr-house", role: "physician"}
	nurse     = who{user: "nurse-joy", role: "nurse"}
	patient85 = who{user: "p85", role: "patient", patient: "85"}
	patient35 = who{user: "p355", role: "patient", patient: "355"}
	nobody    = who{}
)

// do sends a request as w; headers alternate name, value.
func (g *gw) do(as who, method, path string, body any, headers ...string) *httptest.ResponseRecorder {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			panic(err)
		}
		rd = bytes.NewReader(j)
	}
	r := httptest.NewRequest(method, "http://omnigate.test"+path, rd)
	if rd != nil {
		r.Header.Set("Content-Type", "application/fhir+json")
	}
	if as.user != "" {
		r.Header.Set("X-Test-User", as.user)
		r.Header.Set("X-Test-Role", as.role)
		r.Header.Set("X-Test-Patient", as.patient)
		r.Header.Set("X-Test-Scopes", as.scopes)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	g.ServeHTTP(w, r)
	return w
}

func mustStatus(t testing.TB, rec *httptest.ResponseRecorder, want int) {
	t.Helper()
	if rec.Code != want {
		t.Fatalf("status %d, want %d\n%s", rec.Code, want, truncate(rec.Body.String()))
	}
}

func truncate(s string) string {
	if len(s) > 1500 {
		return s[:1500] + "…"
	}
	return s
}

func jsonOf(t testing.TB, rec *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatalf("status %d, body is not JSON: %v\n%s", rec.Code, err, truncate(rec.Body.String()))
	}
	return m
}

// diagnostics returns the first issue's diagnostics of an OperationOutcome.
func diagnostics(t testing.TB, rec *httptest.ResponseRecorder) (code, diag string) {
	t.Helper()
	m := jsonOf(t, rec)
	if m["resourceType"] != "OperationOutcome" {
		t.Fatalf("not an OperationOutcome: %s", truncate(rec.Body.String()))
	}
	is := m["issue"].([]any)[0].(map[string]any)
	d, _ := is["diagnostics"].(string)
	return is["code"].(string), d
}

// resources returns the resources of a Bundle, with their search mode.
func resources(t testing.TB, rec *httptest.ResponseRecorder) (out []map[string]any, modes []string) {
	t.Helper()
	b := jsonOf(t, rec)
	es, _ := b["entry"].([]any)
	for _, e := range es {
		m := e.(map[string]any)
		r, _ := m["resource"].(map[string]any)
		out = append(out, r)
		mode := ""
		if s, ok := m["search"].(map[string]any); ok {
			mode, _ = s["mode"].(string)
		}
		modes = append(modes, mode)
	}
	return out, modes
}

func total(t testing.TB, rec *httptest.ResponseRecorder) int {
	t.Helper()
	v, ok := jsonOf(t, rec)["total"].(float64)
	if !ok {
		t.Fatalf("no total: %s", truncate(rec.Body.String()))
	}
	return int(v)
}

// synthea reads one of the committed synthetic patient Bundles.
func synthea(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "fhir", "testdata", "synthea", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// loadSynthea loads patients 85 and 355 into a server through h, as a
// user the policy lets write.
func loadSynthea(t testing.TB, g *gw, as who) {
	t.Helper()
	for _, f := range []string{"uscore_bundle_patient_85.json", "uscore_bundle_patient_355.json"} {
		rec := g.do(as, "POST", "/fhir/R4", synthea(t, f))
		mustStatus(t, rec, 200)
		for i, e := range jsonOf(t, rec)["entry"].([]any) {
			st := e.(map[string]any)["response"].(map[string]any)["status"].(string)
			if !strings.HasPrefix(st, "201") && !strings.HasPrefix(st, "200") {
				t.Fatalf("%s entry %d: %s", f, i, st)
			}
		}
	}
}

// compartmentOf returns the patient ids a resource names in its subject or
// patient, the usual links (for assertions independent of the code under
// test).
func patientRefs(r map[string]any) []string {
	var out []string
	for _, k := range []string{"subject", "patient", "beneficiary"} {
		if m, ok := r[k].(map[string]any); ok {
			if ref, _ := m["reference"].(string); strings.HasPrefix(ref, "Patient/") {
				out = append(out, strings.TrimPrefix(ref, "Patient/"))
			}
		}
	}
	if r["resourceType"] == "Patient" {
		out = append(out, r["id"].(string))
	}
	return out
}
