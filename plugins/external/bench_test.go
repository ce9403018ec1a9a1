package external

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
		kids := externaltest.Children(b) // the plugin process, if any
		b.Run(p.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b, kids)()
			for b.Loop() {
				srv.ServeHTTP(httptest.NewRecorder(), req())
			}
		})
		b.Run(p.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(4)
			defer reportCPU(b, kids)()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					srv.ServeHTTP(httptest.NewRecorder(), req())
				}
			})
		})
		externaltest.Shutdown(srv)
	}
}

// reportCPU reports the CPU time (user + system, from /proc, 10ms ticks)
// per operation of this process and of the plugin processes pids: a figure
// that other work on the machine disturbs far less than wall time.
func reportCPU(b *testing.B, pids []int) func() {
	self0 := cpuTicks(os.Getpid())
	var kids0 int64
	for _, pid := range pids {
		kids0 += cpuTicks(pid)
	}
	return func() {
		n := float64(b.N)
		b.ReportMetric(float64(cpuTicks(os.Getpid())-self0)*1e4/n, "gw-cpu-µs/op")
		if len(pids) > 0 {
			var kids int64
			for _, pid := range pids {
				kids += cpuTicks(pid)
			}
			b.ReportMetric(float64(kids-kids0)*1e4/n, "plugin-cpu-µs/op")
		}
	}
}

// cpuTicks is utime + stime of process pid in clock ticks (1/100 s).
func cpuTicks(pid int) int64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}
