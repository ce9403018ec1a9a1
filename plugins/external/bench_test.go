package external

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/externaltest"
	"github.com/omnigate/omnigate/plugins/wasm"
)

// benchBody is a 300-byte FHIR Patient, what the gateway benchmarks serve.
var benchBody = []byte(`{"resourceType":"Patient","id":"example","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00Z"},` +
	`"active":true,"name":[{"use":"official","family":"Chalmers","given":["Peter","James"]}],"gender":"male",` +
	`"birthDate":"1974-12-25","managingOrganization":{"reference":"Organization/1"},"text":{"status":"generated"}}`)

type staticFHIRConfig struct{}

func init() {
	// The terminal of the benchmark routes: a static answer, so that the
	// figures are the gateway's and the plugin's, not an upstream's.
	gateway.RegisterFHIRHandler(func() *staticFHIRConfig { return &staticFHIRConfig{} },
		func(context.Context, *staticFHIRConfig, *gateway.Env) (http.Handler, error) {
			return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/fhir+json")
				w.Write(benchBody)
			}), nil
		})
}

// BenchmarkRequireHeader runs the same trivial policy — deny requests
// without X-Tenant — as no plugin, as a WebAssembly plugin
// (examples/require-header) and as an external plugin (this test binary),
// in one run. Every request carries the header, so every request is
// allowed and reaches the terminal. "serial" is the latency of one request
// at a time; "parallel" the throughput with GOMAXPROCS×4 goroutines.
func BenchmarkRequireHeader(b *testing.B) {
	dir := b.TempDir()
	module := filepath.Join(dir, "require-header.wasm")
	if err := wasm.Build(context.Background(), "../../examples/require-header", module); err != nil {
		b.Fatal(err)
	}
	plugins := []struct{ name, yaml string }{
		{"none", ""},
		{"wasm", fmt.Sprintf(`
  policy:
    type: wasm
    path: %s
    cache_dir: %s
    config: {header: X-Tenant}`, module, filepath.Join(os.TempDir(), "omnigate-wasm-test-cache"))},
		{"external", fmt.Sprintf(`
  policy:
    type: external
    path: %s
    env: {%s: require-header}
    config: {header: X-Tenant}`, os.Args[0], helperEnv)},
	}
	for _, p := range plugins {
		chain := "[]"
		if p.yaml != "" {
			chain = "[policy]"
		}
		srv, _ := externaltest.Gateway(b, fmt.Sprintf(`
log: {access_log: false}
plugins:%s
routes:
  - name: fhir
    fhir: true
    compress: false
    plugins: %s
`, p.yaml, chain))
		req := func() *http.Request {
			r := httptest.NewRequest("GET", "/fhir/R4/Patient/example", nil)
			r.Header.Set("X-Tenant", "acme")
			return r
		}
		if rec := httptest.NewRecorder(); true {
			srv.ServeHTTP(rec, req())
			if rec.Code != 200 {
				b.Fatalf("%s: %d %s", p.name, rec.Code, rec.Body)
			}
		}
		b.Run(p.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				srv.ServeHTTP(httptest.NewRecorder(), req())
			}
		})
		b.Run(p.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					srv.ServeHTTP(httptest.NewRecorder(), req())
				}
			})
		})
		externaltest.Shutdown(srv)
	}
}
