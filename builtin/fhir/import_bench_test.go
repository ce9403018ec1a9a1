package fhir

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/postgres"
	"github.com/omnigate/omnigate/internal/pgtest"
)

// importCopies is how many re-identified copies of the three example
// Bundles (751 resources) BenchmarkImport loads per op.
const importCopies = 10

// importData returns importCopies copies of each example Bundle, the
// patients re-identified (their other entries are POSTs: created anew).
func importData(b *testing.B) ([][]byte, int) {
	var docs [][]byte
	n := 0
	for _, f := range []struct {
		name, patient string
		entries       int
	}{
		{"uscore_bundle_patient_355.json", "355", 473},
		{"uscore_bundle_patient_85.json", "85", 268},
		{"carin_bundle_patient_888.json", "888", 10},
	} {
		data := sharedExample(b, f.name)
		if got := bytes.Count(data, []byte(`"request"`)); got != f.entries {
			b.Fatalf("%s: %d entries, want %d", f.name, got, f.entries)
		}
		for k := range importCopies {
			docs = append(docs, reidentify(data, f.patient, k))
			n += f.entries
		}
	}
	return docs, n
}

// BenchmarkImport imports the same data (importData: 7,510 resources)
// with Import into a SQLite store file (sync full) and into PostgreSQL
// (a private server with fsync on): through the bulk path with COPY or
// with INSERT batches (Loader.PutAll), and Put by Put; with schema
// validation on (the default) and off. It reports resources per second,
// the benchmark process's CPU time per resource and the PostgreSQL
// server's.
func BenchmarkImport(b *testing.B) {
	docs, n := importData(b)
	srv := pgtest.Start(b, "-c", "fsync=on", "-c", "full_page_writes=on")
	pg := func(b *testing.B, insert, noBulk, validate bool) *Handler {
		cfg := DefaultConfig()
		cfg.Store.Driver, cfg.Store.URL = "postgres", srv.NewDatabase(b)
		cfg.SchemaValidation = &validate
		if err := cfg.Validate(); err != nil {
			b.Fatal(err)
		}
		opt := postgresOptions(cfg)
		opt.BulkInsert = insert
		st, err := postgres.Open(context.Background(), opt)
		if err != nil {
			b.Fatal(err)
		}
		return benchHandler(b, cfg, st, noBulk)
	}
	sqlite := func(b *testing.B, validate bool) *Handler {
		h := openFile(b, filepath.Join(b.TempDir(), "import.db"), func(cfg *Config) { cfg.SchemaValidation = &validate })
		b.Cleanup(func() { h.Close() })
		return h
	}
	for _, c := range []struct {
		name string
		open func(b *testing.B) *Handler
	}{
		{"validate=on/store=sqlite", func(b *testing.B) *Handler { return sqlite(b, true) }},
		{"validate=on/store=postgres/path=copy", func(b *testing.B) *Handler { return pg(b, false, false, true) }},
		{"validate=on/store=postgres/path=insert", func(b *testing.B) *Handler { return pg(b, true, false, true) }},
		{"validate=on/store=postgres/path=put", func(b *testing.B) *Handler { return pg(b, false, true, true) }},
		{"validate=off/store=sqlite", func(b *testing.B) *Handler { return sqlite(b, false) }},
		{"validate=off/store=postgres/path=copy", func(b *testing.B) *Handler { return pg(b, false, false, false) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			h := c.open(b)
			ctx := context.Background()
			b.ResetTimer()
			srv0 := serverCPU(b, srv)
			cpu0, t0 := cpuTime(), time.Now()
			for i := 0; i < b.N; i++ {
				for _, d := range docs {
					sum, err := h.Import(ctx, bytes.NewReader(d), nil)
					if err != nil || sum.Failed > 0 {
						b.Fatalf("import: %v %+v", err, sum)
					}
				}
			}
			el := time.Since(t0)
			b.ReportMetric(float64(n*b.N)/el.Seconds(), "resources/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(n*b.N), "cpu-µs/resource")
			b.ReportMetric(float64((serverCPU(b, srv)-srv0).Microseconds())/float64(n*b.N), "server-cpu-µs/resource")
		})
	}
}

// benchHandler is a Handler on st that closes it.
func benchHandler(b *testing.B, cfg *Config, st store.Store, noBulk bool) *Handler {
	var opts Options
	if boolOr(cfg.SchemaValidation, true) {
		v, err := newValidator()
		if err != nil {
			b.Fatal(err)
		}
		opts.validator = v
	}
	h, err := newHandler(cfg, st, opts)
	if err != nil {
		b.Fatal(err)
	}
	h.noBulk = noBulk
	b.Cleanup(func() { st.Close() })
	return h
}
