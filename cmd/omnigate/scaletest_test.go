package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/pgproc"
	"github.com/omnigate/omnigate/internal/redistest"
	"github.com/omnigate/omnigate/internal/scaletest"
)

// TestScaletestShort is the short fleet test: three instances (built with
// the race detector) on one Redis that is stopped and restarted under
// load. It asserts correctness only: no 5xx, no fleet-wide window over its
// limit while on Redis, sessions valid on every instance, every write seen
// by every instance. The figures are in the report it logs.
func TestScaletestShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet for about 30 s")
	}
	redistest.Binary(t)
	dir := t.TempDir()
	rep := runFleet(t, scaletest.Options{
		Binary:    binary,
		Dir:       filepath.Join(dir, "run"),
		Instances: 3,
		Backend:   backend(),
		// Compiling the R4 schema takes the race-instrumented FHIR server
		// 15–30 s: too long for this test, and not what it checks.
		NoSchemaValidation: true,
		Duration:           20 * time.Second,
		StopAt:             7 * time.Second,
		RestartAt:          11 * time.Second,
		Window:             2 * time.Second,
		// Low limits, so that the race-instrumented fleet reaches them
		// even on a loaded machine: a patient sending more than two
		// requests a second is limited (seen at a load average of 14:
		// about five a second each).
		Limits:     map[string]int64{"physician": 60, "nurse": 30, "patient": 4},
		Physicians: 3, Nurses: 3, Patients: 3,
		ProbeTimeout: 20 * time.Second,
	})

	// The properties, one by one, so that a failure says which.
	if rep.Failover == nil {
		t.Fatal("Redis was not stopped")
	}
	if rep.Failover.FiveXX != 0 || rep.Overall.Status["500"]+rep.Overall.Status["502"]+rep.Overall.Status["503"] != 0 {
		t.Errorf("5xx responses: %d during the outage, statuses %v", rep.Failover.FiveXX, rep.Overall.Status)
	}
	if rep.Failover.OutageRequests == 0 {
		t.Error("no request was answered during the outage")
	}
	limited := 0
	for _, ra := range rep.RateLimit {
		if ra.Violations != 0 {
			t.Errorf("%s: %d windows over the limit %d on Redis (most %d)", ra.Policy, ra.Violations, ra.Limit, ra.MaxUp)
		}
		limited += ra.Limited
	}
	if limited == 0 {
		t.Error("no request was limited: the limit check tested nothing")
	}
	s := rep.Sessions
	if s.CrossRequests == 0 || s.CrossRejectedUp != 0 {
		t.Errorf("sessions across instances: %d requests, %d refused while Redis was up", s.CrossRequests, s.CrossRejectedUp)
	}
	if s.CrossRejectedOutage != 0 {
		t.Errorf("%d requests with a session made before the outage refused during it (users logged out by the outage)", s.CrossRejectedOutage)
	}
	if s.Checked == 0 || s.Valid != s.Checked {
		t.Errorf("sessions after the run: %d of %d valid: %v", s.Valid, s.Checked, s.Problems)
	}
	st := rep.Staleness
	if st.Writes == 0 || st.Up.Seen != st.Up.Probes || st.Outage.Seen != st.Outage.Probes {
		t.Errorf("invalidation: %d writes, seen %d/%d while up and %d/%d during the outage",
			st.Writes, st.Up.Seen, st.Up.Probes, st.Outage.Seen, st.Outage.Probes)
	}
	if st.OutageBoundMS == 0 || st.OutageStaleMS > st.OutageBoundMS {
		t.Errorf("staleness during the outage: served stale for %.0f ms, bound %.0f ms", st.OutageStaleMS, st.OutageBoundMS)
	}
	for _, in := range rep.Failover.Instances {
		if in.BackAtMS < 0 {
			t.Errorf("instance %d never back on Redis", in.Instance)
		}
	}
	if len(rep.Failures) > 0 {
		t.Errorf("failures: %q", rep.Failures)
	}
	// Everything the run started is gone.
	if left := processesUsing(t, dir); len(left) > 0 {
		t.Errorf("processes left behind: %q", left)
	}
}

// TestScaletestPostgres is the short fleet test on PostgreSQL: two
// instances (built with the race detector) serve one private PostgreSQL
// directly, Redis is stopped at 5 s and restarted at 8 s, then PostgreSQL
// is stopped in immediate mode at 12 s and started at 15 s of a 20 s load. It asserts that the
// acknowledged-write and staleness checks were computed and held, and that
// the store restart answered only 503 with Retry-After.
func TestScaletestPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet and a PostgreSQL for about 40 s")
	}
	redistest.Binary(t)
	if _, err := pgproc.Bin(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rep := runFleet(t, scaletest.Options{
		Binary:             binary,
		Dir:                filepath.Join(dir, "run"),
		Instances:          2,
		Backend:            scaletest.BackendFHIR,
		Store:              scaletest.StorePostgres,
		NoSchemaValidation: true,
		// 20 s, as TestScaletestShort: the 40 witness logins before the
		// Redis stop (from 3 s) take race-built instances on a loaded
		// machine up to 400 ms each.
		Duration:       20 * time.Second,
		StopAt:         5 * time.Second,
		RestartAt:      8 * time.Second,
		StoreStopAt:    12 * time.Second,
		StoreRestartAt: 15 * time.Second,
		Window:         2 * time.Second,
		Limits:         map[string]int64{"physician": 60, "nurse": 30, "patient": 4},
		Physicians:     2, Nurses: 2, Patients: 2,
		ProbeTimeout: 20 * time.Second,
	})

	if rep.Setup.Store != scaletest.StorePostgres || !strings.Contains(rep.Setup.StoreDesc, "PostgreSQL") {
		t.Errorf("setup: store %q, %q", rep.Setup.Store, rep.Setup.StoreDesc)
	}
	for _, p := range rep.Processes {
		if p.Name == "fhir-origin" {
			t.Error("an origin process ran")
		}
	}
	if rep.CPUPerRequestUS["postgres"] <= 0 {
		t.Errorf("no PostgreSQL CPU measured: %v", rep.CPUPerRequestUS)
	}
	w := rep.Writes
	if w.Acknowledged == 0 || w.Checked != w.Acknowledged || w.Missing != 0 || w.NoVersion != 0 {
		t.Errorf("acknowledged writes: %+v", w)
	}
	so := rep.StoreOutage
	if so == nil {
		t.Fatal("the store was not restarted")
	}
	if so.Unavailable == 0 || so.Failed != 0 || so.Error != "" {
		t.Errorf("store restart: %d answered 503 with Retry-After, %d failed otherwise (%v), error %q", so.Unavailable, so.Failed, so.Status, so.Error)
	}
	st := rep.Staleness
	if st.UpBoundMS == 0 || st.Up.Probes == 0 || st.Up.Seen != st.Up.Probes || st.Up.MaxMS > st.UpBoundMS {
		t.Errorf("staleness while up: %+v, bound %.0f ms", st.Up, st.UpBoundMS)
	}
	if len(rep.Failures) > 0 {
		t.Errorf("failures: %q", rep.Failures)
	}
	if left := processesUsing(t, dir); len(left) > 0 {
		t.Errorf("processes left behind: %q", left)
	}
}

// stampWriter prefixes each write with the time since start.
type stampWriter struct {
	start time.Time
	b     bytes.Buffer
}

func (w *stampWriter) Write(p []byte) (int, error) {
	fmt.Fprintf(&w.b, "%6.1fs %s", time.Since(w.start).Seconds(), p)
	return len(p), nil
}

// backend is the embedded FHIR server when this build has it (its import
// command), else the tool's stand-in.
func backend() string {
	for _, c := range commands() {
		if c.name == "fhir" {
			return scaletest.BackendFHIR
		}
	}
	return scaletest.BackendUpstream
}

// processesUsing lists the command lines that mention dir.
func processesUsing(t *testing.T, dir string) []string {
	t.Helper()
	var left []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, dir) {
			left = append(left, e.Name()+": "+cmd)
		}
	}
	return left
}

// runFleet runs the fleet test o, with its progress stamped into the test
// log, and logs the report.
func runFleet(t *testing.T, o scaletest.Options) *scaletest.Report {
	t.Helper()
	start := time.Now()
	log := &stampWriter{start: start}
	o.Log = log
	rep, err := scaletest.Run(context.Background(), o)
	if err != nil {
		t.Fatalf("scaletest: %v\n%s", err, log.b.String())
	}
	t.Logf("fleet test ran in %s:\n%s", time.Since(start).Round(time.Millisecond), log.b.String())
	var md bytes.Buffer
	rep.Markdown(&md)
	t.Log("\n" + md.String())
	return rep
}

func TestRedactArgs(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"-redis", "url", "-redis-url", "redis://u:secret@127.0.0.1:7000/0"}, []string{"-redis", "url", "-redis-url", "redis://u:xxxxx@127.0.0.1:7000/0"}},
		{[]string{"-redis-url=redis://:secret@127.0.0.1:7000"}, []string{"-redis-url=redis://:xxxxx@127.0.0.1:7000"}},
		{[]string{"-duration", "10s"}, []string{"-duration", "10s"}},
		{[]string{"-store", "postgres", "-store-url", "postgres://og:secret@127.0.0.1:5433/fhir"}, []string{"-store", "postgres", "-store-url", "postgres://og:xxxxx@127.0.0.1:5433/fhir"}},
		{[]string{"-store-url=postgres://og:secret@127.0.0.1:5433/fhir"}, []string{"-store-url=postgres://og:xxxxx@127.0.0.1:5433/fhir"}},
	} {
		got := strings.Join(redactArgs(tc.in), " ")
		if want := strings.Join(tc.want, " "); got != want || strings.Contains(got, "secret") {
			t.Errorf("redactArgs(%q) = %q, want %q", tc.in, got, want)
		}
	}
}
