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
	health := storeHealth(stA.(store.Statser), "postgres", clock.Now)
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

// Two instances on one database race through HTTP: of two updates with the
// same If-Match exactly one wins (the other is 412), every plain update
// gets its own version, and conditional creates on the same criteria
// create one resource.
func TestPostgresInstancesRace(t *testing.T) {
	srv := pgtest.Start(t)
	cfg := DefaultConfig()
	cfg.Store.Driver, cfg.Store.URL = "postgres", srv.NewDatabase(t)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var hs [2]*Handler
	for i := range hs {
		st, err := openConfiguredStore(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if hs[i], err = newHandler(cfg, st, Options{Now: newTestClock(testEpoch).Now}); err != nil {
			t.Fatal(err)
		}
	}
	put(t, hs[0], "Patient", "race", `"gender":"other"`)
	const rounds = 10
	// The ETag comes from the instance that wrote last: another instance's
	// read cache may lag its write by the invalidation delay (docs/FHIR.md).
	last := 0
	for round := range rounds {
		etag := do(t, hs[last], "GET", "/fhir/R4/Patient/race", nil).header.Get("ETag")
		type answer struct{ instance, status int }
		answers := make(chan answer, 2)
		for i := range hs {
			go func() {
				body := `{"resourceType":"Patient","id":"race","gender":"other","active":` + []string{"true", "false"}[i] + `}`
				answers <- answer{i, do(t, hs[i], "PUT", "/fhir/R4/Patient/race", body, "If-Match", etag).status}
			}()
		}
		a, b := <-answers, <-answers
		if !(a.status == 200 && b.status == 412 || a.status == 412 && b.status == 200) {
			t.Fatalf("round %d: If-Match racers answered %d and %d, want one 200 and one 412", round, a.status, b.status)
		}
		if last = a.instance; b.status == 200 {
			last = b.instance
		}
	}
	// Plain updates: none lost, versions strictly increase.
	const each = 15
	done := make(chan struct{})
	for i := range hs {
		go func() {
			defer func() { done <- struct{}{} }()
			for range each {
				if r := do(t, hs[i], "PUT", "/fhir/R4/Patient/race", `{"resourceType":"Patient","id":"race"}`); r.status != 200 {
					t.Errorf("update: %d %s", r.status, r.body)
				}
			}
		}()
	}
	<-done
	<-done
	// Every update made a version (none lost); the reading instance's cache
	// catches up with the other's last write within the invalidation delay.
	deadline := time.Now().Add(10 * time.Second)
	for {
		v := do(t, hs[0], "GET", "/fhir/R4/Patient/race", nil).json(t)["meta"].(map[string]any)["versionId"]
		if v == itoa(1+rounds+2*each) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("version after %d racing updates: %v, want %d", rounds+2*each, v, 1+rounds+2*each)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Conditional creates on the same criteria, from both instances.
	codes := make(chan int, 8)
	for i := range 8 {
		go func() {
			codes <- do(t, hs[i%2], "POST", "/fhir/R4/Patient", `{"resourceType":"Patient","identifier":[{"system":"urn:race","value":"one"}]}`,
				"If-None-Exist", "identifier=urn:race|one").status
		}()
	}
	created := 0
	for range 8 {
		if c := <-codes; c == 201 {
			created++
		} else if c != 200 {
			t.Errorf("conditional create: %d", c)
		}
	}
	n := do(t, hs[1], "GET", "/fhir/R4/Patient?identifier=urn:race|one&_summary=count", nil).json(t)["total"]
	if created != 1 || n != float64(1) {
		t.Errorf("racing conditional creates: %d created, %v stored, want 1 and 1", created, n)
	}
}
