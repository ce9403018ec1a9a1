package postgres

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store/storetest"
	"github.com/omnigate/omnigate/internal/pgtest"
)

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitLive waits until the store's listener is connected and listening.
func waitLive(t *testing.T, s *Store) {
	t.Helper()
	waitFor(t, "the cache listener", s.cache.live.Load)
}

func readVersion(t *testing.T, s *Store, id string) int64 {
	t.Helper()
	v, err := s.Read(context.Background(), "Patient", id)
	if err != nil {
		t.Fatal(err)
	}
	return v.Version
}

// A resource cached by one instance and written by another is read at its
// new version as soon as the write's notification arrives; the writer
// itself reads its write at once.
func TestCacheAcrossInstances(t *testing.T) {
	ctx := context.Background()
	a, b := twoInstances(t, Options{CacheBytes: 1 << 20})
	waitLive(t, a)
	waitLive(t, b)
	if _, err := bump(ctx, b, "Patient", "x", `{}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "version 1 cached", func() bool { return readVersion(t, a, "x") == 1 && a.cache.len() == 1 })
	for v := int64(2); v <= 20; v++ {
		// Served from the cache: the same Version.
		r1, _ := a.Read(ctx, "Patient", "x")
		if r2, _ := a.Read(ctx, "Patient", "x"); r1 != r2 || r1.Version != v-1 {
			t.Fatalf("a read version %d, not from its cache", r1.Version)
		}
		if _, err := bump(ctx, b, "Patient", "x", `{}`); err != nil {
			t.Fatal(err)
		}
		if got := readVersion(t, b, "x"); got != v {
			t.Fatalf("the writer read version %d after writing %d", got, v)
		}
		waitFor(t, fmt.Sprintf("version %d on the other instance", v), func() bool { return readVersion(t, a, "x") == v && a.cache.len() == 1 })
	}
	// A transaction of many resources drops the whole cache.
	readVersion(t, a, "x")
	var ops []storetest.Resource
	for i := range maxNotifyKeys + 1 {
		ops = append(ops, storetest.Resource{Type: "Basic", ID: fmt.Sprint(i), Body: `{"resourceType":"Basic","code":{}}`})
	}
	vs, idx := versions(t, ops)
	if err := b.Load(ctx, vs, idx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the cache emptied", func() bool { return a.cache.len() == 0 })
	// An id too long for a notification drops the whole cache too.
	long := strings.Repeat("x", maxPayload)
	if _, err := bump(ctx, b, "Patient", long, `{}`); err != nil {
		t.Fatal(err)
	}
	readVersion(t, a, long)
	readVersion(t, a, "x")
	if _, err := bump(ctx, b, "Patient", long, `{}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the long id's new version", func() bool { return readVersion(t, a, long) == 2 })
}

// While the listening connection is down the cache is not used (a write by
// another instance is read at once, nothing is cached); when it is back
// the cache starts empty and works again.
func TestCacheListenerDown(t *testing.T) {
	ctx := context.Background()
	a, b := twoInstances(t, Options{CacheBytes: 1 << 20})
	waitLive(t, a)
	if _, err := bump(ctx, b, "Patient", "x", `{}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "x cached", func() bool { return readVersion(t, a, "x") == 1 && a.cache.len() == 1 })
	// Keep the listener from connecting again: no new connection to the
	// database is allowed, and its connection is ended. b's and a's pools
	// keep the connections they hold.
	var db string
	if err := a.pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	admin := pgtest.Shared(t).URL("postgres")
	exec(t, admin, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` ALLOW_CONNECTIONS false`)
	exec(t, admin, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'`, db)
	waitFor(t, "the cache turned off", func() bool { return !a.cache.live.Load() })
	if a.cache.len() != 0 {
		t.Error("the cache kept entries while off")
	}
	if _, err := bump(ctx, b, "Patient", "x", `{}`); err != nil {
		t.Fatal(err)
	}
	if got := readVersion(t, a, "x"); got != 2 {
		t.Errorf("read version %d while the listener is down, want 2", got)
	}
	if a.cache.len() != 0 {
		t.Error("a read filled the cache while it was off")
	}
	exec(t, admin, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` ALLOW_CONNECTIONS true`)
	waitLive(t, a)
	if a.cache.len() != 0 {
		t.Error("the cache did not start empty")
	}
	waitFor(t, "x cached again", func() bool { return readVersion(t, a, "x") == 2 && a.cache.len() == 1 })
	if _, err := bump(ctx, b, "Patient", "x", `{}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "version 3", func() bool { return readVersion(t, a, "x") == 3 })
}
