package ratelimit

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/backbone"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/redistest"
)

// fakeClock is a settable clock; t0 is aligned to every window used here.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

var t0 = time.UnixMilli(1_800_000_000_000) // a multiple of 1h

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Set(d time.Duration) {
	c.mu.Lock()
	c.now = t0.Add(d)
	c.mu.Unlock()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// redisManager starts a redis-server and a manager on it.
func redisManager(t testing.TB) (*backbone.Manager, *redistest.Server) {
	t.Helper()
	srv := redistest.Start(t)
	cfg := gateway.DefaultConfig().Redis
	cfg.URL = srv.URL()
	cfg.ReadTimeout = time.Second // -race on a busy machine
	m, err := backbone.New(context.Background(), cfg, backbone.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, srv
}

// stores runs fn against the memory store and against a real Redis, with
// engines built by mk on a fake clock.
func stores(t *testing.T, fn func(t *testing.T, clock *fakeClock, mk func(EngineOptions) *Engine)) {
	var rm *backbone.Manager
	for _, kind := range []string{"memory", "redis"} {
		t.Run(kind, func(t *testing.T) {
			var m *backbone.Manager
			if kind == "redis" {
				if rm == nil {
					rm, _ = redisManager(t)
				}
				m = rm
			}
			clock := &fakeClock{now: t0}
			n := 0
			mk := func(o EngineOptions) *Engine {
				o.Clock = clock.Now
				if o.Name == "" {
					// A fresh namespace per engine: tests share the server.
					n++
					o.Name = t.Name() + "-" + string(rune('a'+n))
				}
				e, err := NewEngine(context.Background(), m, o)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { e.Close() })
				return e
			}
			fn(t, clock, mk)
		})
	}
}

type step struct {
	at     time.Duration // since t0
	client string
	cost   int64
	want   Result
	retry  time.Duration // checked when not zero
	remain *int64        // checked when set
}

func r(n int64) *int64 { return &n }

func run(t *testing.T, clock *fakeClock, e *Engine, pol Policy, steps []step) {
	t.Helper()
	for i, s := range steps {
		clock.Set(s.at)
		if s.client == "" {
			s.client = "ip:192.0.2.1"
		}
		if s.cost == 0 {
			s.cost = 1
		}
		d, err := e.Decide(context.Background(), s.client, "scope", pol, s.cost)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if d.Result != s.want {
			t.Fatalf("step %d at %s: %v (%+v), want %v", i, s.at, d.Result, d, s.want)
		}
		if s.retry != 0 && d.RetryAfter != s.retry {
			t.Fatalf("step %d at %s: retry after %s, want %s", i, s.at, d.RetryAfter, s.retry)
		}
		if s.remain != nil && d.Remaining != *s.remain {
			t.Fatalf("step %d at %s: remaining %d, want %d", i, s.at, d.Remaining, *s.remain)
		}
	}
}

func TestContractWindowEdges(t *testing.T) {
	pol := Policy{Limit: 3, Window: 10 * time.Second}
	stores(t, func(t *testing.T, clock *fakeClock, mk func(EngineOptions) *Engine) {
		// precision 10: 1 s sub-windows; a request in [0s,1s) counts until 11s.
		run(t, clock, mk(EngineOptions{}), pol, []step{
			{at: 500 * time.Millisecond, want: Allowed, remain: r(2)},
			{at: 600 * time.Millisecond, want: Allowed, remain: r(1)},
			{at: 5 * time.Second, want: Allowed, remain: r(0)},
			{at: 5 * time.Second, want: Limited, retry: 6 * time.Second}, // both of [0s,1s) leave at 11s
			{at: 10999 * time.Millisecond, want: Limited, retry: time.Millisecond},
			{at: 11 * time.Second, want: Allowed, remain: r(1)}, // both requests of [0s,1s) left
			{at: 11 * time.Second, want: Allowed},
			{at: 11 * time.Second, want: Limited, retry: 5 * time.Second}, // the one at 5s leaves at 16s
			{at: 16 * time.Second, want: Allowed, remain: r(0)},
			{at: 40 * time.Second, want: Allowed, remain: r(2)}, // all gone
		})
	})
}

func TestContractBurst(t *testing.T) {
	pol := Policy{Limit: 100, Window: 15 * time.Minute, Burst: 3, BurstWindow: time.Second}
	stores(t, func(t *testing.T, clock *fakeClock, mk func(EngineOptions) *Engine) {
		// Burst sub-windows are 100 ms: a request at 0s counts until 1.1s.
		run(t, clock, mk(EngineOptions{}), pol, []step{
			{at: 0, want: Allowed, remain: r(99)},
			{at: 10 * time.Millisecond, want: Allowed, remain: r(98)},
			{at: 20 * time.Millisecond, want: Allowed, remain: r(97)},
			{at: 30 * time.Millisecond, want: Limited, retry: 1070 * time.Millisecond},
			{at: 1099 * time.Millisecond, want: Limited},
			{at: 1100 * time.Millisecond, want: Allowed, remain: r(96)},
		})
	})
}

func TestContractCost(t *testing.T) {
	pol := Policy{Limit: 5, Window: time.Minute}
	stores(t, func(t *testing.T, clock *fakeClock, mk func(EngineOptions) *Engine) {
		run(t, clock, mk(EngineOptions{}), pol, []step{
			{cost: 2, want: Allowed, remain: r(3)},
			{cost: 2, want: Allowed, remain: r(1)},
			{cost: 2, want: Limited},
			{cost: 1, want: Allowed, remain: r(0)},
			{cost: 1, want: Limited},
		})
	})
}

func TestContractClientsAndScopesApart(t *testing.T) {
	pol := Policy{Limit: 1, Window: time.Minute}
	stores(t, func(t *testing.T, clock *fakeClock, mk func(EngineOptions) *Engine) {
		e := mk(EngineOptions{})
		ctx := context.Background()
		for _, c := range []struct{ client, scope string }{{"user:a", "x"}, {"user:b", "x"}, {"user:a", "y"}} {
			if d, _ := e.Decide(ctx, c.client, c.scope, pol, 1); d.Result != Allowed {
				t.Fatalf("%v: first request %v", c, d.Result)
			}
			if d, _ := e.Decide(ctx, c.client, c.scope, pol, 1); d.Result != Limited {
				t.Fatalf("%v: second request %v", c, d.Result)
			}
		}
	})
}

func TestContractCountRejected(t *testing.T) {
	pol := Policy{Limit: 2, Window: 10 * time.Second}
	stores(t, func(t *testing.T, clock *fakeClock, mk func(EngineOptions) *Engine) {
		run(t, clock, mk(EngineOptions{CountRejected: true}), pol, []step{
			{at: 0, want: Allowed, remain: r(1)},
			{at: 0, want: Allowed, remain: r(0)},
			{at: 5 * time.Second, want: Limited}, // counted: these two keep
			{at: 5 * time.Second, want: Limited}, // the window full until 16s
			{at: 11 * time.Second, want: Limited},
			{at: 16 * time.Second, want: Allowed},
		})
		// Not counted (the default): free again at 11s.
		run(t, clock, mk(EngineOptions{}), pol, []step{
			{at: 0, want: Allowed},
			{at: 0, want: Allowed},
			{at: 5 * time.Second, want: Limited},
			{at: 11 * time.Second, want: Allowed},
		})
	})
}

func TestContractBlockingAndEscalation(t *testing.T) {
	pol := Policy{Limit: 1, Window: 10 * time.Second}
	block := BlockPolicy{After: 2, Within: time.Minute, Duration: 20 * time.Second, Max: 50 * time.Second, Forget: time.Hour}
	stores(t, func(t *testing.T, clock *fakeClock, mk func(EngineOptions) *Engine) {
		e := mk(EngineOptions{Block: block})
		s := time.Second
		run(t, clock, e, pol, []step{
			{at: 0, want: Allowed},
			{at: 1 * s, want: Limited},
			{at: 2 * s, want: Limited},
			{at: 3 * s, want: Blocked, retry: 20 * s}, // third rejection: blocked 20s
			{at: 13 * s, want: Blocked, retry: 10 * s},
			{at: 23 * s, want: Allowed}, // block over, window free
			{at: 24 * s, want: Limited},
			{at: 25 * s, want: Limited},
			{at: 26 * s, want: Blocked, retry: 40 * s}, // second offence: doubled
			{at: 66 * s, want: Allowed},
			{at: 67 * s, want: Limited},
			{at: 68 * s, want: Limited},
			{at: 69 * s, want: Blocked, retry: 50 * s}, // third: capped
		})
		blocks, err := e.Blocks(context.Background())
		if err != nil || len(blocks) != 1 || blocks[0].Key != "ip:192.0.2.1" {
			t.Fatalf("Blocks = %v, %v", blocks, err)
		}
		if found, err := e.Unblock(context.Background(), "ip:192.0.2.1"); !found || err != nil {
			t.Fatalf("Unblock = %v, %v", found, err)
		}
		run(t, clock, e, pol, []step{{at: 80 * s, want: Allowed}})
		if blocks, _ := e.Blocks(context.Background()); len(blocks) != 0 {
			t.Fatalf("Blocks after unblock = %v", blocks)
		}
	})
}

// TestContractSlidingBound checks the algorithm's bound on random traffic:
// in every span of one window, admitted units never exceed the limit, and
// a request is only rejected when the units admitted in the window plus
// one sub-window before it leave no room.
func TestContractSlidingBound(t *testing.T) {
	pol := Policy{Limit: 20, Window: 10 * time.Second}
	const g = time.Second // sub-window with precision 10
	stores(t, func(t *testing.T, clock *fakeClock, mk func(EngineOptions) *Engine) {
		e := mk(EngineOptions{})
		rng := rand.New(rand.NewPCG(1, 2))
		type adm struct {
			at   time.Duration
			cost int64
		}
		var admitted []adm
		sum := func(from, to time.Duration) (n int64) { // (from, to]
			for _, a := range admitted {
				if a.at > from && a.at <= to {
					n += a.cost
				}
			}
			return n
		}
		at := time.Duration(0)
		for i := 0; i < 400; i++ {
			at += time.Duration(rng.IntN(400)) * time.Millisecond
			cost := int64(1 + rng.IntN(3))
			clock.Set(at)
			d, err := e.Decide(context.Background(), "user:x", "s", pol, cost)
			if err != nil {
				t.Fatal(err)
			}
			if d.Result == Allowed {
				admitted = append(admitted, adm{at, cost})
				if n := sum(at-pol.Window, at); n > pol.Limit {
					t.Fatalf("at %s: %d units admitted in the last window, limit %d", at, n, pol.Limit)
				}
			} else if n := sum(at-pol.Window-g-time.Millisecond, at); n+cost <= pol.Limit {
				t.Fatalf("at %s: rejected cost %d with only %d units in window+sub-window", at, cost, n)
			}
		}
	})
}

func TestDivide(t *testing.T) {
	p := Policy{Limit: 100, Window: time.Minute, Burst: 20, BurstWindow: time.Second}
	for _, tc := range []struct {
		n            int
		limit, burst int64
	}{{1, 100, 20}, {4, 25, 5}, {3, 34, 7}, {1000, 1, 1}} {
		got := divide(p, tc.n)
		if got.Limit != tc.limit || got.Burst != tc.burst {
			t.Errorf("divide by %d = %d/%d, want %d/%d", tc.n, got.Limit, got.Burst, tc.limit, tc.burst)
		}
	}
}

func TestLocalCache(t *testing.T) {
	m, _ := redisManager(t)
	clock := &fakeClock{now: t0}
	e, err := NewEngine(context.Background(), m, EngineOptions{Name: "lc", LocalCache: true, Clock: clock.Now,
		Block: BlockPolicy{After: 10, Within: time.Minute, Duration: time.Minute, Max: time.Hour, Forget: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	pol := Policy{Limit: 1, Window: 10 * time.Second}
	ctx := context.Background()
	sources := map[string]int{}
	var last Decision
	for i := 0; i < 30; i++ {
		d, err := e.Decide(ctx, "ip:198.51.100.7", "s", pol, 1)
		if err != nil {
			t.Fatal(err)
		}
		sources[d.Source]++
		last = d
	}
	// 1 allowed + 1 limited from redis, then cache hits with a store call
	// every 5 (block.after/2) rejections; the 11th rejection blocks.
	if last.Result != Blocked {
		t.Fatalf("last decision %+v, want blocked", last)
	}
	if sources["redis"] > 6 || sources["cache"] < 20 {
		t.Fatalf("decisions by source %v: the cache should answer most", sources)
	}
	// An unblock reaches the cache.
	if _, err := e.Unblock(ctx, "ip:198.51.100.7"); err != nil {
		t.Fatal(err)
	}
	clock.Set(11 * time.Second)
	if d, _ := e.Decide(ctx, "ip:198.51.100.7", "s", pol, 1); d.Result != Allowed {
		t.Fatalf("after unblock and window: %+v", d)
	}
}

func TestMemoryBounded(t *testing.T) {
	clock := &fakeClock{now: t0}
	e, err := NewEngine(context.Background(), nil, EngineOptions{MaxKeys: 64, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	pol := Policy{Limit: 5, Window: time.Hour}
	for i := 0; i < 5000; i++ {
		e.Decide(context.Background(), "ip:10.0.0."+string(rune(i)), "s", pol, 1)
	}
	if n := e.mem.counters.len(); n > 64+shards {
		t.Fatalf("memory store holds %d keys, bound 64", n)
	}
}

// TestContractRefund: a refund gives back what an allowed decision
// counted, from the sub-window it was counted in, in both windows; a
// refund of a sub-window that has left the window gives nothing back (so
// it can never make room the window did not have). A decision is refunded
// at most once.
func TestContractRefund(t *testing.T) {
	pol := Policy{Limit: 2, Window: 10 * time.Second, Burst: 2, BurstWindow: time.Second}
	stores(t, func(t *testing.T, clock *fakeClock, mk func(EngineOptions) *Engine) {
		e := mk(EngineOptions{})
		ctx := context.Background()
		decide := func(at time.Duration) Decision {
			t.Helper()
			clock.Set(at)
			d, err := e.Decide(ctx, "user:a", "login", pol, 1)
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
		refund := func(at time.Duration, d Decision) {
			t.Helper()
			clock.Set(at)
			if err := e.Refund(ctx, "user:a", "login", pol, 1, d); err != nil {
				t.Fatal(err)
			}
		}
		first := decide(100 * time.Millisecond)
		second := decide(200 * time.Millisecond)
		if first.Result != Allowed || second.Result != Allowed || first.At.IsZero() {
			t.Fatalf("reservations: %+v %+v", first, second)
		}
		if d := decide(300 * time.Millisecond); d.Result != Limited {
			t.Fatalf("third within the limit of 2: %v", d.Result)
		}
		// Given back 1.5 s later (another sub-window, and past the burst
		// window's own): the slot frees now, not when the window slides.
		refund(1500*time.Millisecond, first)
		if d := decide(1600 * time.Millisecond); d.Result != Allowed {
			t.Fatalf("after a refund: %v %+v", d.Result, d)
		}
		if d := decide(1700 * time.Millisecond); d.Result != Limited {
			t.Fatalf("a refund gives back one unit only: %v", d.Result)
		}
		// Past the window the reservation has left by itself: refunding
		// it then must not free a unit counted later.
		late := decide(12 * time.Second)
		if late.Result != Allowed {
			t.Fatalf("after the window: %v", late.Result)
		}
		decide(12100 * time.Millisecond)
		refund(12200*time.Millisecond, second)
		if d := decide(12300 * time.Millisecond); d.Result != Limited {
			t.Fatalf("a refund of a reservation that left the window freed a later one: %v", d.Result)
		}
	})
}
