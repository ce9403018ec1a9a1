// Command wasmfailbench measures what a WebAssembly plugin that fails on
// every call costs the rest of the gateway, on loopback: the latency of a
// healthy route (a FHIR route with require-header) alone, then while a
// second route's plugin fails on every request (a trap, an endless loop, a
// 60 MiB reply, a deadlock), with the host's protections at their defaults
// and, side by side, with the circuit breaker off and restarts unbounded.
// The baseline is the same load with the second route's plugin answering
// every request itself. It reports the healthy route's p50 and p99 against
// that baseline, the
// process's peak RSS during each run and after an idle wait, the instances
// started, and the bytes logged.
//
//	go run ./plugins/wasm/internal/wasmfailbench [-duration 10s] [-connections 20]
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/loadgen"
	"github.com/omnigate/omnigate/plugins/wasm"
	"github.com/omnigate/omnigate/plugins/wasm/internal/benchdata"
)

func main() {
	duration := flag.Duration("duration", 10*time.Second, "measured time per run")
	conns := flag.Int("connections", 20, "connections to each route")
	idle := flag.Duration("idle", 5*time.Second, "idle wait after each run before RSS is read again")
	tool := flag.String("tool", "", "wrk or go (default: wrk when installed)")
	flag.Parse()
	benchdata.Register()
	if err := run(*duration, *idle, *conns, *tool); err != nil {
		fmt.Fprintln(os.Stderr, "wasmfailbench:", err)
		os.Exit(1)
	}
}

// countingWriter counts the bytes logged.
type countingWriter struct{ n atomic.Int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n.Add(int64(len(p))); return len(p), nil }

// Pool of the failing plugin: 4 instances of 96 MiB (room for a 60 MiB
// reply) under a 384 MiB cap.
const (
	failMemory    = 96 << 20
	failInstances = 4
	failPoolCap   = failInstances * failMemory
)

type failure struct {
	name   string
	header http.Header
}

func run(duration, idle time.Duration, conns int, tool string) error {
	dir, err := os.MkdirTemp("", "wasmfailbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	rh := filepath.Join(dir, "require-header.wasm")
	tg := filepath.Join(dir, "testguest.wasm")
	if err := wasm.Build(context.Background(), filepath.Join("examples", "require-header"), rh); err != nil {
		return fmt.Errorf("%w (run from the repository root)", err)
	}
	if err := wasm.Build(context.Background(), filepath.Join("plugins", "wasm", "testdata", "guests", "testguest"), tg); err != nil {
		return err
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		w.Write(benchdata.Small)
	}))
	defer up.Close()

	config := func(protections string) string {
		return fmt.Sprintf(`log: {access_log: false}
plugins:
  id: {type: as-receptionist}
  rh: {type: wasm, path: %s, config: {header: X-Tenant}}
  bad: {type: wasm, path: %s, memory_limit: %d, instances: %d, pool_memory_limit: %d%s}
routes:
  - fhir: true
    compress: false
    plugins: [id, rh]
  - name: failing
    path: /fail/*rest
    upstream: %s
    compress: false
    plugins: [id, bad]
`, rh, tg, failMemory, failInstances, failPoolCap, protections, up.URL)
	}
	fmt.Printf("GOMAXPROCS %d, %d connections per route, %s per run, RSS read every 50ms and after %s idle\n",
		runtime.GOMAXPROCS(0), conns, duration, idle)
	fmt.Printf("failing plugin: %d instances × %d MiB, pool cap %d MiB\n\n", failInstances, failMemory>>20, failPoolCap>>20)

	healthy := func(u string) loadgen.Options {
		return loadgen.Options{URL: u + "/fhir/R4/Patient/example", Connections: conns, Duration: duration, Tool: tool,
			Header: http.Header{"X-Tenant": {"acme"}}}
	}
	failures := []failure{
		{"trap", http.Header{"X-Test": {"trap"}}},
		{"endless loop", http.Header{"X-Test": {"loop"}}},
		{"60 MiB reply", http.Header{"X-Test": {"huge"}, "X-Size": {strconv.Itoa(60 << 20)}}},
		{"deadlock", http.Header{"X-Test": {"deadlock"}}},
	}
	variants := []struct{ name, keys string }{
		{"defaults", ""},
		{"no breaker, unbounded restarts", ", breaker_failures: 0, restart_rate: 1000000"},
	}

	fmt.Println("| failing plugin | protections | healthy p50 | vs baseline | healthy p99 | healthy req/s | failing req/s | peak RSS | RSS after idle | instances started | failures (kinds) | log |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
	// The baseline: the same load on both routes, the second route's
	// plugin answering every request itself (a local reply), as cheaply as
	// an open breaker does.
	base, err := measure(config(""), healthy, failure{"none (baseline: it answers locally)", http.Header{"X-Test": {"respond"}}},
		"—", nil, duration, idle, conns, tool)
	if err != nil {
		return err
	}
	for _, f := range failures {
		for _, v := range variants {
			if _, err := measure(config(v.keys), healthy, f, v.name, base, duration, idle, conns, tool); err != nil {
				return err
			}
		}
	}
	return nil
}

// measure runs load on the healthy route and on the failing one at once
// and prints a row.
func measure(yaml string, healthy func(string) loadgen.Options, f failure, variant string, base *loadgen.Result,
	duration, idle time.Duration, conns int, tool string) (*loadgen.Result, error) {
	g, err := start(yaml)
	if err != nil {
		return nil, err
	}
	defer g.close()
	loadgen.Run(context.Background(), withDuration(healthy(g.url), time.Second)) // warm up
	logs0 := g.logs.n.Load()
	started0 := g.metric(wasm.MetricStarted, "bad", "")
	rss := sampleRSS()
	var wg sync.WaitGroup
	var bad *loadgen.Result
	wg.Add(1)
	go func() {
		defer wg.Done()
		bad, _ = loadgen.Run(context.Background(), loadgen.Options{URL: g.url + "/fail/x", Connections: conns,
			Duration: duration, Tool: tool, Header: f.header})
	}()
	res, err := loadgen.Run(context.Background(), healthy(g.url))
	wg.Wait()
	peak := rss.stop()
	if err != nil {
		return nil, err
	}
	time.Sleep(idle)
	after := readRSS()
	badRPS := 0.0
	if bad != nil {
		badRPS = bad.RPS
	}
	ratio := "—"
	if base != nil {
		ratio = fmt.Sprintf("%.1f×", float64(res.P50)/float64(base.P50))
	}
	fmt.Printf("| %s | %s | %s | %s | %s | %.0f | %.0f | %s | %s | %.0f | %s | %s |\n",
		f.name, variant, res.P50.Round(time.Microsecond), ratio, res.P99.Round(time.Microsecond),
		res.RPS, badRPS, mib(peak), mib(after), g.metric(wasm.MetricStarted, "bad", "")-started0, g.kinds(),
		kib(g.logs.n.Load()-logs0))
	return res, nil
}

func withDuration(o loadgen.Options, d time.Duration) loadgen.Options { o.Duration = d; return o }

type gw struct {
	url  string
	srv  *gateway.Server
	hs   *http.Server
	reg  *prometheus.Registry
	logs *countingWriter
}

func start(yaml string) (*gw, error) {
	cfg, err := gateway.Parse("bench.yaml", []byte(yaml), nil)
	if err != nil {
		return nil, err
	}
	g := &gw{reg: prometheus.NewRegistry(), logs: &countingWriter{}}
	g.srv, err = gateway.New(context.Background(), cfg, gateway.Options{Registry: g.reg,
		Logger: slog.New(slog.NewJSONHandler(g.logs, nil))})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g.hs = &http.Server{Handler: g.srv, ReadHeaderTimeout: 10 * time.Second}
	go g.hs.Serve(ln)
	g.url = "http://" + ln.Addr().String()
	return g, nil
}

func (g *gw) close() {
	g.hs.Close()
	g.srv.Shutdown(context.Background())
	runtime.GC()
}

// metric sums a metric's samples for a plugin (and a kind, when given).
func (g *gw) metric(name, plugin, kind string) float64 {
	mfs, _ := g.reg.Gather()
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			ok := true
			for _, l := range m.GetLabel() {
				if l.GetName() == "plugin" && l.GetValue() != plugin || kind != "" && l.GetName() == "kind" && l.GetValue() != kind {
					ok = false
				}
			}
			if ok {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// kinds lists the failing plugin's failures by kind.
func (g *gw) kinds() string {
	var parts []string
	for _, k := range []string{"trap", "exit", "deadline", "too_large", "abi", "busy", "breaker"} {
		if n := g.metric(wasm.MetricFailures, "bad", k); n > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, n))
		}
	}
	return strings.Join(parts, ", ")
}

// rssSampler records the peak RSS while it runs.
type rssSampler struct {
	stopc chan struct{}
	done  chan int64
}

func sampleRSS() *rssSampler {
	s := &rssSampler{stopc: make(chan struct{}), done: make(chan int64)}
	go func() {
		peak := readRSS()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.stopc:
				s.done <- max(peak, readRSS())
				return
			case <-t.C:
				peak = max(peak, readRSS())
			}
		}
	}()
	return s
}

func (s *rssSampler) stop() int64 { close(s.stopc); return <-s.done }

// readRSS returns the process's resident set size in bytes.
func readRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mib(n int64) string { return fmt.Sprintf("%d MiB", n>>20) }

func kib(n int64) string { return fmt.Sprintf("%d KiB", n>>10) }
