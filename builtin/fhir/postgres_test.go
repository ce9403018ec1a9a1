package fhir

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/pgtest"
)

// Two instances configured with fhir.store.driver postgres on one
// database: a write on one is read on the other, a page link made on one
// is served from the same snapshot by the other, and the store reports its
// health; while the server is down, requests get 503 and the health is
// down, and both come back when the server does.
func TestPostgresFromConfigAcrossInstances(t *testing.T) {
	srv := pgtest.Start(t)
	cfg := DefaultConfig()
	cfg.Store.Driver, cfg.Store.URL = "postgres", srv.NewDatabase(t)
	cfg.Store.StatementTimeout = 2e9
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	open := func() (*Handler, store.Store) {
		st, err := openConfiguredStore(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		h, err := newHandler(cfg, st, Options{Now: newTestClock(testEpoch).Now})
		if err != nil {
			t.Fatal(err)
		}
		return h, st
	}
	a, stA := open()
	b, _ := open()
	if _, ok := stA.(store.Snapshots); !ok {
		t.Fatal("the PostgreSQL store does not share paging snapshots")
	}
	for i := range 12 {
		put(t, a, "Patient", "pg"+strings.Repeat("0", 2-len(itoa(i)))+itoa(i), `"gender":"other"`)
	}
	mustStatus(t, do(t, b, "GET", "/fhir/R4/Patient/pg03", nil), http.StatusOK)
	first := do(t, a, "GET", "/fhir/R4/Patient?gender=other&_count=5&_sort=_id", nil)
	mustStatus(t, first, http.StatusOK)
	next := strings.TrimPrefix(nextLink(first.json(t)), "http://fhir.test")
	do(t, b, "DELETE", "/fhir/R4/Patient/pg06", nil)
	second := do(t, b, "GET", next, nil)
	mustStatus(t, second, http.StatusOK)
	var ids []string
	for _, e := range entries(t, second.json(t)) {
		ids = append(ids, e["id"].(string))
	}
	if strings.Join(ids, ",") != "pg05,pg06,pg07,pg08,pg09" {
		t.Errorf("second page on the other instance: %v, want the first instance's snapshot pg05…pg09", ids)
	}

	clock := newTestClock(testEpoch)
	health := storeHealth(stA.(pinger), "postgres", clock.Now)
	if h := health(); h.Status != gateway.StatusUp || !h.Required {
		t.Fatalf("health with the server up: %+v", h)
	}
	srv.Stop()
	clock.Advance(2 * time.Second)
	if h := health(); h.Status != gateway.StatusDown {
		t.Errorf("health with the server down: %+v", h)
	}
	r := do(t, a, "GET", "/fhir/R4/Patient/pg01", nil)
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Errorf("read with the server down: %d %q %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for do(t, a, "GET", "/fhir/R4/Patient/pg01", nil).status != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("reads did not come back with the server")
		}
		time.Sleep(50 * time.Millisecond)
	}
	clock.Advance(2 * time.Second)
	if h := health(); h.Status != gateway.StatusUp {
		t.Errorf("health with the server back: %+v", h)
	}
}
