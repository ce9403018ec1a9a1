package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	// The plugins the peer comparison runs.
	_ "github.com/omnigate/omnigate/builtin/cache"
	_ "github.com/omnigate/omnigate/builtin/ratelimit"
	"github.com/omnigate/omnigate/internal/redisproc"
)

// gatewayRoute is a gateway config with one upstream route to upstream
// through plugins, and the plugins' definitions.
func gatewayRoute(upstream, plugins, chain, extra string) string {
	return extra + "plugins:\n" + plugins + "routes:\n  - path: /fhir/R4/*path\n    upstream: " + upstream + "\n    plugins: [" + chain + "]\n"
}

const (
	cachePlugin = "  cache: {type: cache, l1: {enabled: true}}\n"
	// One client, a limit no run reaches: every request is decided, none
	// rejected, as with nginx's limit_req below.
	limitPlugin = "  rl: {type: ratelimit, key: ip, default: {limit: 1000000000, window: 1s, burst: 0}, block: {after: 0}}\n"
)

// peerTargets builds OmniGate's cache and limiter targets and, when peers
// is set and nginx is installed, nginx's. cleanup stops what was started.
func peerTargets(bare string, logTo io.Writer, peers bool, filter *regexp.Regexp) (ts []target, cleanup func(), err error) {
	var stops []func()
	cleanup = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	if !filter.MatchString("cache") && !filter.MatchString("limit") && !filter.MatchString("nginx") {
		return nil, cleanup, nil
	}
	cacheURL, err := gatewayServer(gatewayRoute(bare, cachePlugin, "cache", ""), logTo)
	if err != nil {
		return nil, cleanup, err
	}
	limitURL, err := gatewayServer(gatewayRoute(bare, limitPlugin, "rl", ""), logTo)
	if err != nil {
		return nil, cleanup, err
	}
	ts = append(ts,
		target{name: "cache-gateway", baseline: "proxy-gateway", url: cacheURL, peer: "cache-nginx"},
		target{name: "limit-gateway", baseline: "proxy-gateway", url: limitURL, peer: "limit-nginx"})
	if _, err := redisproc.Binary(); err == nil {
		dir, err := os.MkdirTemp("", "omnigate-bench-redis-")
		if err != nil {
			return nil, cleanup, err
		}
		stops = append(stops, func() { os.RemoveAll(dir) })
		srv, err := redisproc.Start(context.Background(), redisproc.Options{Dir: dir})
		if err != nil {
			return nil, cleanup, err
		}
		stops = append(stops, srv.Kill)
		u, err := gatewayServer(gatewayRoute(bare, limitPlugin, "rl", "redis: {url: "+srv.URL()+"}\n"), logTo)
		if err != nil {
			return nil, cleanup, err
		}
		ts = append(ts, target{name: "limit-gateway-redis", baseline: "proxy-gateway", url: u, peer: "limit-nginx"})
	}
	if !peers {
		return ts, cleanup, nil
	}
	n, err := startNginx(strings.TrimPrefix(bare, "http://"), runtime.NumCPU())
	if err != nil {
		fmt.Fprintf(os.Stderr, "peers skipped: %v\n", err)
		return ts, cleanup, nil
	}
	stops = append(stops, n.stop)
	// nginx first in each round's list is not needed: ratios are taken
	// per round after all targets ran.
	ts = append(ts,
		target{name: "proxy-nginx", baseline: "bare", url: n.proxy, extraCPU: n.cpu},
		target{name: "cache-nginx", baseline: "proxy-nginx", url: n.cache, extraCPU: n.cpu},
		target{name: "limit-nginx", baseline: "proxy-nginx", url: n.limiter, extraCPU: n.cpu})
	return ts, cleanup, nil
}

// peerRow is one line of the OmniGate vs nginx table.
type peerRow struct{ what, ours, theirs string }

var peerRows = []peerRow{
	{"reverse proxy (keep-alive to the upstream)", "proxy-gateway", "proxy-nginx"},
	{"cache hits (OmniGate: cache plugin, memory + L1; nginx: proxy_cache)", "cache-gateway", "cache-nginx"},
	{"rate limiter, in memory (nginx: limit_req), nothing rejected", "limit-gateway", "limit-nginx"},
	{"rate limiter on Redis (fleet-wide) vs nginx's per-node limit_req", "limit-gateway-redis", "limit-nginx"},
}

// printPeers prints OmniGate's throughput over nginx's for each pair, the
// median of the per-round ratios, with each side's server CPU per
// request.
func printPeers(rps map[string][]float64, cpu map[string][]time.Duration) {
	median := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	printed := false
	for _, r := range peerRows {
		a, b := rps[r.ours], rps[r.theirs]
		if len(a) == 0 || len(a) != len(b) {
			continue
		}
		if !printed {
			fmt.Println()
			fmt.Println("| OmniGate vs nginx | OmniGate req/s | nginx req/s | OmniGate ÷ nginx | OmniGate CPU/req | nginx CPU/req |")
			fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: |")
			printed = true
		}
		ratios := make([]float64, len(a))
		for i := range a {
			ratios[i] = a[i] / b[i]
		}
		cpuMed := func(name string) float64 {
			v := make([]float64, len(cpu[name]))
			for i, d := range cpu[name] {
				v[i] = float64(d) / 1000
			}
			return median(v)
		}
		fmt.Printf("| %s | %.0f | %.0f | %.2f | %.1f µs | %.1f µs |\n", r.what, median(a), median(b), median(ratios), cpuMed(r.ours), cpuMed(r.theirs))
	}
}
