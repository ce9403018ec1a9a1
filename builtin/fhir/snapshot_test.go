package fhir

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/sqlite"
)

// sharedStore is one store that two handlers (two instances) serve, with
// its snapshots kept beside it as a database server keeps them.
type sharedStore struct {
	store.Store
	mu    sync.Mutex
	snaps map[string][]byte
	exp   map[string]time.Time
	puts  int
}

func (s *sharedStore) PutSnapshot(_ context.Context, tok string, data []byte, expires time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snaps[tok], s.exp[tok] = slices.Clone(data), expires
	s.puts++
	return nil
}

func (s *sharedStore) GetSnapshot(_ context.Context, tok string, now time.Time) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.snaps[tok]
	if !ok || now.After(s.exp[tok]) {
		return nil, store.ErrNotFound
	}
	return d, nil
}

// On a store that instances share, the page links of a search made on one
// instance show the same snapshot on another, even after writes, until
// the snapshot expires; a snapshot is never served for another query.
func TestPagingAcrossInstances(t *testing.T) {
	st, err := sqlite.Open(context.Background(), ":memory:", sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	shared := &sharedStore{Store: st, snaps: map[string][]byte{}, exp: map[string]time.Time{}}
	clock := newTestClock(testEpoch)
	cfg := DefaultConfig()
	cfg.Store.Path = ":memory:"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := newHandler(cfg, shared, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	b, err := newHandler(cfg, shared, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 25 {
		put(t, a, "Patient", "s"+strings.Repeat("0", 2-len(itoa(i)))+itoa(i), `"gender":"other"`)
	}
	first := do(t, a, "GET", "/fhir/R4/Patient?gender=other&_count=10&_sort=_id", nil)
	mustStatus(t, first, 200)
	next := strings.TrimPrefix(nextLink(first.json(t)), "http://fhir.test")
	if !strings.Contains(next, "_page=") || shared.puts != 1 {
		t.Fatalf("next link %q, %d snapshots stored, want a snapshot in the shared store", next, shared.puts)
	}
	// Another instance deletes s11, then serves the next page: the page
	// shows the search as it ran (the versions that matched then), and
	// does not shift.
	do(t, b, "DELETE", "/fhir/R4/Patient/s11", nil)
	second := do(t, b, "GET", next, nil)
	mustStatus(t, second, 200)
	var ids []string
	for _, e := range entries(t, second.json(t)) {
		ids = append(ids, e["id"].(string))
	}
	if want := []string{"s10", "s11", "s12", "s13", "s14", "s15", "s16", "s17", "s18", "s19"}; !slices.Equal(ids, want) {
		t.Errorf("second page on the other instance: %v, want %v", ids, want)
	}
	if got := second.json(t)["total"]; got != float64(25) {
		t.Errorf("total on the other instance: %v, want the snapshot's 25", got)
	}
	// The token under another query is not that query's snapshot.
	other := strings.Replace(next, "gender=other", "gender=male", 1)
	if r := do(t, b, "GET", other, nil); r.status == 200 && len(entries(t, r.json(t))) != 0 {
		t.Errorf("a snapshot served for another query: %s", r.body)
	}
	// Expired on the shared store: read at the offset again.
	clock.Advance(cfg.SnapshotTTL + time.Second)
	c, err := newHandler(cfg, shared, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	third := do(t, c, "GET", next, nil)
	mustStatus(t, third, 200)
	if got := third.json(t)["total"]; got != float64(24) {
		t.Errorf("total after the snapshot expired: %v, want the live 24", got)
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	snap := &snapshot{key: "Patient||x|gender=other", total: 25, complete: true,
		matches: []store.Match{{Key: 1, Version: 2}, {Key: 1 << 40, Version: 1}}}
	f.Add(snap.encode())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, ok := decodeSnapshot("t", b)
		if !ok {
			return
		}
		again, ok := decodeSnapshot("t", s.encode())
		if !ok || again.key != s.key || again.total != s.total || again.complete != s.complete || !slices.Equal(again.matches, s.matches) {
			t.Fatalf("re-encoding changes the snapshot: %+v vs %+v", s, again)
		}
	})
}
