// Command wasmbench measures WebAssembly policy plugins in the gateway on
// loopback, side by side in one run: a FHIR route with no plugin, with
// require-header, and with phi-redact on a 20 KB search Bundle (against the
// same route without a plugin serving that Bundle). The terminal answers
// from memory, so the figures are the gateway's and the plugin's. Load
// comes from wrk when installed, else a Go client.
//
//	go run ./plugins/wasm/internal/wasmbench [-duration 10s] [-connections 50]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/loadgen"
	"github.com/omnigate/omnigate/plugins/wasm"
	"github.com/omnigate/omnigate/plugins/wasm/internal/benchdata"
)

func main() {
	duration := flag.Duration("duration", 10*time.Second, "measured time per target")
	conns := flag.Int("connections", 50, "concurrent connections")
	tool := flag.String("tool", "", "wrk or go (default: wrk when installed)")
	flag.Parse()
	benchdata.Register()
	if err := run(*duration, *conns, *tool); err != nil {
		fmt.Fprintln(os.Stderr, "wasmbench:", err)
		os.Exit(1)
	}
}

func gatewayURL(yaml string) (string, error) {
	cfg, err := gateway.Parse("bench.yaml", []byte(yaml), nil)
	if err != nil {
		return "", err
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err != nil {
		return "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go (&http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
	return "http://" + ln.Addr().String(), nil
}

func run(duration time.Duration, conns int, tool string) error {
	dir, err := os.MkdirTemp("", "wasmbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	mods := map[string]string{}
	for _, ex := range []string{"require-header", "phi-redact"} {
		mods[ex] = filepath.Join(dir, ex+".wasm")
		if err := wasm.Build(context.Background(), filepath.Join("examples", ex), mods[ex]); err != nil {
			return fmt.Errorf("%w (run from the repository root)", err)
		}
	}
	const head = "log: {access_log: false}\nplugins:\n  id: {type: as-receptionist}\n"
	route := func(chain string) string {
		return "routes:\n  - fhir: true\n    compress: false\n    plugins: [" + chain + "]\n"
	}
	plugin := func(name, mod, config string) string {
		return fmt.Sprintf("  %s: {type: wasm, path: %s, config: %s}\n", name, mod, config)
	}
	type target struct{ name, baseline, yaml, path string }
	targets := []target{
		{"none", "", head + route("id"), "/fhir/R4/Patient/example"},
		{"require-header", "none", head + plugin("rh", mods["require-header"], "{header: X-Tenant}") + route("id, rh"), "/fhir/R4/Patient/example"},
		{"none-bundle20K", "", head + route("id"), "/fhir/R4/Patient"},
		{"phi-redact-bundle20K", "none-bundle20K", head + plugin("pr", mods["phi-redact"], "{}") + route("id, pr"), "/fhir/R4/Patient"},
	}
	fmt.Printf("load: %d connections, %s per target, tool %s, GOMAXPROCS %d\n\n", conns, duration, tool, gomaxprocs())
	fmt.Println("| target | req/s | vs baseline | p50 | p99 | server CPU/req | added CPU/req | errors |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	results := map[string]*loadgen.Result{}
	cpus := map[string]time.Duration{}
	for _, t := range targets {
		u, err := gatewayURL(t.yaml)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		opts := loadgen.Options{URL: u + t.path, Connections: conns, Duration: time.Second, Tool: tool,
			Header: http.Header{"X-Tenant": {"acme"}}}
		loadgen.Run(context.Background(), opts) // warm up
		opts.Duration = duration
		cpu0 := cpuTime()
		res, err := loadgen.Run(context.Background(), opts)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		cpu := time.Duration(0)
		if res.Requests > 0 {
			cpu = (cpuTime() - cpu0) / time.Duration(res.Requests)
		}
		results[t.name], cpus[t.name] = res, cpu
		ratio, added := "—", "—"
		if b := results[t.baseline]; b != nil {
			ratio = fmt.Sprintf("%.0f%%", 100*res.RPS/b.RPS)
			added = fmt.Sprintf("%.1f µs", float64((cpu-cpus[t.baseline]).Nanoseconds())/1000)
		}
		fmt.Printf("| %s | %.0f | %s | %s | %s | %.1f µs | %s | %d |\n", t.name, res.RPS, ratio,
			res.P50.Round(time.Microsecond), res.P99.Round(time.Microsecond), float64(cpu.Nanoseconds())/1000, added, res.Errors)
	}
	return nil
}

func gomaxprocs() int { return runtime.GOMAXPROCS(0) }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
