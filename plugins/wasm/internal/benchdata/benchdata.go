// Package benchdata holds what the wasm benchmarks serve: a FHIR handler
// answering from memory (a 300-byte Patient, or a 20 KB search Bundle for
// paths ending in /Patient) and an "as-receptionist" plugin that stands in
// for the session plugin.
package benchdata

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/omnigate/omnigate/gateway"
)

// Small is a 300-byte Patient.
var Small = []byte(`{"resourceType":"Patient","id":"example","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00Z"},"active":true,"name":[{"use":"official","family":"Chalmers","given":["Peter","James"]}],"gender":"male","birthDate":"1974-12-25","managingOrganization":{"reference":"Organization/1"},"text":{"status":"generated"}}`)

// Bundle20K is a search Bundle of 40 Patients with telecom, address and
// identifier, about 20 KB.
var Bundle20K = func() []byte {
	var b strings.Builder
	b.WriteString(`{"resourceType":"Bundle","type":"searchset","total":40,"entry":[`)
	for i := 0; i < 40; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"fullUrl":"http://example.org/fhir/Patient/p%d","resource":{"resourceType":"Patient","id":"p%d","meta":{"versionId":"1"},`+
			`"identifier":[{"system":"urn:oid:1.2.36.146.595.217.0.1","value":"12345%d"}],"active":true,`+
			`"name":[{"use":"official","family":"Chalmers","given":["Peter","James"]}],`+
			`"telecom":[{"system":"phone","value":"(03) 5555 6473","use":"work"},{"system":"email","value":"p%d@example.org"}],`+
			`"gender":"male","birthDate":"1974-12-25",`+
			`"address":[{"use":"home","line":["534 Erewhon St"],"city":"PleasantVille","postalCode":"3999"}]},"search":{"mode":"match"}}`, i, i, i, i)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}()

var once sync.Once

// Register installs the FHIR handler and the "as-receptionist" plugin type
// (once per process).
func Register() {
	once.Do(func() {
		type none struct{}
		gateway.RegisterFHIRHandler(func() *none { return &none{} },
			func(context.Context, *none, *gateway.Env) (http.Handler, error) {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "application/fhir+json")
					if strings.HasSuffix(r.URL.Path, "/Patient") {
						w.Write(Bundle20K)
						return
					}
					w.Write(Small)
				}), nil
			})
		id := &gateway.Identity{UserID: "rc1", Role: "receptionist"}
		gateway.RegisterPlugin("as-receptionist", func() *none { return &none{} },
			func(context.Context, *none, *gateway.Env) (gateway.Plugin, error) {
				return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
					next.ServeHTTP(w, r.WithContext(gateway.SetIdentity(r.Context(), id)))
				}), nil
			})
	})
}
