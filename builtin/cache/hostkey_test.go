package cache

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	_ "github.com/omnigate/omnigate/builtin/fhir" // the embedded FHIR server
	"github.com/omnigate/omnigate/gateway"
)

// TestHostHeaderCannotPoisonCachedLinks: without fhir.base_url the
// embedded FHIR server builds its links from the Host header, so a
// response fetched with a forged Host must never be served to a request
// for another Host from the same partition; with base_url the links do
// not depend on the Host, and one entry serves every Host.
func TestHostHeaderCannotPoisonCachedLinks(t *testing.T) {
	for _, tt := range []struct {
		name, fhirYAML, wantBase string
		shared                   bool
	}{
		{"links from the Host", "", "https://gw.example.org/fhir/R4", false},
		{"links from base_url", "  base_url: https://fhir.example.org/fhir/R4\n", "https://fhir.example.org/fhir/R4", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := gateway.Parse("t.yaml", []byte(`
admin: "off"
log: {access_log: false}
fhir:
  store: {path: ":memory:"}
  validate: false
`+tt.fhirYAML+`
plugins:
  as: {type: as}
  cache: {type: cache, partition: role}
routes:
  - name: fhir
    fhir: true
    plugins: [as, cache]
`), nil)
			if err != nil {
				t.Fatal(err)
			}
			srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Shutdown(context.Background()) })
			get := func(host, proto, user string) *httptest.ResponseRecorder {
				req := httptest.NewRequest("GET", "/fhir/R4/Patient?_count=5", nil)
				req.Host = host
				req.Header.Set("X-Forwarded-Proto", proto)
				req.Header.Set("X-Test-User", user)
				req.Header.Set("X-Test-Role", "nurse")
				rec := httptest.NewRecorder()
				srv.ServeHTTP(rec, req)
				if rec.Code != 200 {
					t.Fatalf("%s: %d %s", host, rec.Code, rec.Body)
				}
				return rec
			}
			// An attacker of the same role asks with a Host of their own.
			get("evil.example", "http", "mallory")
			get("evil.example", "http", "mallory")
			rec := get("gw.example.org", "https", "alice")
			if strings.Contains(rec.Body.String(), "evil.example") {
				t.Fatalf("links planted through the Host header reached another client: %s", rec.Body)
			}
			if !strings.Contains(rec.Body.String(), `"`+tt.wantBase+`/Patient`) {
				t.Errorf("links not from %s: %s", tt.wantBase, rec.Body)
			}
			if x := rec.Header().Get("X-Cache"); (x == "HIT") != tt.shared {
				t.Errorf("X-Cache %s; one entry for every Host: %v", x, tt.shared)
			}
		})
	}
}
