// Command omnigate-bench measures the gateway against baselines side by side
// in one run, on loopback: every target is served by this process on its own
// port, and load comes from wrk (when installed) or a Go client.
//
//	omnigate-bench [-duration 10s] [-connections 50] [-rounds 3] [-tool wrk|go] [-only REGEXP]
//
// Targets:
//
//	bare            an httprouter handler answering a 300-byte JSON body
//	gateway-empty   the same handler as the terminal of a gateway route, no plugins
//	gateway-nolog   the same, access log off
//	gateway-3noop   the same route with three no-op plugins
//	proxy-stock     httputil.ReverseProxy with the default transport, to "bare"
//	proxy-gateway   a gateway upstream route, to "bare"
//	cache-gateway   the same route with the cache plugin (in memory, L1 on): hits
//	limit-gateway   the same route with the rate limiter in memory, one client, nothing rejected
//	limit-gateway-redis  the same on a redis-server started for the run (when installed)
//
// Peers (with -peers, the default, when nginx is installed): one nginx
// started with a generated config under a temporary prefix, as a
// non-daemon child on loopback ports, in front of the same "bare" handler:
//
//	proxy-nginx     proxy_pass with upstream keep-alive
//	cache-nginx     proxy_cache: hits
//	limit-nginx     limit_req (one client, a rate no run reaches)
//
// and a second table of ratios: OmniGate's requests/s over nginx's for the
// proxy, cache hits and the limiter, with the server CPU per request of
// each (this process plus nginx's processes).
//
// Targets are measured in turn, round after round, so that noise from other
// work on the machine spreads over all of them; the table shows medians. It
// prints a Markdown table: requests/s, the ratio to the target's baseline
// (per round, then the median), latency p50/p99, and server CPU per request (this process's
// user+system time over the run divided by requests; exact with wrk, which
// runs in its own process, inflated by the client's own CPU otherwise).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/loadgen"
)

// body is a 300-byte FHIR-like JSON document.
var body = []byte(`{"resourceType":"Patient","id":"example","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00Z"},` +
	`"active":true,"name":[{"use":"official","family":"Chalmers","given":["Peter","James"]}],"gender":"male",` +
	`"birthDate":"1974-12-25","managingOrganization":{"reference":"Organization/1"},"text":{"status":"generated"}}`)

func bareHandler() http.Handler {
	r := httprouter.New()
	h := func(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) {
		w.Header().Set("Content-Type", "application/fhir+json")
		w.Write(body)
	}
	r.GET("/fhir/R4/Patient/:id", h)
	return r
}

type noopConfig struct{}

func init() {
	gateway.RegisterPlugin("noop", func() *noopConfig { return &noopConfig{} },
		func(ctx context.Context, _ *noopConfig, _ *gateway.Env) (gateway.Plugin, error) {
			return gateway.PluginFunc(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				next.ServeHTTP(w, r)
			}), nil
		})
	type staticConfig struct{}
	gateway.RegisterFHIRHandler(func() *staticConfig { return &staticConfig{} },
		func(ctx context.Context, _ *staticConfig, _ *gateway.Env) (http.Handler, error) {
			return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/fhir+json")
				w.Write(body)
			}), nil
		})
}

type target struct {
	name, baseline, url string
	// peer names the nginx target this one is compared with.
	peer string
	// extraCPU is CPU spent outside this process (nginx).
	extraCPU func() time.Duration
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "measured time per target")
	conns := flag.Int("connections", 50, "concurrent connections")
	tool := flag.String("tool", "", "wrk or go (default: wrk when installed)")
	only := flag.String("only", "", "run only targets matching this regexp")
	rounds := flag.Int("rounds", 3, "interleaved rounds; the table shows medians")
	peers := flag.Bool("peers", true, "also measure nginx (proxy_pass, proxy_cache, limit_req) when installed")
	flag.Parse()
	if err := run(*duration, *conns, *rounds, *tool, *only, *peers); err != nil {
		fmt.Fprintln(os.Stderr, "omnigate-bench:", err)
		os.Exit(1)
	}
}

func serve(h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go (&http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
	return "http://" + ln.Addr().String(), nil
}

func gatewayServer(yaml string, logTo io.Writer) (string, error) {
	cfg, err := gateway.Parse("bench.yaml", []byte(yaml), nil)
	if err != nil {
		return "", err
	}
	// The access log goes to logTo as in production: JSON lines, buffered.
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{LogOutput: logTo})
	if err != nil {
		return "", err
	}
	return serve(srv)
}

func run(duration time.Duration, conns, rounds int, tool, only string, peers bool) error {
	filter, err := regexp.Compile(only)
	if err != nil {
		return err
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	bare, err := serve(bareHandler())
	if err != nil {
		return err
	}
	const path = "/fhir/R4/Patient/example"
	gwEmpty, err := gatewayServer("routes:\n  - fhir: true\n", devnull)
	if err != nil {
		return err
	}
	gwNoLog, err := gatewayServer("log: {access_log: false}\nroutes:\n  - fhir: true\n", devnull)
	if err != nil {
		return err
	}
	gw3, err := gatewayServer(`
plugins:
  n1: {type: noop}
  n2: {type: noop}
  n3: {type: noop}
routes:
  - fhir: true
    plugins: [n1, n2, n3]
`, devnull)
	if err != nil {
		return err
	}
	bareURL, _ := url.Parse(bare)
	stockProxy := httputil.NewSingleHostReverseProxy(bareURL)
	stockProxy.ErrorLog = log.New(io.Discard, "", 0) // wrk cancels requests when it stops
	stock, err := serve(stockProxy)
	if err != nil {
		return err
	}
	gwProxy, err := gatewayServer("routes:\n  - path: /fhir/R4/*path\n    upstream: "+bare+"\n", devnull)
	if err != nil {
		return err
	}
	targets := []target{
		{name: "bare", url: bare},
		{name: "gateway-empty", baseline: "bare", url: gwEmpty},
		{name: "gateway-nolog", baseline: "bare", url: gwNoLog},
		{name: "gateway-3noop", baseline: "bare", url: gw3},
		{name: "proxy-stock", url: stock},
		{name: "proxy-gateway", baseline: "proxy-stock", url: gwProxy},
	}
	more, cleanup, err := peerTargets(bare, devnull, peers, filter)
	defer cleanup()
	if err != nil {
		return err
	}
	targets = append(targets, more...)
	fmt.Printf("load: %d connections, %s per target, %d interleaved rounds (medians), tool %s, %d CPUs\n\n",
		conns, duration, rounds, toolName(tool), runtime.NumCPU())
	type sample struct {
		rps, ratio float64
		p50, p99   time.Duration
		cpu        time.Duration
		errors     int64
	}
	samples := map[string][]sample{}
	for round := 0; round < rounds; round++ {
		last := map[string]float64{}
		for _, t := range targets {
			if !filter.MatchString(t.name) {
				continue
			}
			// Warm up connections and caches, then measure.
			loadgen.Run(context.Background(), loadgen.Options{URL: t.url + path, Connections: conns, Duration: time.Second, Tool: tool})
			cpu0 := cpuTime() + t.extra()
			res, err := loadgen.Run(context.Background(), loadgen.Options{URL: t.url + path, Connections: conns, Duration: duration, Tool: tool})
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			cpu := cpuTime() + t.extra() - cpu0
			smp := sample{rps: res.RPS, p50: res.P50, p99: res.P99, errors: res.Errors}
			if res.Requests > 0 {
				smp.cpu = cpu / time.Duration(res.Requests)
			}
			if b, ok := last[t.baseline]; ok && b > 0 {
				smp.ratio = res.RPS / b
			}
			last[t.name] = res.RPS
			samples[t.name] = append(samples[t.name], smp)
			fmt.Fprintf(os.Stderr, "round %d %-14s %s\n", round+1, t.name, res)
		}
	}
	fmt.Println("| target | req/s | vs baseline | p50 | p99 | server CPU/req | errors |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, t := range targets {
		ss := samples[t.name]
		if len(ss) == 0 {
			continue
		}
		med := func(f func(sample) float64) float64 {
			v := make([]float64, len(ss))
			for i, s := range ss {
				v[i] = f(s)
			}
			slices.Sort(v)
			return v[len(v)/2]
		}
		ratio := "—"
		if t.baseline != "" && len(samples[t.baseline]) > 0 {
			ratio = fmt.Sprintf("%.0f%%", 100*med(func(s sample) float64 { return s.ratio }))
		}
		var errs int64
		for _, s := range ss {
			errs += s.errors
		}
		fmt.Printf("| %s | %.0f | %s | %s | %s | %.1f µs | %d |\n", t.name,
			med(func(s sample) float64 { return s.rps }), ratio,
			round(time.Duration(med(func(s sample) float64 { return float64(s.p50) }))),
			round(time.Duration(med(func(s sample) float64 { return float64(s.p99) }))),
			med(func(s sample) float64 { return float64(s.cpu) })/1000, errs)
	}
	rps := map[string][]float64{}
	cpus := map[string][]time.Duration{}
	for name, ss := range samples {
		for _, s := range ss {
			rps[name] = append(rps[name], s.rps)
			cpus[name] = append(cpus[name], s.cpu)
		}
	}
	printPeers(rps, cpus)
	return nil
}

func (t target) extra() time.Duration {
	if t.extraCPU == nil {
		return 0
	}
	return t.extraCPU()
}

func toolName(t string) string {
	if t != "" {
		return t
	}
	if loadgen.WrkAvailable() {
		return "wrk"
	}
	return "go (install wrk for lower client overhead)"
}

func round(d time.Duration) string {
	return strings.TrimSuffix(d.Round(10*time.Microsecond).String(), "0s")
}

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
