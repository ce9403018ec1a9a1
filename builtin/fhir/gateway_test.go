package fhir

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/omnigate/omnigate/gateway"
)

func newGateway(t testing.TB, yaml string) *gateway.Server {
	t.Helper()
	cfg, err := gateway.Parse("t.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv
}

const gatewayYAML = `
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
fhir:
  store: {path: ":memory:"}
routes:
  - name: fhir
    fhir: true
`

// The server answers through the real gateway: routing at the base path
// and below it, body limits, errors as OperationOutcomes.
func TestThroughGateway(t *testing.T) {
	srv := newGateway(t, gatewayYAML)
	r := do(t, srv, "PUT", "/fhir/R4/Patient/g1", `{"resourceType":"Patient","id":"g1","gender":"female"}`)
	mustStatus(t, r, 201)
	if r.header.Get("X-Request-Id") == "" {
		t.Error("no request id: the gateway did not handle the request")
	}
	r = do(t, srv, "GET", "/fhir/R4/Patient/g1", nil)
	mustStatus(t, r, 200)
	if r.json(t)["gender"] != "female" || r.header.Get("ETag") != `W/"1"` {
		t.Errorf("read through the gateway: %s", r.body)
	}
	mustStatus(t, do(t, srv, "GET", "/fhir/R4/metadata", nil), 200)
	b := `{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}}]}`
	mustStatus(t, do(t, srv, "POST", "/fhir/R4", b), 200)
	r = do(t, srv, "GET", "/fhir/R4/Patient?gender=female", nil)
	mustStatus(t, r, 200)
	if r.json(t)["total"].(float64) != 1 {
		t.Errorf("search: %s", r.body)
	}
	r = do(t, srv, "GET", "/fhir/R4/Nope", nil)
	mustStatus(t, r, 404)
	if r.json(t)["resourceType"] != "OperationOutcome" {
		t.Error("404 is not an OperationOutcome")
	}
}

func TestGatewayConfig(t *testing.T) {
	srv := newGateway(t, strings.Replace(gatewayYAML, "fhir:\n", "fhir:\n  base_path: /api/fhir\n  default_count: 5\n", 1))
	mustStatus(t, do(t, srv, "GET", "/api/fhir/metadata", nil), 200)
	mustStatus(t, do(t, srv, "GET", "/fhir/R4/metadata", nil), 404)

	for _, c := range []struct{ yaml, want string }{
		{"fhir:\n  store: {path: \"\"}\n", `t.yaml:2`},
		{"fhir:\n  store: {sync: sometimes}\n", "store.sync"},
		{"fhir:\n  base_path: fhir\n", "base_path"},
		{"fhir:\n  unknown_key: 1\n", "unknown_key"},
		{"fhir:\n  cors: {allowed_origins: [\"not a url\"]}\n", "cors.allowed_origins[0]"},
		{"fhir:\n  default_count: 50\n  max_count: 10\n", "max_count"},
		{"fhir:\n  search:\n    unknown_params: loose\n", "t.yaml:3"},
		{"fhir:\n  search:\n    unknown_params: loose\n", "search.unknown_params"},
	} {
		_, err := gateway.Parse("t.yaml", []byte(c.yaml+"routes:\n  - name: fhir\n    fhir: true\n"), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to mention %q", c.yaml, err, c.want)
		}
	}
}

// A reload that keeps the store path keeps the open store and its data.
func TestGatewayReloadKeepsStore(t *testing.T) {
	srv := newGateway(t, gatewayYAML)
	mustStatus(t, do(t, srv, "PUT", "/fhir/R4/Patient/r1", `{"resourceType":"Patient","id":"r1"}`), 201)
	cfg, err := gateway.Parse("t.yaml", []byte(strings.Replace(gatewayYAML, "fhir:\n", "fhir:\n  default_count: 7\n", 1)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	mustStatus(t, do(t, srv, "GET", "/fhir/R4/Patient/r1", nil), 200)
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := gateway.Parse("t.yaml", []byte("fhir:\n  store: {path: /tmp/x.db}\nroutes:\n  - name: fhir\n    fhir: true\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ConfigFrom(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.Store.Path != "/tmp/x.db" || c.Store.Sync != "full" || c.Store.ReadCache != 64<<20 || c.BasePath() != "/fhir/R4" ||
		c.DefaultCount != 20 || c.MaxCount != 1000 || !boolOr(c.UpdateCreate, false) || !boolOr(c.SchemaValidation, false) {
		t.Errorf("defaults: %+v", c)
	}
}

// The boolean settings are independent: turning one off leaves the other
// at its default.
func TestConfigBoolsIndependent(t *testing.T) {
	for _, tc := range []struct {
		yaml                   string
		updateCreate, validate bool
	}{
		{"validate: false", true, false},
		{"update_create: false", false, true},
		{"validate: false\n  update_create: true", true, false},
	} {
		cfg, err := gateway.Parse("t.yaml", []byte("fhir:\n  "+tc.yaml+"\nroutes:\n  - name: fhir\n    fhir: true\n"), nil)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ConfigFrom(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if boolOr(c.UpdateCreate, false) != tc.updateCreate || boolOr(c.SchemaValidation, false) != tc.validate {
			t.Errorf("%q: update_create %v, validate %v; want %v, %v", tc.yaml, *c.UpdateCreate, *c.SchemaValidation, tc.updateCreate, tc.validate)
		}
	}
}

// inProcessHandlers holds, by plugin name, the in-process FHIR handler the
// "inproc" test plugin was given.
var inProcessHandlers sync.Map

func init() {
	gateway.RegisterPlugin("inproc", func() *struct{} { return &struct{}{} },
		func(_ context.Context, _ *struct{}, env *gateway.Env) (gateway.Plugin, error) {
			inProcessHandlers.Store(env.Name, env.FHIRHandler())
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) { next.ServeHTTP(w, r) }), nil
		})
}

// TestInProcessWritesAreTrusted: what the gateway's own plugins write in
// process (the audit trail) skips schema validation; the same write from a
// client does not.
func TestInProcessWritesAreTrusted(t *testing.T) {
	srv := newGateway(t, gatewayYAML+"    plugins: [trusting]\nplugins:\n  trusting: {type: inproc}\n")
	v, _ := inProcessHandlers.Load("trusting")
	inProcess := v.(http.Handler)
	bad := `{"resourceType":"Observation","status":7,"code":{"text":"x"}}` // status is a code, not a number
	send := func(h http.Handler) int {
		r := httptest.NewRequest("POST", "/fhir/R4/Observation", strings.NewReader(bad))
		r.Header.Set("Content-Type", "application/fhir+json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	if code := send(srv); code != http.StatusBadRequest {
		t.Errorf("a client's invalid write: %d, want 400", code)
	}
	if code := send(inProcess); code != http.StatusCreated {
		t.Errorf("an in-process write: %d, want 201 (trusted)", code)
	}
}
