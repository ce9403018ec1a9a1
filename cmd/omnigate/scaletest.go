package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/omnigate/omnigate/internal/scaletest"
)

// runScaletest runs "omnigate scaletest": a fleet of gateway instances on
// one Redis under load, with a Redis outage, checked and reported.
func runScaletest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("scaletest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o scaletest.Options
	fs.IntVar(&o.Instances, "instances", 3, "gateway instances")
	fs.StringVar(&o.Redis, "redis", "single", "Redis to start: single, cluster (three masters), sentinel (primary, replica, three sentinels), url (with -redis-url), none")
	fs.StringVar(&o.RedisURL, "redis-url", "", "an existing Redis to use with -redis url (it is not stopped)")
	fs.StringVar(&o.Backend, "backend", "fhir", "fhir (the embedded FHIR server, in one more process that owns the store) or upstream (a FHIR stand-in served by the tool)")
	store := fs.String("store", "sqlite", "FHIR store: sqlite (one origin process owns the file; every instance proxies to it), postgres (every instance serves one PostgreSQL database directly; a private server is started and restarted under load) or both (the two runs back to back, compared)")
	fs.StringVar(&o.StoreURL, "store-url", "", "an existing PostgreSQL database for -store postgres (it is not restarted)")
	fs.DurationVar(&o.StoreStopAt, "store-stop-at", 0, "when to stop PostgreSQL (default 70% of -duration)")
	fs.DurationVar(&o.StoreRestartAt, "store-restart-at", 0, "when to start it again (default 80% of -duration)")
	fs.BoolVar(&o.NoStoreRestart, "no-store-restart", false, "leave PostgreSQL running")
	fs.StringVar(&o.Config, "config", "", "run this omnigate.yaml's plugins and routes instead of the generated config (needs a session plugin and a fhir: true route; -window, -limits and -burst are then ignored)")
	fs.BoolVar(&o.NoSchemaValidation, "no-validate", false, "turn the embedded FHIR server's schema validation of writes off")
	fs.DurationVar(&o.Duration, "duration", 60*time.Second, "how long the load runs")
	fs.Int64Var(&o.Requests, "requests", 0, "stop the load after this many requests (0: only -duration)")
	fs.IntVar(&o.Physicians, "physicians", 4, "simulated physicians")
	fs.IntVar(&o.Nurses, "nurses", 4, "simulated nurses")
	fs.IntVar(&o.Patients, "patients", 4, "simulated patients")
	fs.DurationVar(&o.ThinkTime, "think", 0, "pause of each simulated user between requests")
	fs.DurationVar(&o.Window, "window", 5*time.Second, "rate limit window")
	limits := fs.String("limits", "physician=3000,nurse=400,patient=100", "requests per window by role")
	fs.Int64Var(&o.Burst, "burst", 0, "requests per second of every role (0: no burst limit)")
	fs.DurationVar(&o.StopAt, "stop-at", 0, "when to stop Redis (default 40% of -duration)")
	fs.DurationVar(&o.RestartAt, "restart-at", 0, "when to restart it (default 60% of -duration)")
	fs.BoolVar(&o.NoFailover, "no-failover", false, "leave Redis running")
	fs.BoolVar(&o.Kill, "kill", false, "stop Redis with SIGKILL instead of SIGTERM")
	fs.DurationVar(&o.ProbeInterval, "probe-interval", 500*time.Millisecond, "pause between cache invalidation probes")
	fs.DurationVar(&o.ProbeTimeout, "probe-timeout", 30*time.Second, "how long a probe waits for an instance to serve the new version")
	fs.StringVar(&o.Dir, "dir", "", "keep configs, logs, the FHIR store and Redis data here (default: a temporary folder, removed)")
	out := fs.String("out", "scaletest-report", "folder for report.md, report.html and report.json")
	quiet := fs.Bool("quiet", false, "no progress bar")
	fs.Int64Var(&o.Seed, "seed", 1, "seed of the simulated users' choices")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "omnigate scaletest: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	o.Limits = map[string]int64{}
	for _, kv := range strings.Split(*limits, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		var n int64
		if _, err := fmt.Sscan(v, &n); !ok || err != nil {
			fmt.Fprintf(stderr, "omnigate scaletest: -limits: want role=N,…, got %q\n", kv)
			return 2
		}
		o.Limits[k] = n
	}
	if !*quiet {
		o.Progress = stderr
	}
	o.Log = stderr
	o.Command = "omnigate scaletest " + strings.Join(redactArgs(args), " ")
	o.Version = version
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *store != "both" {
		o.Store = *store
		rep, code := scaletestRun(ctx, o, *out, stdout, stderr)
		if rep == nil || !rep.Passed() {
			return max(code, 1)
		}
		return 0
	}
	// Both fleets with the same options, the origin's first, each into a
	// folder of its own, and their comparison.
	var reps []*scaletest.Report
	baseDir := o.Dir
	storeURL := o.StoreURL
	for _, st := range []struct{ store, dir string }{{scaletest.StoreSQLite, "origin"}, {scaletest.StorePostgres, "postgres"}} {
		o.Store, o.StoreURL = st.store, ""
		if st.store == scaletest.StorePostgres {
			o.StoreURL = storeURL
		}
		if baseDir != "" {
			o.Dir = filepath.Join(baseDir, st.dir)
		}
		fmt.Fprintf(stderr, "== %s store ==\n", st.store)
		rep, _ := scaletestRun(ctx, o, filepath.Join(*out, st.dir), stdout, stderr)
		if rep == nil {
			return 1
		}
		reps = append(reps, rep)
	}
	var cmp strings.Builder
	scaletest.Compare(&cmp, reps[0], reps[1])
	if err := os.WriteFile(filepath.Join(*out, "compare.md"), []byte(cmp.String()), 0o644); err != nil {
		fmt.Fprintln(stderr, "omnigate scaletest:", err)
		return 1
	}
	fmt.Fprintf(stdout, "\n%s\ncomparison: %s\n", cmp.String(), filepath.Join(*out, "compare.md"))
	if !reps[0].Passed() || !reps[1].Passed() {
		return 1
	}
	return 0
}

// scaletestRun runs one fleet test and writes its reports into out.
func scaletestRun(ctx context.Context, o scaletest.Options, out string, stdout, stderr io.Writer) (*scaletest.Report, int) {
	rep, err := scaletest.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "omnigate scaletest:", err)
		return nil, 1
	}
	if err := writeReports(rep, out); err != nil {
		fmt.Fprintln(stderr, "omnigate scaletest:", err)
		return nil, 1
	}
	rep.Markdown(stdout)
	fmt.Fprintf(stdout, "\nreports: %s\n", strings.Join([]string{
		filepath.Join(out, "report.md"), filepath.Join(out, "report.html"), filepath.Join(out, "report.json")}, ", "))
	return rep, 0
}

func writeReports(rep *scaletest.Report, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, write := range map[string]func(io.Writer) error{
		"report.md": rep.Markdown, "report.html": rep.HTML, "report.json": rep.JSON,
	} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		err = write(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// redactArgs hides the password of a -redis-url or -store-url in the command line the
// report shows.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	copy(out, args)
	for i, a := range out {
		switch {
		case (a == "-redis-url" || a == "--redis-url" || a == "-store-url" || a == "--store-url") && i+1 < len(out):
			out[i+1] = redactedURL(out[i+1])
		case strings.HasPrefix(a, "-redis-url="), strings.HasPrefix(a, "--redis-url="),
			strings.HasPrefix(a, "-store-url="), strings.HasPrefix(a, "--store-url="):
			k, v, _ := strings.Cut(a, "=")
			out[i] = k + "=" + redactedURL(v)
		}
	}
	return out
}
