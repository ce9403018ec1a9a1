package fhir

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/sqlite"
)

// downStore is a real store that answers ErrUnavailable, as a database
// server that went away does, while down is set.
type downStore struct {
	store.Store
	down atomic.Bool
}

func (d *downStore) err() error {
	if d.down.Load() {
		return fmt.Errorf("read: %w: connection refused", store.ErrUnavailable)
	}
	return nil
}

func (d *downStore) Read(ctx context.Context, typ, id string) (*store.Version, error) {
	if err := d.err(); err != nil {
		return nil, err
	}
	return d.Store.Read(ctx, typ, id)
}

func (d *downStore) Search(ctx context.Context, q *search.Query, offset, limit int) ([]store.Match, error) {
	if err := d.err(); err != nil {
		return nil, err
	}
	return d.Store.Search(ctx, q, offset, limit)
}

func (d *downStore) Update(ctx context.Context, fn func(tx store.Tx) error) error {
	if err := d.err(); err != nil {
		return err
	}
	return d.Store.Update(ctx, fn)
}

// A store that cannot be reached is a 503 OperationOutcome with
// Retry-After on every interaction (never a 500), inside a batch too, and
// the server answers again as soon as the store is back.
func TestStoreUnavailableIs503(t *testing.T) {
	st, err := sqlite.Open(context.Background(), ":memory:", sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ds := &downStore{Store: st}
	cfg := DefaultConfig()
	cfg.Store.Path = ":memory:"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h, err := newHandler(cfg, ds, Options{Now: newTestClock(testEpoch).Now})
	if err != nil {
		t.Fatal(err)
	}
	mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient/p1", map[string]any{"resourceType": "Patient", "id": "p1"}), http.StatusCreated)

	ds.down.Store(true)
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/fhir/R4/Patient/p1", nil},
		{"GET", "/fhir/R4/Patient?name=x", nil},
		{"PUT", "/fhir/R4/Patient/p1", map[string]any{"resourceType": "Patient", "id": "p1", "active": true}},
		{"POST", "/fhir/R4/Patient", map[string]any{"resourceType": "Patient"}},
		{"DELETE", "/fhir/R4/Patient/p1", nil},
		{"POST", "/fhir/R4", map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": []any{
			map[string]any{"resource": map[string]any{"resourceType": "Patient"}, "request": map[string]any{"method": "POST", "url": "Patient"}}}}},
	} {
		r := do(t, h, c.method, c.path, c.body)
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s: %d Retry-After %q, want 503 with Retry-After\n%s", c.method, c.path, r.status, r.header.Get("Retry-After"), r.body)
			continue
		}
		if oo := r.json(t); oo["resourceType"] != "OperationOutcome" {
			t.Errorf("%s %s: body is not an OperationOutcome: %s", c.method, c.path, r.body)
		}
	}
	r := do(t, h, "POST", "/fhir/R4", map[string]any{"resourceType": "Bundle", "type": "batch", "entry": []any{
		map[string]any{"request": map[string]any{"method": "GET", "url": "Patient/p1"}}}})
	mustStatus(t, r, http.StatusOK)
	var got string
	if es, _ := r.json(t)["entry"].([]any); len(es) == 1 {
		resp, _ := es[0].(map[string]any)["response"].(map[string]any)
		got, _ = resp["status"].(string)
	}
	if got != "503 Service Unavailable" {
		t.Errorf("batch entry while the store is down: status %q, want 503\n%s", got, r.body)
	}

	ds.down.Store(false)
	mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/p1", nil), http.StatusOK)
}
