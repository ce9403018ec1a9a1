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
	eventually(t, "warming", 10*time.Second, func() bool { return up.total.Load() == 2 })
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
	up.delay.Store(int64(300 * time.Millisecond))
	g := newGateway(t, "", up, "warm: {concurrency: 1, budget: 700ms}")
	body := `{"requests": [{"path": "/fhir/R4/Patient/1", "as": {"user": "u", "role": "nurse"}}, {"path": "/fhir/R4/Patient/2", "as": {"user": "u", "role": "nurse"}},
		 {"path": "/fhir/R4/Patient/3", "as": {"user": "u", "role": "nurse"}}, {"path": "/fhir/R4/Patient/4", "as": {"user": "u", "role": "nurse"}},
		 {"path": "/fhir/R4/Patient/5", "as": {"user": "u", "role": "nurse"}}, {"path": "/fhir/R4/Patient/6"}]}`
	rec := httptest.NewRecorder()
	start := time.Now()
	g.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("POST", "/admin/cache/warm", strings.NewReader(body)))
	var res WarmResult
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || rec.Code != 200 {
		t.Fatalf("warm endpoint: %d %s", rec.Code, rec.Body)
	}
	if res.Requests != 6 || res.Skipped < 2 || res.Stored < 1 || res.Stored+res.Skipped+res.Failed+res.Cached+res.NotKept != 6 {
		t.Errorf("result %+v", res)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("warming overran its budget: %s", time.Since(start))
	}
	if x, _, _ := g.get("/fhir/R4/Patient/1", "u"); x != "HIT" {
		t.Errorf("warmed entry: %s", x)
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
	eventually(t, "warming from the hot file", 10*time.Second, func() bool { return up.total.Load() == calls+2 })
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
