package postgres

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// holdWriteLock takes the store's write lock on a connection of its own
// until the test ends.
func holdWriteLock(t *testing.T, url string) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(ctx) })
	if _, err := c.Exec(ctx, `SELECT pg_advisory_lock($1)`, writeLockKey); err != nil {
		t.Fatal(err)
	}
}

func isTimeout(err error) bool {
	return errors.Is(err, store.ErrUnavailable) && errors.Is(err, context.DeadlineExceeded)
}

// A write that waits for the lock longer than StatementTimeout fails with
// an error that is both ErrUnavailable and DeadlineExceeded; reads do not
// wait for the lock.
func TestWriteLockTimeout(t *testing.T) {
	ctx := context.Background()
	s := open(t, Options{StatementTimeout: 300 * time.Millisecond})
	if _, err := bump(ctx, s, "Patient", "x", `{}`); err != nil {
		t.Fatal(err)
	}
	var url string
	if err := s.pool.QueryRow(ctx, `SELECT 'postgres://postgres@127.0.0.1:' || current_setting('port') || '/' || current_database() || '?sslmode=disable'`).Scan(&url); err != nil {
		t.Fatal(err)
	}
	holdWriteLock(t, url)
	_, err := bump(ctx, s, "Patient", "x", `{}`)
	if !isTimeout(err) {
		t.Fatalf("write while the lock is held: %v, want a timeout", err)
	}
	if v, err := s.Read(ctx, "Patient", "x"); err != nil || v.Version != 1 {
		t.Errorf("read while the lock is held: %+v %v", v, err)
	}
	// The caller's own deadline, shorter than the statement timeout: its
	// error, not ErrUnavailable.
	s2 := open(t, Options{URL: url, StatementTimeout: 10 * time.Second})
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = bump(cctx, s2, "Patient", "x", `{}`)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("write past the caller's deadline: %v, want DeadlineExceeded only", err)
	}
}

// With every connection of the pool taken, a call fails with a timeout
// after StatementTimeout.
func TestPoolExhausted(t *testing.T) {
	ctx := context.Background()
	s := open(t, Options{MaxConns: 1, StatementTimeout: 300 * time.Millisecond})
	held := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error)
	go func() {
		done <- s.Update(ctx, func(tx store.Tx) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	_, err := s.Read(ctx, "Patient", "x")
	if !isTimeout(err) {
		t.Errorf("read with no free connection: %v, want a timeout", err)
	}
	if err := s.Ping(ctx); !isTimeout(err) {
		t.Errorf("ping with no free connection: %v, want a timeout", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(ctx, "Patient", "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("read after: %v", err)
	}
}

// A call whose caller gave up returns the caller's error; calls after
// Close fail with ErrClosed.
func TestCanceledAndClosed(t *testing.T) {
	s := open(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for name, err := range map[string]error{
		"read":   func() error { _, err := s.Read(ctx, "Patient", "x"); return err }(),
		"update": s.Update(ctx, func(store.Tx) error { return nil }),
		"ping":   s.Ping(ctx),
	} {
		if !errors.Is(err, context.Canceled) || errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s with a canceled context: %v", name, err)
		}
	}
	s.Close()
	s.Close()
	if _, err := s.Read(context.Background(), "Patient", "x"); !errors.Is(err, ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
	if err := s.Update(context.Background(), func(store.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("update after Close: %v", err)
	}
}

// A connection the server ends (an administrator, a fast shutdown) fails
// the call on it with ErrUnavailable; the next call gets a new one.
func TestTerminatedConnection(t *testing.T) {
	ctx := context.Background()
	s := open(t, Options{MaxConns: 1})
	if _, err := bump(ctx, s, "Patient", "x", `{}`); err != nil {
		t.Fatal(err)
	}
	var url string
	if err := s.pool.QueryRow(ctx, `SELECT 'postgres://postgres@127.0.0.1:' || current_setting('port') || '/postgres?sslmode=disable'`).Scan(&url); err != nil {
		t.Fatal(err)
	}
	var db string
	s.pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db)
	exec(t, url, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, db)
	if _, err := s.Read(ctx, "Patient", "x"); err != nil && !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("read on a terminated connection: %v, want ErrUnavailable", err)
	}
	if v, err := s.Read(ctx, "Patient", "x"); err != nil || v.Version != 1 {
		t.Errorf("read after: %+v %v", v, err)
	}
}
