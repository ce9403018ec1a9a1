// Package loadgen drives closed-loop HTTP load against a loopback target
// and reports throughput and latency percentiles. It runs wrk when it is
// installed (less CPU per request, so the target gets more of the machine)
// and its own Go client otherwise.
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options describe one load run.
type Options struct {
	// URL is the target. Required.
	URL string
	// Method defaults to GET.
	Method string
	// Body is sent with every request (Go client only).
	Body []byte
	// Header is added to every request.
	Header http.Header
	// Connections is the number of concurrent keep-alive connections, each
	// sending its next request when the previous answer arrives. Default 50.
	Connections int
	// Duration of the measured run. Default 10s.
	Duration time.Duration
	// Tool is "wrk", "go" or "" (wrk when installed, else go).
	Tool string
}

// Result is what a run measured.
type Result struct {
	Tool     string
	Requests int64
	Errors   int64 // transport errors and non-2xx/3xx answers
	Elapsed  time.Duration
	RPS      float64
	P50, P99 time.Duration
}

func (r *Result) String() string {
	return fmt.Sprintf("%.0f req/s, p50 %s, p99 %s, %d requests, %d errors (%s)",
		r.RPS, r.P50, r.P99, r.Requests, r.Errors, r.Tool)
}

// WrkAvailable reports whether wrk is on PATH.
func WrkAvailable() bool {
	_, err := exec.LookPath("wrk")
	return err == nil
}

// Run drives load as opts says.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.URL == "" {
		return nil, errors.New("loadgen: URL required")
	}
	if opts.Method == "" {
		opts.Method = http.MethodGet
	}
	if opts.Connections <= 0 {
		opts.Connections = 50
	}
	if opts.Duration <= 0 {
		opts.Duration = 10 * time.Second
	}
	tool := opts.Tool
	if tool == "" {
		tool = "go"
		if WrkAvailable() && len(opts.Body) == 0 && opts.Method == http.MethodGet {
			tool = "wrk"
		}
	}
	if tool == "wrk" {
		return runWrk(ctx, opts)
	}
	return runGo(ctx, opts)
}

func runGo(ctx context.Context, opts Options) (*Result, error) {
	tr := &http.Transport{
		MaxIdleConnsPerHost: opts.Connections,
		MaxConnsPerHost:     opts.Connections,
		DisableCompression:  true,
		Proxy:               nil,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	ctx, cancel := context.WithTimeout(ctx, opts.Duration)
	defer cancel()
	var (
		mu    sync.Mutex
		lats  []time.Duration
		errs  int64
		wg    sync.WaitGroup
		start = time.Now()
	)
	for range opts.Connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 4096)
			var localErrs int64
			for ctx.Err() == nil {
				req, err := http.NewRequestWithContext(ctx, opts.Method, opts.URL, bytes.NewReader(opts.Body))
				if err != nil {
					localErrs++
					break
				}
				for k, v := range opts.Header {
					req.Header[k] = v
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						localErrs++
					}
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				local = append(local, time.Since(t0))
				if resp.StatusCode >= 400 {
					localErrs++
				}
			}
			mu.Lock()
			lats = append(lats, local...)
			errs += localErrs
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lats)
	res := &Result{Tool: "go", Requests: int64(len(lats)), Errors: errs, Elapsed: elapsed,
		RPS: float64(len(lats)) / elapsed.Seconds()}
	if n := len(lats); n > 0 {
		res.P50 = lats[n*50/100]
		res.P99 = lats[min(n*99/100, n-1)]
	}
	return res, nil
}

var (
	wrkRPS      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkTotal    = regexp.MustCompile(`(\d+) requests in ([0-9.]+\w+)`)
	wrkPct      = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSockErrs = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func runWrk(ctx context.Context, opts Options) (*Result, error) {
	args := []string{"-t", "2", "-c", strconv.Itoa(opts.Connections),
		"-d", fmt.Sprintf("%ds", max(1, int(opts.Duration.Seconds()))), "--latency"}
	for k, vs := range opts.Header {
		for _, v := range vs {
			args = append(args, "-H", k+": "+v)
		}
	}
	args = append(args, opts.URL)
	out, err := exec.CommandContext(ctx, "wrk", args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("run wrk: %w: %s", err, out)
	}
	return parseWrk(string(out))
}

func parseWrk(out string) (*Result, error) {
	res := &Result{Tool: "wrk"}
	m := wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("loadgen: unexpected wrk output: %s", out)
	}
	res.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m := wrkTotal.FindStringSubmatch(out); m != nil {
		res.Requests, _ = strconv.ParseInt(m[1], 10, 64)
		res.Elapsed, _ = time.ParseDuration(m[2])
	}
	for _, m := range wrkPct.FindAllStringSubmatch(out, -1) {
		d, _ := time.ParseDuration(m[2] + strings.Replace(m[3], "us", "µs", 1))
		if m[1] == "50" {
			res.P50 = d
		} else {
			res.P99 = d
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		res.Errors += n
	}
	if m := wrkSockErrs.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			res.Errors += n
		}
	}
	return res, nil
}
