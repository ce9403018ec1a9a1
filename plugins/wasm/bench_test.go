package wasm

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/plugins/wasm/internal/benchdata"
	"github.com/omnigate/omnigate/sdk/wasm/abi"
)

type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

func benchGateway(b *testing.B, plugins, chain, path string) {
	benchdata.Register()
	yaml := "log: {access_log: false}\nplugins:\n  id: {type: as-receptionist}\n" + plugins +
		"routes:\n  - fhir: true\n    compress: false\n    plugins: [" + chain + "]\n"
	cfg, err := gateway.Parse("bench.yaml", []byte(yaml), nil)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: discard})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	req := httptest.NewRequest("GET", path, nil)
	req.Header.Set("X-Tenant", "acme")
	serveOne := func(w *discardWriter) {
		clear(w.h)
		srv.ServeHTTP(w, req.Clone(req.Context()))
	}
	// Latency percentiles of sequential requests, then throughput of
	// parallel ones.
	w := &discardWriter{h: http.Header{}}
	for range 2000 {
		serveOne(w)
	}
	lat := make([]time.Duration, 20000)
	for i := range lat {
		t0 := time.Now()
		serveOne(w)
		lat[i] = time.Since(t0)
	}
	slices.Sort(lat)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			serveOne(w)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkGateway compares, in one run, a FHIR route with no policy
// plugin, with require-header, and with phi-redact on a 20 KB search
// Bundle (and without a plugin on that Bundle). Each case reports
// ns/op from parallel requests and p50/p99 of sequential ones.
func BenchmarkGateway(b *testing.B) {
	rh := guest(b, "../../examples/require-header")
	pr := guest(b, "../../examples/phi-redact")
	wasmPlugin := func(name, path, config string) string {
		return fmt.Sprintf("  %s: {type: wasm, path: %s, cache_dir: %s, config: %s}\n", name, path, cacheDir, config)
	}
	b.Run("none", func(b *testing.B) {
		benchGateway(b, "", "id", "/fhir/R4/Patient/example")
	})
	b.Run("require-header", func(b *testing.B) {
		benchGateway(b, wasmPlugin("rh", rh, "{header: X-Tenant}"), "id, rh", "/fhir/R4/Patient/example")
	})
	b.Run("none-bundle20K", func(b *testing.B) {
		benchGateway(b, "", "id", "/fhir/R4/Patient")
	})
	b.Run("phi-redact-bundle20K", func(b *testing.B) {
		benchGateway(b, wasmPlugin("pr", pr, "{}"), "id, pr", "/fhir/R4/Patient")
	})
}

// BenchmarkDeadline measures what bounding a call costs on wazero: the
// guest's request handler (require-header's, one host call) with no
// deadline at all, with a context.WithTimeout per call, with a per-instance
// cancellable context and a reused wall-clock timer (the host's way before
// the CPU budget), and with the host's CPU budget (the thread locked, its
// CPU clock read, the same timer).
func BenchmarkDeadline(b *testing.B) {
	path := guest(b, "../../examples/require-header")
	p, _, _ := newPlugin(b, path, func(o *Options) { o.Config = []byte(`{"header":"X-Tenant"}`); o.Instances = 1 })
	req := httptest.NewRequest("GET", "/fhir/R4/Patient/1", nil)
	req.Header.Set("X-Tenant", "acme")
	ex := &exchange{p: p, r: req, w: httptest.NewRecorder(), phase: phaseRequest}
	m := p.cur.Load()
	in, err := m.pool.get(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	in.ex = ex
	b.Run("cpu-budget", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := in.call(in.onReq, time.Second, 10*time.Second); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("wall-timer", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			in.timer.Reset(time.Second)
			err := in.onReq.CallWithStack(in.ctx, in.stack[:])
			in.timer.Stop()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("context-with-timeout", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ctx, cancel := context.WithTimeout(in.ctx, time.Second)
			err := in.onReq.CallWithStack(ctx, in.stack[:])
			cancel()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unbounded", func(b *testing.B) {
		// A runtime without WithCloseOnContextDone: cheapest, but a guest
		// loop would never stop.
		ctx := context.Background()
		cache, _ := compilationCache(cacheDir)
		rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().WithCompilationCache(cache))
		defer rt.Close(ctx)
		if err := instantiateHostAndWASI(ctx, rt); err != nil {
			b.Fatal(err)
		}
		code := mustRead(b, path)
		cm, err := rt.CompileModule(ctx, code)
		if err != nil {
			b.Fatal(err)
		}
		u := &instance{m: m}
		uctx := context.WithValue(ctx, instanceKey{}, u)
		mod, err := rt.InstantiateModule(uctx, cm, wazero.NewModuleConfig().WithName("").WithStartFunctions("_initialize"))
		if err != nil {
			b.Fatal(err)
		}
		var stack [1]uint64
		mod.ExportedFunction(abi.ExportStart).CallWithStack(uctx, stack[:])
		u.ex = ex
		fn := mod.ExportedFunction(abi.ExportOnRequest)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if err := fn.CallWithStack(uctx, stack[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	m.pool.put(in)
}

// BenchmarkInstanceMemory reports the memory one pooled instance holds:
// the Go heap growth per instance (which includes its linear memory) and
// the size of that linear memory.
func BenchmarkInstanceMemory(b *testing.B) {
	for _, ex := range []string{"require-header", "phi-redact"} {
		b.Run(ex, func(b *testing.B) {
			path := guest(b, "../../examples/"+ex)
			conf := []byte(`{"header":"X-Tenant"}`)
			if ex != "require-header" {
				conf = nil
			}
			heap := func() uint64 {
				runtime.GC()
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				return ms.HeapInuse + ms.StackInuse
			}
			const n = 8
			for b.Loop() {
				p1, _, _ := newPlugin(b, path, func(o *Options) { o.Config = conf; o.Instances = 1 })
				h1 := heap()
				p9, _, _ := newPlugin(b, path, func(o *Options) { o.Config = conf; o.Instances = 1 + n })
				h9 := heap()
				in, _ := p1.cur.Load().pool.get(context.Background())
				b.ReportMetric(float64(h9-h1)/n/(1<<20), "MiB/instance")
				b.ReportMetric(float64(in.mod.Memory().Size())/(1<<20), "MiB-linear-memory")
				p1.cur.Load().pool.put(in)
				p9.Close()
				p1.Close()
			}
		})
	}
}

func instantiateHostAndWASI(ctx context.Context, rt wazero.Runtime) error {
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		return err
	}
	return instantiateHost(ctx, rt)
}

// BenchmarkServe is the plugin alone, in front of a handler that does
// nothing: what the host and the guest add to a request, in parallel.
func BenchmarkServe(b *testing.B) {
	p, _, reg := newPlugin(b, guest(b, "../../examples/require-header"), func(o *Options) {
		o.Config = []byte(`{"header":"X-Tenant"}`)
		o.Timeout = DefaultTimeout
		o.Instances = DefaultInstances()
	})
	defer func() {
		// Calls cut at the deadline (a descheduled goroutine on a busy
		// machine) cost a new instance each: report them.
		b.ReportMetric(counterValue(b, reg, MetricFailures, nil), "failures")
	}()
	req := httptest.NewRequest("GET", "/fhir/R4/Patient/1", nil)
	req.Header.Set("X-Tenant", "acme")
	req = req.WithContext(gateway.NewRequestContext(req.Context(), fhirRoute, "req-1", nil))
	next := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			p.ServeHTTP(w, req, next)
		}
	})
}
