package audit

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/omnigate/omnigate/gateway"
)

// processCPU is the user and system CPU time the process has used, in ns.
func processCPU() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// nullWriter is a ResponseWriter that keeps nothing.
type nullWriter struct{ h http.Header }

func (w *nullWriter) Header() http.Header         { return w.h }
func (w *nullWriter) WriteHeader(int)             {}
func (w *nullWriter) Write(b []byte) (int, error) { return len(b), nil }

// BenchmarkReadByID measures what the audit plugin adds to a read by id
// through the gateway and the embedded FHIR server (in-memory store, read
// cache on): the same chain without it, with it shipping to a file, and
// with it shipping AuditEvents into the same FHIR server. The plugin's
// flusher and shippers run in the background of the same process, so
// their cost shows in the time per read, and in cpu-ns/op, the CPU time
// of the whole process per read.
//
//	go test -run '^$' -bench ReadByID -benchmem ./builtin/audit/
func BenchmarkReadByID(b *testing.B) {
	for _, typ := range []string{"Patient", "Observation"} {
		for _, variant := range []string{"none", "file-sink", "fhir-sink"} {
			b.Run(typ+"/"+variant, func(b *testing.B) {
				dir := b.TempDir()
				plugins, chain := "  as: {type: as}\n", "[as]"
				switch variant {
				case "file-sink":
					plugins += "  audit: {type: audit, spool_dir: " + strconv.Quote(filepath.Join(dir, "spool")) +
						", sinks: [{type: file, path: " + strconv.Quote(filepath.Join(dir, "audit.jsonl")) + "}]}\n"
					chain = "[as, audit]"
				case "fhir-sink":
					plugins += "  audit: {type: audit, spool_dir: " + strconv.Quote(filepath.Join(dir, "spool")) + "}\n"
					chain = "[as, audit]"
				}
				cfg, err := gateway.Parse("bench.yaml", []byte(`
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
fhir:
  store: {path: ":memory:"}
plugins:
`+plugins+`routes:
  - name: fhir
    fhir: true
    plugins: `+chain+`
`), nil)
				if err != nil {
					b.Fatal(err)
				}
				srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: discard()})
				if err != nil {
					b.Fatal(err)
				}
				defer srv.Shutdown(context.Background())
				put := func(path, body string) {
					req := httptest.NewRequest("PUT", path, stringsReader(body))
					req.Header.Set("Content-Type", "application/fhir+json")
					rec := httptest.NewRecorder()
					srv.ServeHTTP(rec, req)
					if rec.Code != 201 {
						b.Fatalf("%s: %d %s", path, rec.Code, rec.Body)
					}
				}
				put("/fhir/R4/Patient/85", `{"resourceType":"Patient","id":"85","name":[{"family":"Chalmers","given":["Peter","James"]}],"gender":"male","birthDate":"1974-12-25"}`)
				put("/fhir/R4/Observation/o1", `{"resourceType":"Observation","id":"o1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"subject":{"reference":"Patient/85"},"valueQuantity":{"value":72,"unit":"beats/minute"}}`)
				path := "/fhir/R4/Patient/85"
				if typ == "Observation" {
					path = "/fhir/R4/Observation/o1"
				}
				w := &nullWriter{}
				b.ReportAllocs()
				cpu0 := processCPU()
				for b.Loop() {
					req := httptest.NewRequest("GET", path, nil)
					req.Header.Set("X-Test-User", "dr-house")
					req.Header.Set("X-Test-Role", "physician")
					w.h = http.Header{}
					srv.ServeHTTP(w, req)
				}
				// CPU time of the whole process (the background flushes
				// and shipping included) per read: on a shared machine
				// it says more than the wall time.
				b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

func stringsReader(s string) *stringReader { return &stringReader{s: s} }

type stringReader struct{ s string }

func (r *stringReader) Read(p []byte) (int, error) {
	if r.s == "" {
		return 0, io.EOF
	}
	n := copy(p, r.s)
	r.s = r.s[n:]
	return n, nil
}
