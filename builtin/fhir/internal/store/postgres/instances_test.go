package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/internal/pgtest"
)

// twoInstances opens two stores (two pools: two gateway instances) on one
// new database.
func twoInstances(t *testing.T, opt Options) (*Store, *Store) {
	t.Helper()
	opt.URL = pgtest.NewDatabase(t)
	return open(t, opt), open(t, opt)
}

// bump writes the next version of typ/id, read inside the transaction.
func bump(ctx context.Context, s store.Store, typ, id, body string) (int64, error) {
	var version int64
	err := s.Update(ctx, func(tx store.Tx) error {
		version = 1
		cur, err := tx.Read(ctx, typ, id)
		switch {
		case err == nil:
			version = cur.Version + 1
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		return tx.Put(ctx, &store.Version{Type: typ, ID: id, Version: version, Updated: time.Now(), Method: "PUT",
			Body: []byte(body)}, &search.Entries{})
	})
	return version, err
}

// Updates of one resource racing on two instances: every one succeeds,
// versions strictly increase, none is lost.
func TestRacingUpdates(t *testing.T) {
	ctx := context.Background()
	a, b := twoInstances(t, Options{})
	const perWorker, workers = 15, 3
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[int64]string{}
	for _, s := range []*Store{a, b} {
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				last := int64(0)
				for i := range perWorker {
					body := fmt.Sprintf(`{"resourceType":"Patient","id":"x","w":"%p-%d-%d"}`, s, w, i)
					v, err := bump(ctx, s, "Patient", "x", body)
					if err != nil {
						t.Error(err)
						return
					}
					if v <= last {
						t.Errorf("version %d after %d", v, last)
					}
					last = v
					mu.Lock()
					if prev, ok := got[v]; ok {
						t.Errorf("version %d written twice: %s and %s", v, prev, body)
					}
					got[v] = body
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	const total = 2 * workers * perWorker
	vs, n, err := b.History(ctx, store.HistoryQuery{Type: "Patient", ID: "x", Count: 1000})
	if err != nil || n != total {
		t.Fatalf("history: %d versions, %v; want %d", n, err, total)
	}
	for i, v := range vs {
		want := int64(total - i)
		if v.Version != want || string(v.Body) != got[want] {
			t.Errorf("history %d: version %d %s, want %d %s", i, v.Version, v.Body, want, got[want])
		}
		if i > 0 && v.Seq >= vs[i-1].Seq {
			t.Errorf("seq %d of version %d not below %d", v.Seq, v.Version, vs[i-1].Seq)
		}
	}
}

// Conditional creates racing on two instances: exactly one creates.
func TestRacingConditionalCreates(t *testing.T) {
	ctx := context.Background()
	a, b := twoInstances(t, Options{})
	for round := range 5 {
		ident := fmt.Sprintf("urn:test|r%d", round)
		q, err := search.Parse("Patient", url.Values{"identifier": {ident}}, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		created := 0
		for i := range 6 {
			s := []*Store{a, b}[i%2]
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := s.Update(ctx, func(tx store.Tx) error {
					n, err := tx.Count(ctx, q)
					if err != nil || n > 0 {
						return err
					}
					mu.Lock()
					created++
					mu.Unlock()
					return tx.Put(ctx, &store.Version{Type: "Patient", ID: fmt.Sprintf("r%d-%d", round, i), Version: 1,
						Updated: time.Now(), Method: "POST", Body: []byte(`{}`)},
						&search.Entries{Tokens: []search.TokenEntry{{Param: "Patient.identifier", System: "urn:test", Code: fmt.Sprintf("r%d", round)}}})
				})
				if err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		n, err := a.Count(ctx, q)
		if err != nil || n != 1 || created != 1 {
			t.Fatalf("round %d: %d resources, %d creates (%v); want 1", round, n, created, err)
		}
	}
}

// A transaction that fails midway on the database (a version written
// twice) leaves nothing, as seen from both instances.
func TestFailedTransactionLeavesNothing(t *testing.T) {
	ctx := context.Background()
	a, b := twoInstances(t, Options{CacheBytes: 1 << 20})
	put := func(tx store.Tx, id string, version int64) error {
		return tx.Put(ctx, &store.Version{Type: "Patient", ID: id, Version: version, Updated: time.Now(), Method: "PUT", Body: []byte(`{}`)},
			&search.Entries{Tokens: []search.TokenEntry{{Param: "Patient.gender", Code: "male"}}, Compartments: []string{id}})
	}
	if _, err := bump(ctx, a, "Patient", "kept", `{"v":1}`); err != nil {
		t.Fatal(err)
	}
	b.Read(ctx, "Patient", "kept") // cached on b
	err := a.Update(ctx, func(tx store.Tx) error {
		if err := put(tx, "new", 1); err != nil {
			return err
		}
		if err := put(tx, "kept", 2); err != nil {
			return err
		}
		return put(tx, "kept", 2) // the same version again
	})
	if err == nil {
		t.Fatal("a version written twice was accepted")
	}
	q, _ := search.Parse("Patient", url.Values{"gender": {"male"}}, search.Options{})
	for _, s := range []*Store{a, b} {
		if _, err := s.Read(ctx, "Patient", "new"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("new: %v", err)
		}
		if v, err := s.Read(ctx, "Patient", "kept"); err != nil || v.Version != 1 {
			t.Errorf("kept: %+v %v", v, err)
		}
		if n, err := s.Count(ctx, q); err != nil || n != 0 {
			t.Errorf("index: %d %v", n, err)
		}
		if _, n, err := s.History(ctx, store.HistoryQuery{Count: 10}); err != nil || n != 1 {
			t.Errorf("history: %d %v", n, err)
		}
	}
	// Both still write.
	if v, err := bump(ctx, b, "Patient", "kept", `{"v":2}`); err != nil || v != 2 {
		t.Errorf("next write: %d %v", v, err)
	}
}

// A panic inside Update rolls the transaction back and lets the write
// lock go: the other instance writes at once.
func TestPanicInUpdate(t *testing.T) {
	ctx := context.Background()
	opt := Options{URL: pgtest.NewDatabase(t), StatementTimeout: 2 * time.Second}
	b := open(t, opt)
	// a is closed only if the test passes: a transaction left open would
	// keep its Close waiting.
	a, err := Open(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if !t.Failed() {
			a.Close()
		}
	}()
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want the panic of fn", r)
			}
		}()
		a.Update(ctx, func(tx store.Tx) error {
			if err := tx.Put(ctx, &store.Version{Type: "Patient", ID: "p", Version: 1, Updated: time.Now(), Method: "PUT", Body: []byte(`{}`)}, nil); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	if _, err := bump(ctx, b, "Patient", "q", `{}`); err != nil {
		t.Fatalf("write after a panic on the other instance: %v", err)
	}
	if _, err := b.Read(ctx, "Patient", "p"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the write of the panicking transaction: %v", err)
	}
}
