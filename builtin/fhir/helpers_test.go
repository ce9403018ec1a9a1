package fhir

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testEpoch is the instant test servers' clocks start at: no expectation
// depends on the day the tests run.
var testEpoch = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

// testClock is a deterministic clock: it starts at a fixed instant and
// moves one millisecond forward on every reading, so that successive
// writes get increasing times.
type testClock struct {
	mu  sync.Mutex
	cur time.Time
}

func newTestClock(start time.Time) *testClock { return &testClock{cur: start} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur = c.cur.Add(time.Millisecond)
	return c.cur
}

// Advance moves the clock forward by d.
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.cur = c.cur.Add(d)
	c.mu.Unlock()
}

// newTestServer opens a Handler on an in-memory store, with a test clock
// starting at testEpoch.
func newTestServer(t testing.TB, mod ...func(*Config)) *Handler {
	t.Helper()
	return newTestServerAt(t, newTestClock(testEpoch), mod...)
}

// newTestServerAt is newTestServer with the given clock.
func newTestServerAt(t testing.TB, clock *testClock, mod ...func(*Config)) *Handler {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Store.Path = ":memory:"
	for _, m := range mod {
		m(cfg)
	}
	h, err := Open(context.Background(), cfg, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// resp is a recorded response.
type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("status %d, body is not JSON: %v\n%s", r.status, err, r.body)
	}
	return m
}

// do sends a request; headers alternate name, value.
func do(t testing.TB, h http.Handler, method, path string, body any, headers ...string) resp {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	r := httptest.NewRequest(method, "http://fhir.test"+path, rd)
	if rd != nil {
		r.Header.Set("Content-Type", "application/fhir+json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return resp{w.Code, w.Header(), w.Body.Bytes()}
}

func mustStatus(t testing.TB, r resp, want int) {
	t.Helper()
	if r.status != want {
		t.Fatalf("status %d, want %d\n%s", r.status, want, truncateBody(r.body))
	}
}

func truncateBody(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "…"
	}
	return string(b)
}

// sharedExample reads one of the synthetic patient Bundles in
// testdata/synthea.
func sharedExample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "synthea", name))
	if err != nil {
		t.Fatalf("synthetic example: %v", err)
	}
	return b
}

// entries returns the resources of a Bundle.
func entries(t testing.TB, bundle map[string]any) []map[string]any {
	t.Helper()
	var out []map[string]any
	es, _ := bundle["entry"].([]any)
	for _, e := range es {
		r, _ := e.(map[string]any)["resource"].(map[string]any)
		out = append(out, r)
	}
	return out
}
