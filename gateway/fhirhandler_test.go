package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// fhirProbe keeps the FHIRHandler of the env it was built with, and what
// that handler answered when called from the constructor.
type fhirProbe struct {
	mu          sync.Mutex
	h           http.Handler
	atBuild     int
	closeStatus int
}

var (
	fhirProbes    sync.Map // label -> *fhirProbe
	fhirProbeOnce sync.Once
)

// registerFHIRProbe registers the plugin type when a test needs it (not in
// init: the golden config errors list the registered types).
func registerFHIRProbe() {
	fhirProbeOnce.Do(registerFHIRProbeType)
}

func registerFHIRProbeType() {
	RegisterPlugin("fhir-probe", func() *struct {
		Label string `yaml:"label"`
	} {
		return &struct {
			Label string `yaml:"label"`
		}{}
	}, func(_ context.Context, cfg *struct {
		Label string `yaml:"label"`
	}, env *Env) (Plugin, error) {
		p := &fhirProbe{h: env.FHIRHandler()}
		rec := httptest.NewRecorder()
		p.h.ServeHTTP(rec, httptest.NewRequest("GET", "/fhir/R4/Patient/1", nil))
		p.atBuild = rec.Code
		fhirProbes.Store(cfg.Label, p)
		return p, nil
	})
}

func (p *fhirProbe) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	next.ServeHTTP(w, r)
}

// Close calls the FHIR server once more: it must still be there.
func (p *fhirProbe) Close() error {
	rec := httptest.NewRecorder()
	p.h.ServeHTTP(rec, httptest.NewRequest("GET", "/fhir/R4/Patient/1", nil))
	p.mu.Lock()
	p.closeStatus = rec.Code
	p.mu.Unlock()
	return nil
}

// Env.FHIRHandler reaches the embedded FHIR server without the route's
// chain, once the load serves; without a FHIR route it answers 503.
func TestEnvFHIRHandler(t *testing.T) {
	registerFHIRProbe()
	srv, _ := newTestServer(t, `
plugins:
  probe: {type: fhir-probe, label: serving}
  mark: {type: recorder, label: mark}
routes:
  - fhir: true
    plugins: [probe, mark]
`)
	v, _ := fhirProbes.Load("serving")
	p := v.(*fhirProbe)
	if p.atBuild != http.StatusServiceUnavailable {
		t.Errorf("called from the constructor: %d, want 503 (the load does not serve yet)", p.atBuild)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/fhir/R4/Patient/1", nil)
	req.Header.Set("X-Chain", "client")
	p.h.ServeHTTP(rec, req)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"resourceType":"Patient"`) {
		t.Fatalf("in process: %d %s", rec.Code, rec.Body)
	}
	if seen := rec.Header().Get("X-Chain-Seen"); seen != "client" || rec.Header().Get("X-Request-Id") != "" {
		t.Errorf("the in-process request went through the route (chain %q, request id %q)", seen, rec.Header().Get("X-Request-Id"))
	}
	// Through the route the chain runs, for comparison.
	if rec := do(srv, "GET", "/fhir/R4/Patient/1", nil); rec.Header().Get("X-Chain-Seen") != "mark" {
		t.Errorf("through the route: chain %q", rec.Header().Get("X-Chain-Seen"))
	}

	// After a reload to a config without the FHIR server, it answers 503;
	// the plugin of the old load could still reach the server as it closed.
	cfg, err := Parse("test.yaml", []byte("plugins:\n  probe: {type: fhir-probe, label: nofhir}\nroutes:\n  - path: /x\n    upstream: http://127.0.0.1:1\n    plugins: [probe]\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	srv.closing.Wait()
	p.mu.Lock()
	closeStatus := p.closeStatus
	p.mu.Unlock()
	if closeStatus != 200 {
		t.Errorf("from the retired plugin's Close: %d, want 200 (its own load still has the FHIR server)", closeStatus)
	}
	rec = httptest.NewRecorder()
	p.h.ServeHTTP(rec, httptest.NewRequest("GET", "/fhir/R4/Patient/1", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "OperationOutcome") {
		t.Errorf("without a FHIR route: %d %s", rec.Code, rec.Body)
	}
}
