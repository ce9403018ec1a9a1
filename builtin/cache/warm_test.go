package cache

import (
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWarmOnStartRespectsPartitions(t *testing.T) {
	up := newFakeFHIR(t)
	g := newGateway(t, "", up, `
warm:
  on_start: true
  requests:
    - path: /fhir/R4/Patient/1
      as: {user: alice, role: nurse}
    - path: /fhir/R4/Observation?patient=1&_count=10
      as: {user: alice, role: nurse}
`)
	eventually(t, "warming", 30*time.Second, func() bool { return up.total.Load() == 2 })
	for _, path := range []string{"/fhir/R4/Patient/1", "/fhir/R4/Observation?_count=10&patient=1"} {
		if x, body, _ := g.get(path, "alice"); x != "HIT" || body["user"] != "alice" {
			t.Errorf("alice %s after warming: %s %v", path, x, body)
		}
	}
	// Warming as alice filled alice's partition only.
	if x, body, _ := g.get("/fhir/R4/Patient/1", "bob"); x != "MISS" || body["user"] != "bob" {
		t.Errorf("bob after alice's warming: %s %v", x, body)
	}
	// Nothing the warmer fetched was sent to a client: alice's hits carry
	// the warmer's own upstream call (call 1).
	if _, body, _ := g.get("/fhir/R4/Patient/1", "alice"); body["call"] != float64(1) {
		t.Errorf("alice got call %v", body["call"])
	}
}

func TestWarmBudgetAndAdminEndpoint(t *testing.T) {
	up := newFakeFHIR(t)
	up.hold(t, "/fhir/R4/Patient/2") // answers only when its request is cancelled
	g := newGateway(t, "", up, "warm: {concurrency: 1, budget: 30s}")
	body := `{"requests": [{"path": "/fhir/R4/Patient/1", "as": {"user": "u", "role": "nurse"}}, {"path": "/fhir/R4/Patient/2", "as": {"user": "u", "role": "nurse"}},
		 {"path": "/fhir/R4/Patient/3", "as": {"user": "u", "role": "nurse"}}, {"path": "/fhir/R4/Patient/4", "as": {"user": "u", "role": "nurse"}},
		 {"path": "/fhir/R4/Patient/5", "as": {"user": "u", "role": "nurse"}}, {"path": "/fhir/R4/Patient/6"}]}`
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		rec := httptest.NewRecorder()
		g.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("POST", "/admin/cache/warm", strings.NewReader(body)))
		done <- rec
	}()
	// One at a time: the second request reaches the upstream once the
	// first is done; then the budget runs out on the cache's clock.
	eventually(t, "the second warming request", 30*time.Second, func() bool { return up.count("/fhir/R4/Patient/2") == 1 })
	t0 := g.clock.Now()
	if st := g.stats(); !st.Warming.Running || !st.Warming.Started.Equal(t0) || st.Warming.Last != nil {
		t.Errorf("stats while warming: %+v", st.Warming)
	}
	g.clock.Advance(30*time.Second - time.Millisecond)
	select {
	case rec := <-done:
		t.Fatalf("warming ended before its budget: %s", rec.Body)
	default:
	}
	g.clock.Advance(time.Millisecond)
	rec := await(t, "warming after its budget", 30*time.Second, done)
	var res WarmResult
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || rec.Code != 200 {
		t.Fatalf("warm endpoint: %d %s", rec.Code, rec.Body)
	}
	if want := (WarmResult{Requests: 6, Stored: 1, Failed: 1, Skipped: 4, Duration: "30s"}); res != want {
		t.Errorf("result %+v, want %+v", res, want)
	}
	if x, _, _ := g.get("/fhir/R4/Patient/1", "u"); x != "HIT" {
		t.Errorf("warmed entry: %s", x)
	}
	if st := g.stats(); st.Warming.Running || st.Warming.Last == nil || *st.Warming.Last != res ||
		!st.Warming.LastFinished.Equal(t0.Add(30*time.Second)) || st.MemoryEntries != 1 || st.MemoryBytes == 0 {
		t.Errorf("stats after warming: %+v", st)
	}
	// A second run finds it cached.
	rec = httptest.NewRecorder()
	g.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("POST", "/admin/cache/warm",
		strings.NewReader(`{"requests": [{"path": "/fhir/R4/Patient/1", "as": {"user": "u", "role": "nurse"}}]}`)))
	if !strings.Contains(rec.Body.String(), `"cached": 1`) {
		t.Errorf("second warming: %s", rec.Body)
	}
	rec = httptest.NewRecorder()
	g.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("POST", "/admin/cache/warm", strings.NewReader(`{"requests": [{"path": "no-slash"}]}`)))
	if rec.Code != 400 {
		t.Errorf("bad warm request: %d", rec.Code)
	}
}

func TestHotKeysSurviveRestart(t *testing.T) {
	up := newFakeFHIR(t)
	hot := filepath.Join(t.TempDir(), "hot.json")
	a := newGateway(t, "", up, "warm: {hot_file: "+hot+", hot_keys: 2}")
	for i := 0; i < 5; i++ {
		a.get("/fhir/R4/Patient/hot", "alice")
	}
	for i := 0; i < 3; i++ {
		a.get("/fhir/R4/Observation?code=x", "bob")
	}
	a.get("/fhir/R4/Patient/cold", "carol")
	a.srv.Shutdown(t.Context())
	st, err := os.Stat(hot)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("hot file: %v %v", err, st)
	}
	data, _ := os.ReadFile(hot)
	if strings.Contains(string(data), "cold") || !strings.Contains(string(data), "Patient/hot") {
		t.Errorf("hot file keeps the wrong requests:\n%s", data)
	}
	calls := up.total.Load()
	b := newGateway(t, "", up, "warm: {hot_file: "+hot+", on_start: true}")
	eventually(t, "warming from the hot file", 30*time.Second, func() bool { return up.total.Load() == calls+2 })
	if x, _, _ := b.get("/fhir/R4/Patient/hot", "alice"); x != "HIT" {
		t.Errorf("alice's hot entry after restart: %s", x)
	}
	if x, _, _ := b.get("/fhir/R4/Observation?code=x", "bob"); x != "HIT" {
		t.Errorf("bob's hot entry after restart: %s", x)
	}
	if x, _, _ := b.get("/fhir/R4/Patient/hot", "bob"); x != "MISS" {
		t.Errorf("alice's warmed entry served to bob: %s", x)
	}
}

// cacheStats is the part of GET /admin/cache/stats the tests read.
type cacheStats struct {
	Warming       WarmState
	MemoryBytes   int64 `json:"memory_bytes"`
	MemoryEntries int   `json:"memory_entries"`
}

func (g *gw) stats() cacheStats {
	g.t.Helper()
	rec := httptest.NewRecorder()
	g.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/admin/cache/stats", nil))
	var st cacheStats
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil || rec.Code != 200 {
		g.t.Fatalf("stats: %d %s", rec.Code, rec.Body)
	}
	return st
}
