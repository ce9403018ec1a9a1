package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/internal/pgtest"
)

// The server is stopped (as a crash would) and started again while
// writers keep writing: every write whose Update returned nil is there
// afterwards; while the server is down every call fails promptly with
// ErrUnavailable; once it is back the same Store writes and reads again,
// and its cache listens again.
func TestServerRestart(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Start(t)
	const timeout = 2 * time.Second
	s := open(t, Options{URL: srv.NewDatabase(t), StatementTimeout: timeout, CacheBytes: 1 << 20})
	waitLive(t, s)

	var (
		mu       sync.Mutex
		acked    = map[string]int64{} // id -> version acknowledged
		ackedN   atomic.Int64
		failures atomic.Int64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Its own resources, and one all writers share.
				id := fmt.Sprintf("w%d-%d", w, i%20)
				if i%2 == 1 {
					id = "shared"
				}
				v, err := bump(ctx, s, "Patient", id, `{}`)
				if err != nil {
					if !errors.Is(err, store.ErrUnavailable) {
						t.Errorf("write failed with %v, want ErrUnavailable", err)
					}
					failures.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mu.Lock()
				acked[id] = max(acked[id], v)
				mu.Unlock()
				ackedN.Add(1)
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	waitFor(t, "writes before the stop", func() bool { return ackedN.Load() >= 30 })

	srv.Stop()
	f0 := failures.Load()
	waitFor(t, "writes failing", func() bool { return failures.Load() >= f0+3 })
	// Every call fails with ErrUnavailable, within the statement timeout
	// (and a margin for a loaded machine): never a hang.
	q, _ := search.Parse("Patient", nil, search.Options{})
	for name, call := range map[string]func() error{
		"ping":    func() error { return s.Ping(ctx) },
		"read":    func() error { _, err := s.Read(ctx, "Patient", "nope"); return err },
		"search":  func() error { _, err := s.Search(ctx, q, 0, 10); return err },
		"history": func() error { _, _, err := s.History(ctx, store.HistoryQuery{Count: 10}); return err },
		"update":  func() error { _, err := bump(ctx, s, "Patient", "down", `{}`); return err },
	} {
		start := time.Now()
		err := call()
		if took := time.Since(start); took > timeout+3*time.Second {
			t.Errorf("%s took %s while the server was down", name, took)
		}
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s while the server is down: %v, want ErrUnavailable", name, err)
		}
	}
	if s.cache.live.Load() {
		t.Error("the cache is live while the server is down")
	}

	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	n0 := ackedN.Load()
	waitFor(t, "writes after the restart", func() bool { return ackedN.Load() >= n0+30 })
	waitLive(t, s)
	close(stop)
	wg.Wait()
	stop = make(chan struct{})

	mu.Lock()
	defer mu.Unlock()
	for id, v := range acked {
		got, err := s.Read(ctx, "Patient", id)
		if err != nil || got.Version < v {
			t.Errorf("%s: version %d acknowledged, read %+v %v", id, v, got, err)
		}
	}
	vs, n, err := s.History(ctx, store.HistoryQuery{Type: "Patient", ID: "shared", Count: 10000})
	if err != nil || n == 0 {
		t.Fatalf("history: %d %v", n, err)
	}
	for i, v := range vs {
		if v.Version != int64(n-i) {
			t.Fatalf("history of shared: version %d at %d of %d", v.Version, i, n)
		}
	}
	t.Logf("%d writes acknowledged, %d failed while the server was down", ackedN.Load(), failures.Load())
}
