package audit

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

// backoffTimer returns the wait a failing shipper set up (the only timer
// shorter than the flush interval of these tests, 1h).
func (g *gw) backoffTimer() (time.Duration, bool) {
	for _, d := range g.clock.pending() {
		if d < time.Hour {
			return d, true
		}
	}
	return 0, false
}

func (g *gw) sink(name string) sinkState {
	for _, s := range g.p.pipe.sinkStates() {
		if s.Name == name {
			return s
		}
	}
	g.t.Fatalf("no sink %s", name)
	return sinkState{}
}

func (g *gw) ping() gateway.PingResponse {
	var p gateway.PingResponse
	json.Unmarshal(g.admin("GET", "/ping").Body.Bytes(), &p)
	return p
}

// uniqueIDs checks that recs hold each of the n requests "<prefix><i>"
// exactly once.
func uniqueIDs(t *testing.T, recs []Record, prefix string, n int) {
	t.Helper()
	seen := map[string]int{}
	for _, r := range recs {
		seen[r.RequestID]++
	}
	for i := range n {
		if c := seen[prefix+strconv.Itoa(i)]; c != 1 {
			t.Errorf("request %s%d: %d records, want 1", prefix, i, c)
		}
	}
}

// A sink that fails a few times is retried with exponential backoff and
// jitter while the other sink goes on; once it works it has every record,
// and /ping says degraded meanwhile.
func TestSinkRetryWithBackoff(t *testing.T) {
	flakyPath := filepath.Join(t.TempDir(), "flaky.jsonl")
	flakyCounter(flakyPath).Store(4)
	g := newGateway(t, gwOptions{audit: fmt.Sprintf(`flush_interval: 1h
retry_min: 100ms
retry_max: 400ms
sinks: [{type: flaky, path: %q}, {type: file, path: %q}]`, flakyPath, filepath.Join(t.TempDir(), "ok.jsonl"))})
	okPath := g.p.cfg.Sinks[1].Path
	const n = 10
	for i := range n {
		g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "r"+strconv.Itoa(i))
	}
	if err := g.p.pipe.flush(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the working sink has every record", func() bool { return len(readRecords(t, okPath)) == n })

	for k, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond} {
		var d time.Duration
		eventually(t, fmt.Sprintf("failure %d and its backoff", k+1), func() bool {
			var ok bool
			d, ok = g.backoffTimer()
			return ok && g.sink("flaky").ConsecutiveFailures == k+1
		})
		if d < want/2 || d > want {
			t.Errorf("backoff after failure %d: %v, want between %v and %v", k+1, d, want/2, want)
		}
		if k == 0 {
			p := g.ping()
			if p.Status != "degraded" || p.Components["audit-sink:flaky"].Status != gateway.StatusDown ||
				p.Components["audit-sink:file"].Status != gateway.StatusUp || p.Plugins["audit"].Status != gateway.StatusDegraded {
				t.Errorf("/ping while the sink fails: %+v", p)
			}
		}
		g.clock.Advance(d)
		if st := g.sink("flaky"); k > 0 && k < 3 && st.LagSeconds <= 0 { // (the attempt after the fourth succeeds)
			t.Errorf("no lag while failing: %+v", st)
		}
	}
	eventually(t, "the flaky sink catches up", func() bool { return g.sink("flaky").BehindBytes == 0 })
	uniqueIDs(t, readRecords(t, flakyPath), "r", n)
	uniqueIDs(t, readRecords(t, okPath), "r", n)
	st := g.sink("flaky")
	if st.Failures != 4 || st.Failing || st.Shipped != n || st.LagSeconds != 0 {
		t.Errorf("flaky sink after recovery: %+v", st)
	}
	if p := g.ping(); p.Status != "ok" {
		t.Errorf("/ping after recovery: %+v", p)
	}
	if m := g.admin("GET", "/metrics").Body.String(); !strings.Contains(m, `omnigate_audit_sink_failures_total{plugin="audit",sink="flaky"} 4`) {
		t.Error("the failures are not counted in the metrics")
	}
}

// A real failure: the file sink's folder is missing until the test makes
// it; nothing is lost.
func TestFileSinkFailsThenWorks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not-yet")
	path := filepath.Join(dir, "audit.jsonl")
	g := newGateway(t, gwOptions{audit: fmt.Sprintf("flush_interval: 1h\nretry_min: 1s\nretry_max: 1s\nsinks: [{type: file, path: %q}]", path)})
	for i := range 3 {
		g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "f"+strconv.Itoa(i))
	}
	g.p.pipe.flush()
	eventually(t, "the sink failed", func() bool { _, ok := g.backoffTimer(); return ok && g.sink("file").Failing })
	if !strings.Contains(g.sink("file").LastError, "no such file or directory") {
		t.Errorf("last error: %q", g.sink("file").LastError)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	g.clock.Advance(time.Second)
	eventually(t, "caught up", func() bool { return g.sink("file").BehindBytes == 0 })
	uniqueIDs(t, readRecords(t, path), "f", 3)
}

// on_sink_failure: block. With the spool full, requests that would reach
// PHI are refused with 503, an OperationOutcome and Retry-After, rather
// than served unaudited; when the sink is back and has shipped, they are
// served again. Every request served has its record.
func TestFullSpoolBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sink.jsonl")
	flakyCounter(path).Store(-1)
	g := newGateway(t, gwOptions{audit: fmt.Sprintf(`flush_interval: 1h
max_spool_bytes: 4KiB
segment_bytes: 1KiB
retry_min: 5s
retry_max: 5s
sinks: [{type: flaky, path: %q}]`, path)})
	served := 0
	var refused *httpResult
	for i := range 100 {
		rec := g.do(nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "b"+strconv.Itoa(served))
		if rec.Code == 503 {
			refused = &httpResult{rec.Code, rec.Header().Get("Retry-After"), rec.Body.String()}
			break
		}
		if rec.Code != 404 {
			t.Fatalf("request %d: %d", i, rec.Code)
		}
		served++
		if i%3 == 0 {
			g.p.pipe.flush()
		}
	}
	if refused == nil {
		t.Fatal("the spool never filled")
	}
	if ra, err := strconv.Atoi(refused.retryAfter); err != nil || ra < 1 || ra > 300 ||
		!strings.Contains(refused.body, `"resourceType":"OperationOutcome"`) || !strings.Contains(refused.body, "audit") {
		t.Errorf("refusal: %+v", refused)
	}
	g.must(200, nurse, "GET", "/fhir/R4/metadata", "") // no PHI: served
	st := g.stats()
	if !st.Full || st.Blocked != 1 || st.Dropped != 0 {
		t.Errorf("stats when full: %+v", st)
	}
	if p := g.ping(); p.Plugins["audit"].Status != gateway.StatusDown {
		t.Errorf("/ping when full: %+v", p.Plugins["audit"])
	}

	// The sink comes back while its shipper waits to retry.
	eventually(t, "the shipper waits to retry", func() bool { _, ok := g.backoffTimer(); return ok })
	flakyCounter(path).Store(0)
	g.p.pipe.flush()
	g.clock.Advance(5 * time.Second)
	eventually(t, "shipped and deleted", func() bool { return g.sink("flaky").BehindBytes == 0 && g.p.pipe.spool.bytes() < 4<<10 })
	g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "b"+strconv.Itoa(served))
	served++
	g.settle()
	uniqueIDs(t, readRecords(t, path), "b", served)
	if m := g.admin("GET", "/metrics").Body.String(); !strings.Contains(m, `omnigate_audit_requests_blocked_total{plugin="audit"} 1`) {
		t.Error("the refusal is not counted in the metrics")
	}
}

type httpResult struct {
	status           int
	retryAfter, body string
}

// on_sink_failure: drop. With the spool full, requests are served and the
// records that do not fit are counted as dropped; the others are kept.
func TestFullSpoolDrops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sink.jsonl")
	flakyCounter(path).Store(-1)
	g := newGateway(t, gwOptions{audit: fmt.Sprintf(`flush_interval: 1h
max_spool_bytes: 4KiB
segment_bytes: 1KiB
on_sink_failure: drop
retry_min: 5s
retry_max: 5s
sinks: [{type: flaky, path: %q}]`, path)})
	const n = 30
	for i := range n {
		g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "d"+strconv.Itoa(i))
	}
	st := g.stats()
	if st.Dropped == 0 || st.Appended+st.Dropped != n || st.Blocked != 0 {
		t.Fatalf("stats: %+v", st)
	}
	if p := g.ping(); p.Plugins["audit"].Status != gateway.StatusDegraded || !strings.Contains(p.Plugins["audit"].Detail, "dropped") {
		t.Errorf("/ping: %+v", p.Plugins["audit"])
	}
	flakyCounter(path).Store(0)
	g.p.pipe.flush()
	g.clock.Advance(5 * time.Second)
	eventually(t, "shipped", func() bool { return g.sink("flaky").BehindBytes == 0 })
	recs := readRecords(t, path)
	if int64(len(recs)) != st.Appended {
		t.Errorf("%d records shipped, want the %d kept", len(recs), st.Appended)
	}
	uniqueIDs(t, recs, "d", int(st.Appended)) // the first ones, in order
	if m := g.admin("GET", "/metrics").Body.String(); !strings.Contains(m, fmt.Sprintf(`omnigate_audit_records_dropped_total{plugin="audit"} %d`, st.Dropped)) {
		t.Error("the dropped records are not counted in the metrics")
	}
}
