package audit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, segPrefix+"*"+segSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Segments rotate at segment_bytes and are deleted once every sink has
// read past them; a failing sink keeps them.
func TestSegmentsRotateAndAreDeleted(t *testing.T) {
	flaky := filepath.Join(t.TempDir(), "flaky.jsonl")
	flakyCounter(flaky).Store(-1)
	g := newGateway(t, gwOptions{audit: fmt.Sprintf("flush_interval: 1h\nsegment_bytes: 1KiB\nretry_min: 10m\nretry_max: 10m\nsinks: [{type: file, path: %q}, {type: flaky, path: %q}]",
		filepath.Join(t.TempDir(), "file.jsonl"), flaky)})
	for i := range 20 {
		g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "s"+strconv.Itoa(i))
		if i%3 == 2 {
			g.p.pipe.flush()
		}
	}
	g.p.pipe.flush()
	eventually(t, "the file sink caught up", func() bool { return g.sink("file").BehindBytes == 0 })
	if n := len(segmentFiles(t, g.dir)); n < 3 {
		t.Fatalf("%d segments: no rotation, or deleted while the flaky sink has not read them", n)
	}
	eventually(t, "the flaky sink waits to retry", func() bool { _, ok := g.backoffTimer(); return ok })
	flakyCounter(flaky).Store(0)
	g.clock.Advance(10 * time.Minute)
	eventually(t, "the flaky sink caught up", func() bool { return g.sink("flaky").BehindBytes == 0 })
	eventually(t, "shipped segments deleted", func() bool { return len(segmentFiles(t, g.dir)) <= 1 })
	if st := g.stats(); st.Segments > 1 || st.SpoolBytes > 1<<10 {
		t.Errorf("after shipping: %d segments, %d bytes", st.Segments, st.SpoolBytes)
	}
	uniqueIDs(t, readRecords(t, flaky), "s", 20)
	uniqueIDs(t, readRecords(t, g.p.cfg.Sinks[0].Path), "s", 20)
}

// After a restart, what a sink had not taken is shipped, what it had is
// not shipped again, and a line torn by a crash in the middle of a write
// is skipped.
func TestRestartShipsWhatWasNotShipped(t *testing.T) {
	spool := filepath.Join(t.TempDir(), "spool")
	flaky := filepath.Join(t.TempDir(), "flaky.jsonl")
	file := filepath.Join(t.TempDir(), "file.jsonl")
	flakyCounter(flaky).Store(-1)
	audit := fmt.Sprintf("spool_dir: %q\nflush_interval: 1h\nretry_min: 1h\nretry_max: 1h\nsinks: [{type: file, path: %q}, {type: flaky, path: %q}]", spool, file, flaky)
	g := newGateway(t, gwOptions{audit: audit})
	for i := range 5 {
		g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "a"+strconv.Itoa(i))
	}
	g.p.pipe.flush()
	eventually(t, "the file sink caught up", func() bool { return g.sink("file").BehindBytes == 0 })
	if err := g.srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A crash during a write left half a line at the end of a segment.
	segs := segmentFiles(t, spool)
	if len(segs) == 0 {
		t.Fatal("no segment left: the flaky sink's records were lost")
	}
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"id":"torn","time":"2026-09-01T10:00:00Z","request_id":"tor`)
	f.Close()

	flakyCounter(flaky).Store(0)
	g2 := newGateway(t, gwOptions{audit: audit})
	g2.must(404, nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "a5")
	g2.settle()
	uniqueIDs(t, readRecords(t, file), "a", 6)  // nothing shipped twice
	uniqueIDs(t, readRecords(t, flaky), "a", 6) // nothing lost
	if st := g2.stats(); st.Corrupt != 1 {
		t.Errorf("torn lines skipped: %d, want 1", st.Corrupt)
	}
	for _, r := range readRecords(t, flaky) {
		if strings.HasPrefix(r.RequestID, "tor") {
			t.Error("the torn line was shipped")
		}
	}
}

// One process per spool: a second one fails to start.
func TestSpoolLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := openSpool(dir, 1<<20, newTestClock().Now, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if _, err := openSpool(dir, 1<<20, newTestClock().Now, discard()); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second open: %v", err)
	}
}
