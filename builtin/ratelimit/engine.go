package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/omnigate/omnigate/builtin/backbone"
)

// Policy is one limit: at most Limit units of cost per Window and, when
// Burst is positive, at most Burst units per BurstWindow.
type Policy struct {
	Limit       int64
	Window      time.Duration
	Burst       int64
	BurstWindow time.Duration
}

// BlockPolicy blocks a client rejected more than After times within Within
// for Duration, doubling on each repeat offence up to Max; offences are
// forgotten after Forget without one. After 0 disables blocking.
type BlockPolicy struct {
	After    int64
	Within   time.Duration
	Duration time.Duration
	Max      time.Duration
	Forget   time.Duration
}

// Result is the outcome of a decision.
type Result int

// Results.
const (
	Allowed Result = iota
	Limited        // over a limit: 429
	Blocked        // blocked for repeated rejections: 429 without counting
)

func (r Result) String() string {
	switch r {
	case Allowed:
		return "allowed"
	case Limited:
		return "limited"
	}
	return "blocked"
}

// Decision is the answer for one request.
type Decision struct {
	Result Result
	// Limit and Remaining describe the main window after this request;
	// Reset is when the last counted request leaves it.
	Limit, Remaining int64
	Reset            time.Duration
	// BurstLimit, BurstRemaining and BurstReset do the same for the burst
	// window (all zero without one).
	BurstLimit, BurstRemaining int64
	BurstReset                 time.Duration
	// RetryAfter is when a rejected request could succeed (or the block
	// ends).
	RetryAfter time.Duration
	// NewBlock is the length of a block this decision started.
	NewBlock time.Duration
	// Source is where the decision was made: redis, memory or cache (the
	// local cache of over-limit and blocked clients).
	Source string
	// At is the time the decision was made by the store's clock (Redis
	// TIME, or the engine's clock in memory): what Refund needs. Zero for
	// answers from the local cache, which count nothing.
	At time.Time

	strikes int64 // the client's rejections counted towards a block
}

// Block is a blocked client.
type Block struct {
	Key   string    `json:"key"`
	Until time.Time `json:"until"`
}

// query is one decision to make. extra and extraCost carry rejections
// answered from the local cache since the last store call.
type query struct {
	client, scope    string
	pol              Policy
	cost             int64
	extra, extraCost int64
	now              int64 // unix ms; 0: the store's clock
}

// store is one implementation of the limiter's atomic operations.
type store interface {
	decide(ctx context.Context, q *query) (Decision, error)
	blocks(ctx context.Context) ([]Block, error)
	unblock(ctx context.Context, client string, now int64) (bool, error)
}

// params are what both stores need besides the query.
type params struct {
	precision     int64
	countRejected bool
	block         BlockPolicy
}

// EngineOptions configure an Engine. Every field has a default.
type EngineOptions struct {
	// Name namespaces the engine's Redis keys and channels. Default
	// "ratelimit".
	Name string
	// Precision is the number of sub-windows per window (see the package
	// doc). Default 10.
	Precision int
	// CountRejected counts rejected requests against the window. Default
	// false.
	CountRejected bool
	// Block is the automatic blocking policy. Default: none.
	Block BlockPolicy
	// OnRedisDown is memory (default), deny or allow.
	OnRedisDown string
	// LocalCache answers over-limit and blocked clients without a Redis
	// round trip until their retry time. Default false.
	LocalCache bool
	// MaxKeys bounds the memory store and the local cache. Default 100000.
	MaxKeys int
	// Clock replaces time.Now and Redis TIME, for tests. Default nil.
	Clock func() time.Time
}

// ErrRedisDown is returned by Decide when Redis is down and the engine's
// OnRedisDown is deny or allow: the caller applies that policy.
var ErrRedisDown = errors.New("rate limit state unavailable: redis is down")

// Engine makes rate-limit decisions on the Redis backbone, or in memory
// without Redis or while it is down. Other builtins may use one directly
// (for example to throttle failed logins). It is safe for concurrent use.
type Engine struct {
	opts  EngineOptions
	m     *backbone.Manager
	redis *redisStore // nil without Redis
	mem   *memStore
	cache *localCache // nil when off
	p     params

	unsub, unwatch func()
	closeOnce      sync.Once
	failures       atomic.Int64 // Redis errors answered from memory while up
}

// NewEngine builds an engine on m (which may be a manager without Redis).
func NewEngine(ctx context.Context, m *backbone.Manager, opts EngineOptions) (*Engine, error) {
	if opts.Name == "" {
		opts.Name = "ratelimit"
	}
	if opts.Precision == 0 {
		opts.Precision = 10
	}
	if opts.OnRedisDown == "" {
		opts.OnRedisDown = DownMemory
	}
	if opts.MaxKeys == 0 {
		opts.MaxKeys = 100000
	}
	if opts.Precision < 1 || opts.MaxKeys < 1 {
		return nil, fmt.Errorf("ratelimit engine: precision and max keys must be positive")
	}
	e := &Engine{
		opts: opts,
		m:    m,
		p:    params{precision: int64(opts.Precision), countRejected: opts.CountRejected, block: opts.Block},
	}
	now := time.Now
	if opts.Clock != nil {
		now = opts.Clock
	}
	e.mem = newMemStore(e.p, opts.MaxKeys, now)
	if opts.LocalCache {
		e.cache = newLocalCache(opts.MaxKeys, now)
	}
	if m != nil && m.Enabled() {
		e.redis = newRedisStore(ctx, m, opts.Name, e.p)
		// An unblock on any instance clears the local caches of all.
		e.unsub = m.Subscribe(e.channel(), func(client string) {
			if e.cache != nil {
				e.cache.forget(client)
			}
		})
		e.unwatch = m.OnChange(func(up bool) {
			if e.cache != nil {
				e.cache.clear()
			}
			if up {
				// The memory state of the outage is not carried over.
				e.mem.reset()
			}
		})
	}
	return e, nil
}

func (e *Engine) channel() string { return "rl:" + e.opts.Name + ":unblock" }

// Redis reports whether decisions are currently made on Redis.
func (e *Engine) Redis() bool { return e.redis != nil && e.m.Up() }

// Decide counts cost units for client in scope under pol. While Redis is
// up the decision is made there; without Redis it is made in memory; while
// Redis is down it is made in memory with pol's limits divided by the
// number of live instances last seen (OnRedisDown memory), or ErrRedisDown
// is returned (deny, allow).
func (e *Engine) Decide(ctx context.Context, client, scope string, pol Policy, cost int64) (Decision, error) {
	q := query{client: client, scope: scope, pol: pol, cost: cost}
	if e.opts.Clock != nil {
		q.now = e.opts.Clock().UnixMilli()
	}
	if e.cache != nil {
		if d, ok := e.cache.check(&q); ok {
			return d, nil
		}
	}
	if e.redis != nil {
		if e.m.Up() {
			d, err := e.redis.decide(ctx, &q)
			if err == nil {
				e.remember(&q, d)
				return d, nil
			}
			if ctx.Err() != nil {
				return Decision{}, ctx.Err()
			}
		}
		if e.m.Up() {
			// Redis answered with an error (not an outage): decide this
			// request in memory rather than fail it.
			e.failures.Add(1)
		} else {
			switch e.opts.OnRedisDown {
			case DownDeny, DownAllow:
				return Decision{}, ErrRedisDown
			}
			q.pol = divide(pol, e.m.Instances())
		}
	}
	d, err := e.mem.decide(ctx, &q)
	if err == nil {
		e.remember(&q, d)
	}
	return d, err
}

// Refund gives back cost units that an allowed decision d of client in
// scope under pol counted, as if the request had not been made: for
// reservations, such as a login attempt counted before its password is
// checked and given back when it succeeds. Units are taken from the
// sub-window they were counted in, and only while that sub-window is
// still in the window. It goes to the store that made the decision.
func (e *Engine) Refund(ctx context.Context, client, scope string, pol Policy, cost int64, d Decision) error {
	if d.Result != Allowed || d.At.IsZero() || cost <= 0 {
		return nil
	}
	q := query{client: client, scope: scope, pol: pol, cost: cost, now: d.At.UnixMilli()}
	var err error
	if e.redis != nil && e.m.Up() && d.Source == "redis" {
		if err = e.redis.refund(ctx, &q); err != nil {
			err = fmt.Errorf("refund in redis: %w", err)
		}
	}
	if d.Source == "memory" {
		e.mem.refund(ctx, &q)
	}
	return err
}

// remember puts a rejected client in the local cache, to be answered
// from there until its retry time. The cache goes back to the store with
// the rejections it answered when one more would start a block (so a block
// starts on the same request as without the cache, on one instance), or
// every 16 rejections when rejected requests count against the window.
func (e *Engine) remember(q *query, d Decision) {
	if e.cache == nil || d.Result == Allowed {
		return
	}
	flush := int64(math.MaxInt64)
	if b := e.p.block.After; b > 0 {
		flush = max(1, b-d.strikes)
	} else if e.p.countRejected {
		flush = 16
	}
	e.cache.put(q, d, flush)
}

// divide splits a fleet-wide policy among n instances (rounding up, at
// least 1 unit).
func divide(p Policy, n int) Policy {
	if n <= 1 {
		return p
	}
	d := func(v int64) int64 {
		if v <= 0 {
			return v
		}
		return max(1, (v+int64(n)-1)/int64(n))
	}
	p.Limit, p.Burst = d(p.Limit), d(p.Burst)
	return p
}

// Blocks lists the blocked clients, from Redis when it is up.
func (e *Engine) Blocks(ctx context.Context) ([]Block, error) {
	var bs []Block
	var err error
	if e.Redis() {
		bs, err = e.redis.blocks(ctx)
	} else {
		bs, err = e.mem.blocks(ctx)
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].Key < bs[j].Key })
	return bs, err
}

// Unblock lifts the block of client (and forgets its recent rejections)
// on every instance. It reports whether the client was blocked.
func (e *Engine) Unblock(ctx context.Context, client string) (bool, error) {
	var now int64
	if e.opts.Clock != nil {
		now = e.opts.Clock().UnixMilli()
	}
	found, err := e.mem.unblock(ctx, client, now)
	if e.cache != nil {
		e.cache.forget(client)
	}
	if e.Redis() {
		inRedis, rerr := e.redis.unblock(ctx, client, now)
		if rerr != nil {
			return found, fmt.Errorf("unblock in redis: %w", rerr)
		}
		found = found || inRedis
		if perr := e.m.Publish(ctx, nil, e.channel(), client); perr != nil {
			return found, fmt.Errorf("announce unblock: %w", perr)
		}
	}
	return found, err
}

// Close stops the engine's subscriptions.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		if e.unsub != nil {
			e.unsub()
		}
		if e.unwatch != nil {
			e.unwatch()
		}
	})
	return nil
}

// What the limiter does while Redis is down.
const (
	DownMemory = "memory"
	DownDeny   = "deny"
	DownAllow  = "allow"
)

// counterKey joins client and scope for in-process maps.
func counterKey(client, scope string) string {
	var b strings.Builder
	b.Grow(len(client) + len(scope) + 1)
	b.WriteString(client)
	b.WriteByte(0)
	b.WriteString(scope)
	return b.String()
}
