package gateway

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/julienschmidt/httprouter"
)

var benchBody = []byte(`{"resourceType":"Patient","id":"example","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00Z"},` +
	`"active":true,"name":[{"use":"official","family":"Chalmers","given":["Peter","James"]}],"gender":"male",` +
	`"birthDate":"1974-12-25","managingOrganization":{"reference":"Organization/1"},"text":{"status":"generated"}}`)

// discardWriter is a reusable ResponseWriter that drops the body.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

func benchServe(b *testing.B, h http.Handler) {
	req := httptest.NewRequest("GET", "/fhir/R4/Patient/example", nil)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			clear(w.h)
			r := req.Clone(req.Context())
			h.ServeHTTP(w, r)
		}
	})
}

func benchGateway(b *testing.B, yaml string) {
	cfg, err := Parse("bench.yaml", []byte(yaml), nil)
	if err != nil {
		b.Fatal(err)
	}
	// Logs are formatted as in production (JSON, access log buffered) and
	// then dropped.
	srv, err := New(context.Background(), cfg, Options{LogOutput: io.Discard})
	if err != nil {
		b.Fatal(err)
	}
	benchServe(b, srv)
}

func noopPlugins(b *testing.B) {
	b.Helper()
	if _, ok := lookupPluginType("noop"); ok {
		return
	}
	RegisterPlugin("noop", func() *struct{} { return &struct{}{} },
		func(context.Context, *struct{}, *Env) (Plugin, error) {
			return PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) { next.ServeHTTP(w, r) }), nil
		})
}

// BenchmarkChain compares, in one run, a bare httprouter handler with the
// same bytes served through the gateway: empty chain, one and three no-op
// plugins. The request clone is paid by every case alike. The fake FHIR
// handler registered by TestMain serves a similar body.
func BenchmarkChain(b *testing.B) {
	noopPlugins(b)
	b.Run("bare", func(b *testing.B) {
		r := httprouter.New()
		r.GET("/fhir/R4/Patient/:id", func(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) {
			w.Header().Set("Content-Type", "application/fhir+json")
			w.Write(benchBody)
		})
		benchServe(b, r)
	})
	const base = "log: {access_log: false}\n"
	b.Run("empty", func(b *testing.B) {
		benchGateway(b, base+"routes:\n  - fhir: true\n    compress: false\n")
	})
	b.Run("empty+gzip-wrapper", func(b *testing.B) {
		benchGateway(b, base+"routes:\n  - fhir: true\n")
	})
	b.Run("1noop", func(b *testing.B) {
		benchGateway(b, base+"plugins:\n  n1: {type: noop}\nroutes:\n  - fhir: true\n    compress: false\n    plugins: [n1]\n")
	})
	b.Run("3noop", func(b *testing.B) {
		benchGateway(b, base+`plugins:
  n1: {type: noop}
  n2: {type: noop}
  n3: {type: noop}
routes:
  - fhir: true
    compress: false
    plugins: [n1, n2, n3]
`)
	})
	b.Run("empty+accesslog", func(b *testing.B) {
		benchGateway(b, "routes:\n  - fhir: true\n    compress: false\n")
	})
}
