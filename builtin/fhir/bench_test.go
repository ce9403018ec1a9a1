package fhir

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/access"
)

// openFile opens a Handler on a store file in dir.
func openFile(b testing.TB, path string, mod ...func(*Config)) *Handler {
	cfg := DefaultConfig()
	cfg.Store.Path = path
	for _, m := range mod {
		m(cfg)
	}
	h, err := Open(context.Background(), cfg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// BenchmarkIngest POSTs the 473-entry Synthea transaction Bundle of
// patient 355 to a store file, and reports resources per second.
func BenchmarkIngest(b *testing.B) {
	data := sharedExample(b, "uscore_bundle_patient_355.json")
	usCore := withUSCore(b)
	off := false
	for _, c := range []struct {
		name string
		mod  func(*Config)
		sync string
	}{
		{"validate=on/sync=full", usCore, "full"},
		{"validate=schema/sync=full", func(c *Config) { c.Validation.Core, c.Validation.Profiles = &off, &off }, "full"},
		{"validate=off/sync=full", func(c *Config) { c.SchemaValidation = &off }, "full"},
		{"validate=on/sync=normal", usCore, "normal"},
	} {
		b.Run(c.name, func(b *testing.B) {
			h := openFile(b, filepath.Join(b.TempDir(), "ingest.db"), c.mod, func(cfg *Config) { cfg.Store.Sync = c.sync })
			defer h.Close()
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				r := do(b, h, "POST", "/fhir/R4", data)
				if r.status != 200 {
					b.Fatalf("status %d: %.300s", r.status, r.body)
				}
			}
			b.ReportMetric(float64(473*b.N)/b.Elapsed().Seconds(), "resources/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(473*b.N), "cpu-µs/resource")
		})
	}
}

// BenchmarkIngestConditional POSTs the 260-entry Bundle of patient 85
// whose 451 references to practitioners, organizations, locations, a role
// and an endpoint are conditional (8 distinct criteria), after the Bundle
// that creates those, to a store file, and reports resources per second.
func BenchmarkIngestConditional(b *testing.B) {
	info, data := testdataFile(b, conditionalInfo), testdataFile(b, conditionalPatient)
	h := openFile(b, filepath.Join(b.TempDir(), "ingest.db"))
	defer h.Close()
	if r := do(b, h, "POST", "/fhir/R4", info); r.status != 200 {
		b.Fatalf("status %d: %.300s", r.status, r.body)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		r := do(b, h, "POST", "/fhir/R4", data)
		if r.status != 200 {
			b.Fatalf("status %d: %.300s", r.status, r.body)
		}
	}
	b.ReportMetric(float64(260*b.N)/b.Elapsed().Seconds(), "resources/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(260*b.N), "cpu-µs/resource")
}

// cpuTime is the CPU time (user and system) the process has used: on a
// machine shared with other work it measures cost better than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkValidate measures what validation costs per resource, over
// the 751 resources of the three example Bundles, side by side: decoding
// with the input checks and no validation, the JSON schema only, the
// schema and the core StructureDefinitions, and those and the US Core
// profiles the resources declare (the US Core Patient, medication request
// and blood pressure ones; the others are unknown, a warning). CPU time
// per resource is the figure to compare on a machine shared with other
// work.
func BenchmarkValidate(b *testing.B) {
	var raws [][]byte
	for _, f := range []string{"uscore_bundle_patient_85.json", "uscore_bundle_patient_355.json", "carin_bundle_patient_888.json"} {
		var bundle struct {
			Entry []struct{ Resource json.RawMessage }
		}
		if err := json.Unmarshal(sharedExample(b, f), &bundle); err != nil {
			b.Fatal(err)
		}
		for _, e := range bundle.Entry {
			raws = append(raws, e.Resource)
		}
	}
	off := false
	for _, c := range []struct {
		name string
		mod  func(*Config)
	}{
		{"none", func(c *Config) { c.SchemaValidation = &off }},
		{"schema", func(c *Config) { c.Validation.Core, c.Validation.Profiles = &off, &off }},
		{"schema+core", func(c *Config) { c.Validation.Profiles = &off }},
		{"schema+core+profiles", withUSCore(b)},
	} {
		b.Run(c.name, func(b *testing.B) {
			h := newTestServer(b, c.mod)
			for _, raw := range raws { // compile each type's schema first
				h.parseResource(raw, "", "", checkAll)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				if _, err := h.parseResource(raws[i%len(raws)], "", "", checkAll); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/resource")
		})
	}
}

// bareHandler serves one stored resource's bytes with the headers a read
// sends: the floor any FHIR read is compared with.
func bareHandler(body []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", ContentType)
		h.Set("ETag", `W/"1"`)
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
}

// BenchmarkRead reads one Synthea Patient by id: the bare handler, the FHIR
// handler, and the FHIR handler behind the gateway (in process, no network).
func BenchmarkRead(b *testing.B) {
	dir := b.TempDir()
	yaml := fmt.Sprintf("listen: \"127.0.0.1:0\"\nadmin: \"off\"\nlog: {access_log: false}\nfhir:\n  store: {path: %q}\nroutes:\n  - name: fhir\n    fhir: true\n", filepath.Join(dir, "read.db"))
	gw := newGateway(b, yaml)
	mustStatus(b, do(b, gw, "POST", "/fhir/R4", sharedExample(b, "uscore_bundle_patient_85.json")), 200)
	body := do(b, gw, "GET", "/fhir/R4/Patient/85", nil).body
	direct := openFile(b, filepath.Join(dir, "direct.db")) // a store file has one owner
	defer direct.Close()
	mustStatus(b, do(b, direct, "POST", "/fhir/R4", sharedExample(b, "uscore_bundle_patient_85.json")), 200)
	for _, c := range []struct {
		name string
		h    http.Handler
	}{{"bare", bareHandler(body)}, {"handler", direct}, {"gateway", gw}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := httptest.NewRequest("GET", "http://fhir.test/fhir/R4/Patient/85", nil)
					w := httptest.NewRecorder()
					c.h.ServeHTTP(w, r)
					if w.Code != 200 {
						b.Fatalf("status %d", w.Code)
					}
				}
			})
		})
	}
}

// copies is how many re-identified copies of the two US Core Synthea
// patients the search benchmark loads: 135 × 741 = 100,035 resources.
const copies = 135

// reidentify makes copy k of a Synthea transaction Bundle: the patient's id
// and identifiers get a suffix, everything else is created anew.
func reidentify(data []byte, patient string, k int) []byte {
	id := fmt.Sprintf("%s-c%d", patient, k)
	out := bytes.ReplaceAll(data, []byte(`"Patient/`+patient+`"`), []byte(`"Patient/`+id+`"`))
	out = bytes.Replace(out, []byte(`"id": "`+patient+`"`), []byte(`"id": "`+id+`"`), 1)
	return out
}

var searchFixture100k struct {
	once sync.Once
	path string
	err  error
}

// bigStore returns a store file holding at least 100,000 resources, made
// once and kept in the temp folder across runs. Its name carries the store's
// schema version: builds of another schema make their own (a build would
// migrate an older file, which older builds then refuse).
func bigStore(b *testing.B) string {
	f := &searchFixture100k
	f.once.Do(func() {
		f.path = filepath.Join(os.TempDir(), "omnigate-fhir-bench-100k-v5.db")
		if _, err := os.Stat(f.path + ".done"); err == nil {
			return
		}
		os.Remove(f.path)
		off := false
		h := openFile(b, f.path, func(c *Config) { c.SchemaValidation = &off; c.Store.Sync = "normal" })
		defer h.Close()
		b85 := sharedExample(b, "uscore_bundle_patient_85.json")
		b355 := sharedExample(b, "uscore_bundle_patient_355.json")
		start := time.Now()
		for k := 0; k < copies; k++ {
			for _, x := range []struct {
				data []byte
				id   string
			}{{b85, "85"}, {b355, "355"}} {
				if r := do(b, h, "POST", "/fhir/R4", reidentify(x.data, x.id, k)); r.status != 200 {
					f.err = fmt.Errorf("load copy %d: %d %.300s", k, r.status, r.body)
					return
				}
			}
		}
		b.Logf("loaded %d resources in %s", copies*741, time.Since(start))
		f.err = os.WriteFile(f.path+".done", nil, 0o644)
	})
	if f.err != nil {
		b.Fatal(f.err)
	}
	return f.path
}

// BenchmarkSearch100k runs patient-scoped searches over 100,035 resources
// (re-identified copies of the Synthea patients), each for a random patient,
// and reports the latency percentiles.
func BenchmarkSearch100k(b *testing.B) {
	path := bigStore(b)
	h := openFile(b, path)
	defer h.Close()
	for _, c := range []struct{ name, query string }{
		{"observation-code", "/fhir/R4/Observation?patient=%s&code=" + url.QueryEscape("http://loinc.org|72166-2")},
		{"encounter-date-sort", "/fhir/R4/Encounter?patient=%s&date=ge2015-01-01&_sort=-date"},
		{"condition-include", "/fhir/R4/Condition?patient=%s&_include=Condition:encounter"},
		{"compartment-all-observations", "/fhir/R4/Patient/%s/Observation"},
	} {
		b.Run(c.name, func(b *testing.B) {
			var mu sync.Mutex
			var lat []time.Duration
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					patient := fmt.Sprintf("%s-c%d", []string{"85", "355"}[rand.IntN(2)], rand.IntN(copies))
					r := httptest.NewRequest("GET", "http://fhir.test"+fmt.Sprintf(c.query, patient), nil)
					w := httptest.NewRecorder()
					t0 := time.Now()
					h.ServeHTTP(w, r)
					mine = append(mine, time.Since(t0))
					if w.Code != 200 {
						b.Fatalf("status %d: %s", w.Code, w.Body)
					}
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			}
		})
	}
}

// BenchmarkAccessSearch measures what enforcing a policy costs a search:
// patient 85's app (patient/*.rs) searching Observation?code=…, which the
// server confines to the patient's compartment, against the same search
// with the patient parameter written by hand and no policy. Both find the
// same Observations. cpu-µs/op is the process's CPU time per search, the
// steadier figure on a shared machine.
func BenchmarkAccessSearch(b *testing.B) {
	off := false
	h := newTestServer(b, func(c *Config) { c.SchemaValidation = &off })
	loadSynthea(b, h)
	benchAccessSearch(b, h, "85", patient85)
}

// BenchmarkAccessSearch100k is BenchmarkAccessSearch over 100,035
// resources (see bigStore), for one of the copies of patient 85.
func BenchmarkAccessSearch100k(b *testing.B) {
	h := openFile(b, bigStore(b))
	defer h.Close()
	const patient = "85-c67"
	benchAccessSearch(b, h, patient, access.NewPolicy(access.ParseScopes([]string{"patient/*.rs"}), access.PolicyOptions{Patient: patient}))
}

func benchAccessSearch(b *testing.B, h *Handler, patient string, p *access.Policy) {
	code := url.QueryEscape("http://loinc.org|72166-2")
	cases := []struct {
		name string
		h    http.Handler
		path string
	}{
		{"hand-written", h, "/fhir/R4/Observation?patient=" + patient + "&code=" + code},
		{"policy", as(h, p), "/fhir/R4/Observation?code=" + code},
	}
	var bodies [2]string
	for i, c := range cases {
		r := do(b, c.h, "GET", c.path, nil)
		mustStatus(b, r, 200)
		var bundle struct {
			Total int `json:"total"`
			Entry []struct {
				FullURL string `json:"fullUrl"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(r.body, &bundle); err != nil || bundle.Total == 0 {
			b.Fatalf("%s: %v, total %d", c.name, err, bundle.Total)
		}
		bodies[i] = fmt.Sprint(bundle.Total, bundle.Entry)
	}
	if bodies[0] != bodies[1] {
		b.Fatalf("the searches differ:\n%s\n%s", bodies[0], bodies[1])
	}
	search := func(b *testing.B, i int) {
		c := cases[i]
		r := httptest.NewRequest("GET", "http://fhir.test"+c.path, nil)
		w := httptest.NewRecorder()
		c.h.ServeHTTP(w, r)
		if w.Code != 200 {
			b.Fatalf("%s: status %d", c.name, w.Code)
		}
	}
	for i, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := cpuTime()
			for range b.N {
				search(b, i)
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
	b.Run("interleaved", func(b *testing.B) { interleaved(b, [2]string{"hand", "policy"}, search) })
}

// interleaved runs the two searches in turn, each timed, alternating which
// goes first: a machine shared with other work slows both alike, and the
// medians compare them. It reports each median in µs (names[i]-µs) and
// their ratio (names[1]/names[0]).
func interleaved(b *testing.B, names [2]string, search func(b *testing.B, i int)) {
	var took [2][]time.Duration
	for n := range b.N {
		for k := range 2 {
			i := (n + k) % 2
			t0 := time.Now()
			search(b, i)
			took[i] = append(took[i], time.Since(t0))
		}
	}
	var med [2]float64
	for i := range took {
		sort.Slice(took[i], func(a, c int) bool { return took[i][a] < took[i][c] })
		med[i] = float64(took[i][len(took[i])/2].Nanoseconds()) / 1000
	}
	b.ReportMetric(med[0], names[0]+"-µs")
	b.ReportMetric(med[1], names[1]+"-µs")
	b.ReportMetric(med[1]/med[0], names[1]+"/"+names[0])
}
