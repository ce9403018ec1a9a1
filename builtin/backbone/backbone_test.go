package backbone

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/redistest"
)

func testConfig(url string) gateway.RedisConfig {
	cfg := gateway.DefaultConfig().Redis
	cfg.URL = url
	cfg.ReconnectMin = 20 * time.Millisecond
	cfg.ReconnectMax = 200 * time.Millisecond
	return cfg
}

func newManager(t *testing.T, cfg gateway.RedisConfig, opts Options) *Manager {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m, err := New(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDisabled(t *testing.T) {
	m := newManager(t, gateway.DefaultConfig().Redis, Options{})
	if m.Enabled() || m.Up() || m.Client() != nil {
		t.Fatal("a manager without redis config must be disabled")
	}
	err := m.Do(context.Background(), nil, func(context.Context, redis.UniversalClient) error {
		t.Fatal("fn called without redis")
		return nil
	})
	if !errors.Is(err, ErrDisabled) {
		t.Fatalf("Do = %v, want ErrDisabled", err)
	}
	if h := m.Health(); h.Status != gateway.StatusDisabled {
		t.Fatalf("Health = %+v", h)
	}
	if m.Instances() != 1 {
		t.Fatalf("Instances = %d", m.Instances())
	}
}

func TestFailoverAndReconnect(t *testing.T) {
	srv := redistest.Start(t)
	m := newManager(t, testConfig(srv.URL()), Options{Heartbeat: time.Hour})
	if !m.Up() {
		t.Fatal("not up after New")
	}
	if h := m.Health(); h.Status != gateway.StatusUp {
		t.Fatalf("Health = %+v", h)
	}
	var mu sync.Mutex
	var events []bool
	m.OnChange(func(up bool) { mu.Lock(); events = append(events, up); mu.Unlock() })

	op := m.Op("test")
	ctx := context.Background()
	set := func() error {
		return m.Do(ctx, op, func(ctx context.Context, c redis.UniversalClient) error {
			return c.Set(ctx, m.Key("t", ":k"), "v", 0).Err()
		})
	}
	if err := set(); err != nil {
		t.Fatal(err)
	}
	// A reply error is not an outage.
	err := m.Do(ctx, op, func(ctx context.Context, c redis.UniversalClient) error {
		return c.LPush(ctx, m.Key("t", ":k"), "x").Err()
	})
	if err == nil || !m.Up() {
		t.Fatalf("WRONGTYPE: err %v, up %v; want an error and still up", err, m.Up())
	}

	srv.Stop()
	t0 := time.Now()
	if err := set(); err == nil {
		t.Fatal("SET succeeded on a stopped server")
	}
	// Not a timing check (that is for benchmarks): a hang guard.
	if took := time.Since(t0); took > 30*time.Second {
		t.Errorf("a call to a dead redis took %s", took)
	}
	if m.Up() {
		t.Fatal("still up after a failed call (failure_threshold 1)")
	}
	if err := set(); !errors.Is(err, ErrDown) {
		t.Fatalf("Do while down = %v, want ErrDown", err)
	}
	if h := m.Health(); h.Status != gateway.StatusDown || !strings.Contains(h.Detail, "unreachable") {
		t.Fatalf("Health while down = %+v", h)
	}

	srv.Restart()
	waitFor(t, "reconnect", 10*time.Second, m.Up)
	if err := set(); err != nil {
		t.Fatalf("SET after reconnect: %v", err)
	}
	waitFor(t, "two OnChange events", 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(events) == 2 })
	mu.Lock()
	defer mu.Unlock()
	if !(events[0] == false && events[1] == true) {
		t.Fatalf("OnChange events = %v, want [false true]", events)
	}
}

func TestFailureThreshold(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testConfig(srv.URL())
	cfg.FailureThreshold = 3
	m := newManager(t, cfg, Options{Heartbeat: time.Hour})
	srv.Stop()
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		m.Do(ctx, nil, func(ctx context.Context, c redis.UniversalClient) error { return c.Ping(ctx).Err() })
		if up := m.Up(); up != (i < 3) {
			t.Fatalf("after %d failures up = %v", i, up)
		}
	}
}

func TestStartsDown(t *testing.T) {
	// A free port with nothing listening.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	m := newManager(t, testConfig("redis://"+addr), Options{})
	if m.Up() {
		t.Fatal("up with nothing listening")
	}
	if h := m.Health(); h.Status != gateway.StatusDown {
		t.Fatalf("Health = %+v", h)
	}
}

func TestHeartbeatsAndPubSub(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testConfig(srv.URL())
	a := newManager(t, cfg, Options{Heartbeat: 50 * time.Millisecond, InstanceID: "a"})
	b := newManager(t, cfg, Options{Heartbeat: 50 * time.Millisecond, InstanceID: "b"})
	waitFor(t, "two live instances", 5*time.Second, func() bool { return a.Instances() == 2 && b.Instances() == 2 })

	got := make(chan string, 64)
	cancel := b.Subscribe("inval", func(p string) {
		if p != "ping" {
			got <- p
		}
	})
	// The subscription is live once a PUBLISH reaches a subscriber.
	waitFor(t, "subscription", 5*time.Second, func() bool {
		var n int64
		a.Do(context.Background(), nil, func(ctx context.Context, c redis.UniversalClient) error {
			var err error
			n, err = c.Publish(ctx, cfg.KeyPrefix+"inval", "ping").Result()
			return err
		})
		return n == 1
	})
	for len(got) > 0 {
		<-got
	}
	if err := a.Publish(context.Background(), nil, "inval", "Patient/1"); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "Patient/1" {
			t.Fatalf("payload %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("message not delivered")
	}

	// Subscriptions survive a Redis restart.
	srv.Stop()
	b.Do(context.Background(), nil, func(ctx context.Context, c redis.UniversalClient) error { return c.Ping(ctx).Err() })
	srv.Restart()
	waitFor(t, "b reconnects", 10*time.Second, b.Up)
	waitFor(t, "a reconnects", 10*time.Second, a.Up)
	for len(got) > 0 {
		<-got
	}
	if err := a.Publish(context.Background(), nil, "inval", "after"); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "after" {
			t.Fatalf("payload %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("message not delivered after reconnect")
	}
	cancel()

	b.Close()
	waitFor(t, "b's heartbeat removed", 5*time.Second, func() bool { return a.Instances() == 1 })
}

func TestTagAndKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"user:alice", "user:alice"},
		{"a{b}c", "a%7Bb%7Dc"},
		{"x y", "x%20y"},
		{"50%", "50%25"},
		{"", ""},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := Tag(tc.in); got != tc.want {
				t.Fatalf("Tag(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
	m := &Manager{cfg: gateway.RedisConfig{KeyPrefix: "p:"}}
	if got := m.Key("rl:x", ":c"); got != "p:{rl:x}:c" {
		t.Fatalf("Key = %q", got)
	}
}

func TestIsOutage(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	bg := context.Background()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"nil", bg, nil, false},
		{"redis.Nil", bg, redis.Nil, false},
		{"closed client", bg, redis.ErrClosed, false},
		{"network", bg, &net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{"caller gave up", canceled, context.Canceled, false},
		{"timeout", bg, context.DeadlineExceeded, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsOutage(tc.ctx, tc.err); got != tc.want {
				t.Fatalf("IsOutage(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestBatch(t *testing.T) {
	srv := redistest.Start(t)
	m := newManager(t, testConfig(srv.URL()), Options{Heartbeat: time.Hour})
	op := m.Op("test")
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 500)
	for i := 0; i < 500; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd, err := m.Batch(ctx, op, func(p redis.Pipeliner) redis.Cmder { return p.Incr(ctx, m.Key("b", "")) })
			if err == nil && cmd.(*redis.IntCmd).Val() < 1 {
				err = errors.New("bad reply")
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got, _ := srv.Do("GET", m.Key("b", "")); got != "500" {
		t.Fatalf("counter %q, want 500", got)
	}
	// A reply error reaches its caller only.
	if _, err := m.Batch(ctx, op, func(p redis.Pipeliner) redis.Cmder { return p.LPush(ctx, m.Key("b", ""), "x") }); err == nil || !m.Up() {
		t.Fatalf("WRONGTYPE in a batch: %v, up %v", err, m.Up())
	}
	srv.Stop()
	if _, err := m.Batch(ctx, op, func(p redis.Pipeliner) redis.Cmder { return p.Get(ctx, "x") }); err == nil {
		t.Fatal("batch on a stopped server succeeded")
	}
	if m.Up() {
		t.Fatal("still up after a failed batch")
	}
	if _, err := m.Batch(ctx, op, func(p redis.Pipeliner) redis.Cmder { return p.Get(ctx, "x") }); !errors.Is(err, ErrDown) {
		t.Fatalf("Batch while down = %v, want ErrDown", err)
	}
}

// TestDoRetriesAfterClientSwap: a call that raced with the swap to a new
// client (and so met redis.ErrClosed) is made again on the new client,
// instead of failing the request.
func TestDoRetriesAfterClientSwap(t *testing.T) {
	srv := redistest.Start(t)
	m := newManager(t, testConfig(srv.URL()), Options{})
	calls := 0
	err := m.Do(context.Background(), nil, func(ctx context.Context, c redis.UniversalClient) error {
		calls++
		if calls == 1 {
			if err := m.connect(ctx); err != nil { // swaps in a new client and closes c
				t.Fatal(err)
			}
		}
		return c.Set(ctx, "k", "v", 0).Err()
	})
	if err != nil || calls != 2 {
		t.Fatalf("Do = %v after %d calls; want nil after 2", err, calls)
	}
	if !m.Up() {
		t.Error("a closed client marked Redis down")
	}
}

// TestClusterUpOnlyWhenClusterOK: after a Cluster restart its nodes answer
// PING before the cluster serves keys; the manager must stay down until
// every master reports cluster_state:ok, not flap on CLUSTERDOWN.
func TestClusterUpOnlyWhenClusterOK(t *testing.T) {
	c := redistest.Cluster(t)
	cfg := gateway.DefaultConfig().Redis
	cfg.Cluster = &gateway.ClusterConfig{Addrs: c.Addrs()}
	cfg.ReconnectMin, cfg.ReconnectMax = 20*time.Millisecond, 100*time.Millisecond
	m := newManager(t, cfg, Options{})
	ctx := context.Background()
	if !m.Up() {
		t.Fatal("not up on a healthy cluster")
	}
	c.Shutdown()
	m.Do(ctx, nil, func(ctx context.Context, c redis.UniversalClient) error { return c.Ping(ctx).Err() })
	if m.Up() {
		t.Fatal("up with every node stopped")
	}
	// Two of three masters back: they answer PING, but a third of the
	// slots has no master, so the cluster is down.
	for _, n := range c.Nodes[:2] {
		if err := n.Restart(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.connect(ctx); err == nil || !strings.Contains(err.Error(), "cluster") {
		t.Fatalf("connect with a third of the slots uncovered = %v; want a cluster error", err)
	}
	// The prober tries again and again meanwhile: after three failed
	// attempts the manager must still be down.
	misses := m.misses.Load()
	waitFor(t, "three reconnect attempts", 30*time.Second, func() bool { return m.misses.Load() >= misses+3 || m.Up() })
	if m.Up() {
		t.Fatal("marked up while the cluster was down")
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the manager up after the cluster is ok", 30*time.Second, m.Up)
	if err := m.Do(ctx, nil, func(ctx context.Context, c redis.UniversalClient) error { return c.Set(ctx, "k", "v", 0).Err() }); err != nil {
		t.Fatal(err)
	}
}
