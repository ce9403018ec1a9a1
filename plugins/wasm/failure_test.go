package wasm

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

// fakeClock is a Clock that moves only when the test advances it; due
// functions run, in order, in Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Advance moves the clock by d and runs the functions that came due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	rest := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.stopped:
		case !t.at.After(c.now):
			t.stopped = true
			due = append(due, t)
		default:
			rest = append(rest, t)
		}
	}
	c.timers = rest
	c.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
	for _, t := range due {
		t.f()
	}
}

// The circuit breaker opens after BreakerFailures consecutive failed
// requests: then the route answers 503 with Retry-After without calling the
// guest; after BreakerOpenFor one request probes it, and a failed probe
// opens the breaker again, a good one closes it.
func TestBreaker(t *testing.T) {
	clock := newFakeClock()
	p, logs, reg := newPlugin(t, guest(t, "testguest"), func(o *Options) {
		o.Clock = clock
		o.BreakerFailures = 3
		o.BreakerOpenFor = 5 * time.Second
		o.RestartBurst = 100 // restarts are not what this test is about
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("plugin log:\n%s", logs)
		}
	})
	p.opts.KV.Set(context.Background(), "wasm:test:broken", []byte("1"), 0)
	get := func() *http.Response {
		return serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "unless-healed")).Result()
	}
	traps := func() float64 { return counterValue(t, reg, MetricFailures, map[string]string{"kind": "trap"}) }
	for i := 0; i < 3; i++ {
		if r := get(); r.StatusCode != 500 {
			t.Fatalf("failure %d: status %d", i+1, r.StatusCode)
		}
	}
	// Open: the guest is not called.
	r := get()
	if r.StatusCode != 503 || r.Header.Get("Retry-After") != "5" {
		t.Fatalf("with the breaker open: status %d, Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
	}
	if got := traps(); got != 3 {
		t.Errorf("the guest was called with the breaker open: %v traps", got)
	}
	if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "breaker"}); got != 1 {
		t.Errorf("breaker failures = %v", got)
	}
	if got := counterValue(t, reg, MetricBreaker, nil); got != breakerOpen {
		t.Errorf("breaker state = %v", got)
	}
	if h := p.Health(); h.Status != gateway.StatusDegraded || !strings.Contains(h.Detail, "circuit breaker open") {
		t.Errorf("health with the breaker open: %+v", h)
	}
	clock.Advance(2 * time.Second)
	if r := get(); r.StatusCode != 503 || r.Header.Get("Retry-After") != "3" {
		t.Fatalf("2s later: status %d, Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
	}
	// The probe fails: open again, for another 5s.
	clock.Advance(3 * time.Second)
	if r := get(); r.StatusCode != 500 || traps() != 4 {
		t.Fatalf("probe: status %d, %v traps", r.StatusCode, traps())
	}
	if r := get(); r.StatusCode != 503 || r.Header.Get("Retry-After") != "5" {
		t.Fatalf("after a failed probe: status %d, Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
	}
	// The plugin heals; the breaker lets a probe through only after the
	// open time, and then closes.
	p.opts.KV.Delete(context.Background(), "wasm:test:broken")
	if r := get(); r.StatusCode != 503 {
		t.Fatalf("healed, before the open time is over: status %d", r.StatusCode)
	}
	clock.Advance(5 * time.Second)
	for i := 0; i < 5; i++ {
		if r := get(); r.StatusCode != 200 {
			t.Fatalf("healed, request %d after the open time: status %d", i+1, r.StatusCode)
		}
	}
	if got := counterValue(t, reg, MetricBreaker, nil); got != breakerClosed {
		t.Errorf("breaker state = %v", got)
	}
	if h := p.Health(); h.Status != gateway.StatusUp {
		t.Errorf("health after recovery: %+v", h)
	}
	// A success resets the count: two failures do not open it again.
	p.opts.KV.Set(context.Background(), "wasm:test:broken", []byte("1"), 0)
	get()
	get()
	p.opts.KV.Delete(context.Background(), "wasm:test:broken")
	if r := get(); r.StatusCode != 200 {
		t.Fatalf("after two failures: status %d", r.StatusCode)
	}
}

// With fail: open, an open breaker passes requests on, as a failure would.
func TestBreakerFailOpen(t *testing.T) {
	clock := newFakeClock()
	p, _, reg := newPlugin(t, guest(t, "testguest"), func(o *Options) {
		o.Clock = clock
		o.FailOpen = true
		o.BreakerFailures = 2
		o.RestartBurst = 100
	})
	p.opts.KV.Set(context.Background(), "wasm:test:broken", []byte("1"), 0)
	for i := 0; i < 4; i++ {
		if w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "unless-healed")); w.Code != 200 {
			t.Fatalf("request %d: status %d", i+1, w.Code)
		}
	}
	if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "trap"}); got != 2 {
		t.Errorf("traps = %v, want 2 (then the breaker opened)", got)
	}
	if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "breaker"}); got != 2 {
		t.Errorf("breaker failures = %v", got)
	}
}

// A plugin that fails on every call starts at most RestartBurst instances
// at once and RestartRate a second after that, however many calls fail.
func TestRestartRate(t *testing.T) {
	clock := newFakeClock()
	p, logs, reg := newPlugin(t, guest(t, "testguest"), func(o *Options) {
		o.Clock = clock
		o.Instances = 2
		o.RestartRate = 1
		o.RestartBurst = 1
		o.BreakerFailures = -1
		o.QueueTimeout = 20 * time.Millisecond // waits in vain once the pool is empty
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("plugin log:\n%s", logs)
		}
	})
	started := func() float64 { return counterValue(t, reg, MetricStarted, nil) }
	idle := func() int { return len(p.cur.Load().pool.idle) }
	if got := started(); got != 2 {
		t.Fatalf("started at load = %v", got)
	}
	trap := func() int { return serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "trap")).Code }
	// The first failure's replacement takes the burst's one token.
	trap()
	waitFor(t, "the first replacement", func() bool { return started() == 3 && idle() == 2 })
	// Then the clock stands still: no more tokens, however many calls
	// fail. Two calls fail and empty the pool; the rest find no instance.
	for i := 0; i < 10; i++ {
		if code := trap(); code != 500 {
			t.Fatalf("failure %d: status %d", i+1, code)
		}
	}
	if got := started(); got != 3 {
		t.Fatalf("instances started while no token was left: %v, want 3", got)
	}
	if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "trap"}); got != 3 {
		t.Errorf("traps = %v, want 3 (the others found no instance)", got)
	}
	if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "busy"}); got != 8 {
		t.Errorf("busy = %v, want 8", got)
	}
	// A token a second refills the pool, one instance at a time.
	clock.Advance(time.Second)
	waitFor(t, "a replacement a second later", func() bool { return started() == 4 && idle() == 1 })
	clock.Advance(time.Second)
	waitFor(t, "the pool full again", func() bool { return started() == 5 && idle() == 2 })
	clock.Advance(10 * time.Second)
	if got := started(); got != 5 {
		t.Errorf("started past the pool's size: %v", got)
	}
	if w := serve(p, "GET", "/fhir/R4/Patient/p1"); w.Code != 200 {
		t.Errorf("after the refill: status %d", w.Code)
	}
}

// The plugin's log lines, the guest's and the host's, are bounded by a
// token bucket; what is dropped is counted and logged as one record.
func TestLogRate(t *testing.T) {
	clock := newFakeClock()
	p, logs, reg := newPlugin(t, guest(t, "testguest"), func(o *Options) {
		o.Clock = clock
		o.LogRate = 10
		o.LogBurst = 20
	})
	type counts struct{ spam, summaries, dropped int }
	count := func() counts {
		var c counts
		for _, rec := range logRecords(t, logs.String()) {
			msg, _ := rec["msg"].(string)
			switch {
			case strings.HasPrefix(msg, "spam"):
				c.spam++
			case strings.HasPrefix(msg, "wasm plugin log lines dropped"):
				c.summaries++
				c.dropped += int(rec["dropped"].(float64))
			}
		}
		return c
	}
	if w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "spam")); w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
	if c := count(); c.spam != 20 || c.summaries != 0 {
		t.Fatalf("after 100 lines: %+v, want the burst of 20 and no summary yet", c)
	}
	if got := counterValue(t, reg, MetricLogDropped, nil); got != 80 {
		t.Errorf("dropped = %v", got)
	}
	// A second later the count is logged.
	clock.Advance(time.Second)
	if c := count(); c.summaries != 1 || c.dropped != 80 {
		t.Fatalf("a second later: %+v", c)
	}
	// Ten tokens came back in that second.
	serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "spam"))
	clock.Advance(time.Second)
	if c := count(); c.spam != 30 || c.summaries != 2 || c.dropped != 170 {
		t.Fatalf("after the second request: %+v, want 30 lines and 170 dropped", c)
	}
}

// The pool's memory cap: instances × memory_limit must fit in
// pool_memory_limit, in the gateway's config and in Options; the default
// pool size stays within it.
func TestPoolMemoryCap(t *testing.T) {
	path := guest(t, "testguest")
	parse := func(keys string) error {
		_, err := gateway.Parse("test.yaml", []byte(`
plugins:
  policy:
    type: wasm
    path: `+path+`
`+keys+`
routes:
  - path: /x
    upstream: http://127.0.0.1:9
    plugins: [policy]
`), nil)
		return err
	}
	for _, tc := range []struct {
		keys string
		want []string
	}{
		{"    instances: 9\n    memory_limit: 64MiB\n    pool_memory_limit: 512MiB\n",
			[]string{"plugins.policy.pool_memory_limit: 9 instances × memory_limit 64MiB = 576MiB exceeds pool_memory_limit 512MiB"}},
		{"    memory_limit: 1GiB\n", []string{"plugins.policy.pool_memory_limit: memory_limit 1GiB exceeds pool_memory_limit 512MiB"}},
		{"    pool_memory_limit: 0\n", []string{"plugins.policy.pool_memory_limit: must be positive"}},
		{"    wall_timeout: 5ms\n", []string{"plugins.policy.wall_timeout: must be at least timeout (10ms)"}},
		{"    restart_rate: 0\n    log_rate: -1\n    log_burst: 0\n    breaker_failures: -1\n    breaker_open_for: 0s\n    max_reply_body: 0\n",
			[]string{"restart_rate: must be positive", "log_rate: must be positive", "log_burst: must be at least 1",
				"breaker_failures: must not be negative", "breaker_open_for: must be positive", "max_reply_body: must be positive"}},
	} {
		err := parse(tc.keys)
		for _, want := range tc.want {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%q: error %v, want %q", tc.keys, err, want)
			}
		}
	}
	if err := parse("    instances: 8\n    memory_limit: 64MiB\n"); err != nil {
		t.Errorf("a pool that fits: %v", err)
	}
	if _, err := New(context.Background(), Options{Name: "cap", Path: path, Instances: 3, MemoryLimit: 16 << 20,
		PoolMemoryLimit: 40 << 20, CacheDir: cacheDir, Logger: discard}); err == nil || !strings.Contains(err.Error(), "3 instances × memory_limit 16MiB = 48MiB exceeds pool_memory_limit 40MiB") {
		t.Errorf("New over the cap: %v", err)
	}
	// The default pool size is cut to what the cap holds.
	p, _, _ := newPlugin(t, path, func(o *Options) {
		o.Instances = 0
		o.MemoryLimit = 16 << 20
		o.PoolMemoryLimit = 16 << 20
	})
	if p.opts.Instances != 1 {
		t.Errorf("default instances under a cap of one instance = %d", p.opts.Instances)
	}
}

// The budget is charged on the call's CPU time: a call that waits longer
// than its budget (here in a host call that blocks; on a busy machine,
// descheduled) succeeds, while its wall-clock backstop still stops one that
// waits too long, and a guest that loops is stopped at its CPU budget.
func TestCPUDeadline(t *testing.T) {
	var block atomic.Int64 // how long the now host function blocks
	var blocked atomic.Int32
	sleepyNow := func() time.Time {
		if d := time.Duration(block.Load()); d > 0 {
			blocked.Add(1)
			time.Sleep(d)
		}
		return time.Now()
	}
	t.Run("waiting is not charged", func(t *testing.T) {
		p, logs, _ := newPlugin(t, guest(t, "testguest"), func(o *Options) {
			o.Timeout = 10 * time.Millisecond
			o.WallTimeout = time.Minute
			o.Now = sleepyNow
		})
		block.Store(int64(50 * time.Millisecond)) // five times the budget
		defer block.Store(0)
		if w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "now")); w.Code != 200 || blocked.Load() != 1 {
			t.Fatalf("a call that waited 50ms on a 10ms budget: status %d, %d waits\n%s", w.Code, blocked.Load(), logs)
		}
	})
	t.Run("the wall-clock backstop", func(t *testing.T) {
		p, logs, reg := newPlugin(t, guest(t, "testguest"), func(o *Options) {
			o.Timeout = 10 * time.Millisecond
			o.WallTimeout = 50 * time.Millisecond
			o.Now = sleepyNow
		})
		block.Store(int64(300 * time.Millisecond))
		defer block.Store(0)
		if w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "now")); w.Code != 500 {
			t.Fatalf("a call blocked past the backstop: status %d", w.Code)
		}
		if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "deadline"}); got != 1 {
			t.Errorf("deadline failures = %v", got)
		}
		if !strings.Contains(logs.String(), "over the wall-clock backstop of 50ms") {
			t.Errorf("log lacks the backstop:\n%s", logs)
		}
	})
	t.Run("an endless loop", func(t *testing.T) {
		p, logs, reg := newPlugin(t, guest(t, "testguest"), func(o *Options) {
			o.Timeout = 20 * time.Millisecond
			o.WallTimeout = time.Minute // the CPU budget stops it, not the backstop
		})
		if w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "loop")); w.Code != 500 {
			t.Fatalf("loop: status %d", w.Code)
		}
		if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "deadline"}); got != 1 {
			t.Errorf("deadline failures = %v", got)
		}
		if !strings.Contains(logs.String(), "over the CPU budget of 20ms") {
			t.Errorf("log lacks the CPU budget:\n%s", logs)
		}
	})
}

// A reply over max_reply_body fails the call (the failure mode), rather
// than being refused to a guest that then lets the request through.
func TestReplyTooLarge(t *testing.T) {
	p, logs, reg := newPlugin(t, guest(t, "testguest"), func(o *Options) { o.MaxReplyBody = 1 << 20 })
	w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "huge"))
	if w.Code != 500 || strings.Contains(w.Body.String(), `"Patient"`) {
		t.Fatalf("status %d: %.200s", w.Code, w.Body)
	}
	if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "too_large"}); got != 1 {
		t.Errorf("too_large failures = %v\n%s", got, logs)
	}
	if !strings.Contains(logs.String(), "reply body of 5242880 bytes exceeds the limit of 1048576") {
		t.Errorf("log lacks the reason:\n%s", logs)
	}
	var rec map[string]any
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"kind":"too_large"`) {
			json.Unmarshal([]byte(line), &rec)
		}
	}
	if rec["msg"] != "wasm plugin failed" {
		t.Errorf("failure record: %v", rec)
	}
}
