package authz

import (
	"fmt"

	"github.com/omnigate/omnigate/gateway"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkReadByID measures the plugin's cost on GET [base]/Patient/85:
// the same chain with and without authz, on an embedded route (the plugin
// decides and hands the policy on) and on an upstream route (the
// physician's read passes through; the patient's is buffered and its
// compartment checked).
//
//	go test ./builtin/authz -run '^$' -bench BenchmarkReadByID -benchmem
func BenchmarkReadByID(b *testing.B) {
	const patient = `{"resourceType":"Patient","id":"85","name":[{"family":"Bench","given":["Mark"]}],"gender":"female","birthDate":"1970-01-01"}`
	embedded := func(chain string) *gw {
		g := newGateway(b, `
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
fhir:
  store: {path: ":memory:"}
  validate: false
plugins:
  as: {type: as}
  authz: {type: authz}
routes:
  - name: fhir
    fhir: true
    compress: false
    plugins: [`+chain+`]
`)
		mustStatus(b, g.do(physician, "PUT", "/fhir/R4/Patient/85", patient), 201)
		return g
	}
	upstream := embedded("as")
	if err := upstream.Start(); err != nil {
		b.Fatal(err)
	}
	proxied := func(chain string) *gw {
		return newGateway(b, fmt.Sprintf(`
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
plugins:
  as: {type: as}
  authz: {type: authz}
routes:
  - name: legacy
    path: /fhir/R4/*path
    upstream: http://%s
    fhir_errors: true
    compress: false
    plugins: [%s]
`, upstream.Addr(), chain))
	}
	for _, tc := range []struct {
		name string
		g    *gw
		as   who
	}{
		{"embedded/without", embedded("as"), physician},
		{"embedded/physician", embedded("as, authz"), physician},
		{"embedded/patient", embedded("as, authz"), patient85},
		{"upstream/without", proxied("as"), physician},
		{"upstream/physician", proxied("as, authz"), physician},
		{"upstream/patient", proxied("as, authz"), patient85},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := tc.g
			req := func() *http.Request {
				r := httptest.NewRequest("GET", "http://omnigate.test/fhir/R4/Patient/85", nil)
				r.Header.Set("X-Test-User", tc.as.user)
				r.Header.Set("X-Test-Role", tc.as.role)
				r.Header.Set("X-Test-Patient", tc.as.patient)
				return r
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req())
			if w.Code != 200 || !strings.Contains(w.Body.String(), `"Bench"`) {
				b.Fatalf("%d %s", w.Code, w.Body.String())
			}
			for range 2000 { // warm caches and connections before timing
				h.ServeHTTP(httptest.NewRecorder(), req())
			}
			b.ReportAllocs()
			for b.Loop() {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req())
				if w.Code != 200 {
					b.Fatal(w.Code)
				}
			}
		})
	}
}

// BenchmarkPlugin is the plugin alone deciding a read by id, with the next
// handler doing nothing: what the plugin adds to every request.
//
//	go test ./builtin/authz -run '^$' -bench BenchmarkPlugin -benchmem
func BenchmarkPlugin(b *testing.B) {
	for _, tc := range []struct {
		name, route string
		embedded    bool
		id          *gateway.Identity
	}{
		{"embedded/physician", "fhir", true, &gateway.Identity{UserID: "dr", Role: "physician"}},
		{"embedded/patient", "fhir", true, &gateway.Identity{UserID: "p85", Role: "patient", PatientID: "85"}},
		{"embedded/token-scopes", "fhir", true, &gateway.Identity{UserID: "app", Role: "physician", Scopes: []string{"openid", "fhirUser", "user/Patient.rs", "user/Observation.rs"}}},
		{"upstream/physician", "legacy", false, &gateway.Identity{UserID: "dr", Role: "physician"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			newGateway(b, `
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
fhir:
  store: {path: ":memory:"}
  validate: false
plugins:
  authz: {type: authz-test, route_base_paths: {legacy: /legacy}}
routes:
  - {name: fhir, fhir: true, plugins: [authz]}
  - {name: legacy, path: /legacy/*rest, upstream: "http://127.0.0.1:1", plugins: [authz]}
`)
			p := lastBuilt.Load()
			p.routes["legacy"].base = "/fhir/R4" // read the same path
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) })
			base := httptest.NewRequest("GET", "http://omnigate.test/fhir/R4/Patient/85", nil)
			ctx := gateway.NewRequestContext(base.Context(), gateway.RouteInfo{Name: tc.route, FHIR: true}, "bench", tc.id)
			r := base.WithContext(ctx)
			w := &discard{h: http.Header{}}
			p.ServeHTTP(w, r, next)
			if w.code != 200 {
				b.Fatalf("status %d", w.code)
			}
			b.ReportAllocs()
			for b.Loop() {
				p.ServeHTTP(w, r, next)
			}
		})
	}
}

type discard struct {
	h    http.Header
	code int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) WriteHeader(code int)        { d.code = code }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
