package fhir

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"testing"
	"time"
)

// latencies records the duration of each operation of a benchmark run and
// reports its p50 and p99.
type latencies []time.Duration

func (l *latencies) time(f func()) {
	start := time.Now()
	f()
	*l = append(*l, time.Since(start))
}

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	s := append(latencies(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	pct := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))+0.5)-1)] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
}

// everythingPatient is the Synthea patient of the benchmarks: a copy of
// patient 355 (a transaction Bundle of 473 resources) in the
// 100,035-resource store.
const everythingPatient = "355-c67"

// BenchmarkEverything is Patient/[id]/$everything of a Synthea patient in
// the 100,035-resource store (see bigStore): the whole record in one page,
// and its first page of 20; against the client-side way to the same
// compartment without it (a read of the Patient, then a compartment search
// of each of the 14 compartment types its Bundle holds, with _count=1000).
// Reports p50 and p99 over the run's operations.
func BenchmarkEverything(b *testing.B) {
	h := openFile(b, bigStore(b), func(c *Config) { c.Export.Dir = b.TempDir() })
	defer h.Close()
	// The compartment types of patient 355's Bundle.
	types := []string{"AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "DiagnosticReport", "DocumentReference",
		"Encounter", "Goal", "Immunization", "MedicationRequest", "Observation", "Procedure", "Provenance", "ServiceRequest"}
	get := func(b *testing.B, path string) int {
		w := do(b, h, "GET", path, nil)
		if w.status != http.StatusOK {
			b.Fatalf("%s: %d %.300s", path, w.status, w.body)
		}
		return len(w.body)
	}
	for _, c := range []struct {
		name string
		run  func(b *testing.B) int
	}{
		{"everything", func(b *testing.B) int {
			return get(b, "/fhir/R4/Patient/"+everythingPatient+"/$everything?_count=1000")
		}},
		{"everything-first-page", func(b *testing.B) int {
			return get(b, "/fhir/R4/Patient/"+everythingPatient+"/$everything")
		}},
		{"compartment-searches", func(b *testing.B) int {
			n := get(b, "/fhir/R4/Patient/"+everythingPatient)
			for _, t := range types {
				n += get(b, "/fhir/R4/Patient/"+everythingPatient+"/"+t+"?_count=1000")
			}
			return n
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			c.run(b) // warm the page cache
			b.ReportAllocs()
			b.ResetTimer()
			var l latencies
			bytes := 0
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				l.time(func() { bytes = c.run(b) })
			}
			b.StopTimer()
			l.report(b)
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N)/1000, "cpu-ms/op")
			b.ReportMetric(float64(bytes), "resp-bytes")
		})
	}
}

// BenchmarkExport is a system-level bulk $export of the 100,035-resource
// store, from kick-off to the manifest (NDJSON files written, one per type
// of up to 100,000 lines), against the client-side way to the same data
// without it: paging through a search of each type, 1,000 per page.
// Reports resources/s.
func BenchmarkExport(b *testing.B) {
	dir := b.TempDir()
	h := openFile(b, bigStore(b), func(c *Config) { c.Export.Dir = dir })
	defer h.Close()
	h.export.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	total := 0
	r := do(b, h, "GET", "/fhir/R4/$export", nil, "Prefer", "respond-async")
	if r.status != http.StatusAccepted {
		b.Fatalf("kick-off: %d %s", r.status, r.body)
	}
	types := map[string]int{}
	for _, o := range finishBench(b, h, r).Output {
		types[o.Type] += o.Count
		total += o.Count
	}
	b.Run("export", func(b *testing.B) {
		b.ReportAllocs()
		cpu0 := cpuTime()
		for i := 0; i < b.N; i++ {
			r := do(b, h, "GET", "/fhir/R4/$export", nil, "Prefer", "respond-async")
			if r.status != http.StatusAccepted {
				b.Fatalf("kick-off: %d %s", r.status, r.body)
			}
			j := finishBench(b, h, r)
			n := 0
			for _, o := range j.Output {
				n += o.Count
			}
			if n != total {
				b.Fatalf("exported %d, want %d", n, total)
			}
		}
		b.ReportMetric(float64(total*b.N)/b.Elapsed().Seconds(), "resources/s")
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(total*b.N), "cpu-µs/resource")
	})
	b.Run("paged-searches", func(b *testing.B) {
		b.ReportAllocs()
		cpu0 := cpuTime()
		for i := 0; i < b.N; i++ {
			n := 0
			for t := range types {
				next := "/fhir/R4/" + t + "?_count=1000"
				for next != "" {
					r := do(b, h, "GET", next, nil)
					if r.status != http.StatusOK {
						b.Fatalf("%s: %d", next, r.status)
					}
					s := readSearchsetB(b, r)
					n += s.n
					next = s.next
				}
			}
			if n != total {
				b.Fatalf("paged %d, want %d", n, total)
			}
		}
		b.ReportMetric(float64(total*b.N)/b.Elapsed().Seconds(), "resources/s")
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(total*b.N), "cpu-µs/resource")
	})
}

// finishBench waits for the export r started and returns its final state.
func finishBench(b *testing.B, h *Handler, r resp) exportJob {
	u, err := url.Parse(r.header.Get("Content-Location"))
	if err != nil {
		b.Fatal(err)
	}
	j := h.export.get(u.Query().Get("_jobId"))
	if j == nil {
		b.Fatal("no job")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := h.export.wait(ctx, j); err != nil {
		b.Fatal(err)
	}
	st := h.export.snapshot(j)
	if st.Status != jobCompleted {
		b.Fatalf("export %s: %s", st.Status, st.Message)
	}
	h.export.remove(ctx, j)
	return st
}

type pageOf struct {
	n    int
	next string
}

// readSearchsetB counts a searchset's entries and finds its next link.
func readSearchsetB(b *testing.B, r resp) pageOf {
	m := r.json(b)
	es, _ := m["entry"].([]any)
	p := pageOf{n: len(es)}
	links, _ := m["link"].([]any)
	for _, l := range links {
		if lm := l.(map[string]any); lm["relation"] == "next" {
			u, _ := url.Parse(lm["url"].(string))
			p.next = u.RequestURI()
		}
	}
	return p
}
