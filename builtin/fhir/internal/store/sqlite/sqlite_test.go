package sqlite

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

func put(t *testing.T, s *Store, typ, id string, version int64, deleted bool, idx *search.Entries) {
	t.Helper()
	err := s.Update(context.Background(), func(tx store.Tx) error {
		v := &store.Version{Type: typ, ID: id, Version: version, Updated: time.Now(), Deleted: deleted, Method: "PUT"}
		if !deleted {
			v.Body = []byte(`{"resourceType":"` + typ + `","id":"` + id + `"}`)
		}
		return tx.Put(context.Background(), v, idx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The store on a file: versions, tombstones, the index replaced on
// update, history order, rollback, and reopening.
func TestStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "a", "b.db")
	s, err := Open(ctx, path, Options{Sync: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	idx := func(code string) *search.Entries {
		return &search.Entries{Tokens: []search.TokenEntry{{Param: "Patient.gender", Code: code}}, Compartments: []string{"x"}}
	}
	put(t, s, "Patient", "x", 1, false, idx("male"))
	put(t, s, "Patient", "x", 2, false, idx("female"))
	put(t, s, "Patient", "y", 1, false, idx("male"))
	put(t, s, "Patient", "y", 2, true, nil)

	count := func(gender string) int {
		q, err := search.Parse("Patient", url.Values{"gender": {gender}}, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		n, err := s.Count(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if count("male") != 0 || count("female") != 1 {
		t.Errorf("index after update and delete: male %d female %d", count("male"), count("female"))
	}
	v, err := s.Read(ctx, "Patient", "y")
	if err != nil || !v.Deleted || v.Version != 2 {
		t.Errorf("tombstone: %+v %v", v, err)
	}
	if _, err := s.Read(ctx, "Patient", "z"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	if v, err := s.VRead(ctx, "Patient", "x", 1); err != nil || v.Version != 1 {
		t.Errorf("vread: %+v %v", v, err)
	}
	vs, total, err := s.History(ctx, store.HistoryQuery{Count: 3})
	if err != nil || total != 4 || len(vs) != 3 || vs[0].ID != "y" || !vs[0].Deleted {
		t.Errorf("history: %d %v %+v", total, err, vs)
	}
	// A failing transaction leaves nothing.
	boom := errors.New("boom")
	err = s.Update(ctx, func(tx store.Tx) error {
		tx.Put(ctx, &store.Version{Type: "Patient", ID: "z", Version: 1, Updated: time.Now(), Method: "PUT", Body: []byte(`{}`)}, idx("other"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update returned %v", err)
	}
	if _, err := s.Read(ctx, "Patient", "z"); !errors.Is(err, store.ErrNotFound) {
		t.Error("rolled back write is visible")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.Read(ctx, "Patient", "x"); err != nil || v.Version != 2 {
		t.Errorf("after reopen: %+v %v", v, err)
	}
	if _, err := Open(ctx, path, Options{Sync: "sometimes"}); err == nil {
		t.Error("bad sync accepted")
	}
}

// A second store on the same file is refused: the read cache relies on one
// writer.
func TestOneOwner(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "x.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, path, Options{}); err == nil {
		t.Fatal("a second store opened the same file")
	}
	s.Close()
	s2, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatalf("reopen after close: %v", err)
	}
	s2.Close()
}

// Reads racing with writes never leave a stale version in the cache.
func TestReadCache(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "c.db"), Options{Sync: "normal", CacheBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put(t, s, "Patient", "x", 1, false, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 2000; i++ {
			if _, err := s.Read(ctx, "Patient", "x"); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for v := int64(2); v <= 60; v++ {
		put(t, s, "Patient", "x", v, false, nil)
		got, err := s.Read(ctx, "Patient", "x")
		if err != nil || got.Version != v {
			t.Fatalf("after writing version %d, read %+v %v", v, got, err)
		}
	}
	<-done
	got, _ := s.Read(ctx, "Patient", "x")
	if got.Version != 60 {
		t.Errorf("cached version %d, want 60", got.Version)
	}
}
