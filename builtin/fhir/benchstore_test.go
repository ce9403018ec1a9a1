package fhir

import (
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/pgtest"
	"github.com/omnigate/omnigate/internal/procgroup"
)

// BenchmarkReadStores reads Patient/85 by id through the in-process
// gateway (as BenchmarkRead/gateway) on each store, side by side in one
// run: SQLite (a file) and PostgreSQL (a private server the benchmark
// starts, over loopback TCP), with the store's read cache on (the
// default, 64 MiB) and off. cpu-µs/op is the benchmark process's CPU
// time per read; server-cpu-µs/op the PostgreSQL server's (its postmaster
// and backends, from /proc).
//
//	go test -run '^$' -bench ReadStores -benchmem -benchtime 2s -count 2 ./builtin/fhir/
func BenchmarkReadStores(b *testing.B) {
	dir := b.TempDir()
	srv := pgtest.Start(b)
	for _, c := range []struct{ name, store string }{
		{"sqlite/cache", fmt.Sprintf("{path: %q}", filepath.Join(dir, "cache.db"))},
		{"postgres/cache", fmt.Sprintf("{driver: postgres, url: %q}", srv.NewDatabase(b))},
		{"sqlite/no-cache", fmt.Sprintf("{path: %q, read_cache: 0}", filepath.Join(dir, "nocache.db"))},
		{"postgres/no-cache", fmt.Sprintf("{driver: postgres, url: %q, read_cache: 0}", srv.NewDatabase(b))},
	} {
		yaml := fmt.Sprintf("listen: \"127.0.0.1:0\"\nadmin: \"off\"\nlog: {access_log: false}\nfhir:\n  store: %s\nroutes:\n  - name: fhir\n    fhir: true\n", c.store)
		gw := newGateway(b, yaml)
		mustStatus(b, do(b, gw, "POST", "/fhir/R4", sharedExample(b, "uscore_bundle_patient_85.json")), 200)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu0, srv0 := cpuTime(), serverCPU(b, srv)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := httptest.NewRequest("GET", "http://fhir.test/fhir/R4/Patient/85", nil)
					w := httptest.NewRecorder()
					gw.ServeHTTP(w, r)
					if w.Code != 200 {
						b.Fatalf("status %d", w.Code)
					}
				}
			})
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64((serverCPU(b, srv)-srv0).Microseconds())/float64(b.N), "server-cpu-µs/op")
		})
	}
}

// serverCPU is the CPU time of a PostgreSQL server.
func serverCPU(b *testing.B, srv *pgtest.Server) time.Duration {
	st, err := procgroup.TreeStat(srv.PID())
	if err != nil {
		b.Fatal(err)
	}
	return st.CPU
}
