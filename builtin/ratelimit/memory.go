package ratelimit

import (
	"context"
	"hash/maphash"
	"sort"
	"sync"
	"time"
)

// shards splits in-process maps to keep lock contention low.
const shards = 32

var seed = maphash.MakeSeed()

func shardOf(key string) int { return int(maphash.String(seed, key) % shards) }

// bounded is a sharded map holding at most max entries. When a shard is
// full, an insert evicts the entry with the smallest rank among a few
// sampled ones (Go's map iteration starts at a random place), as Redis's
// approximated LRU does.
type bounded[V any] struct {
	perShard int
	rank     func(*V) int64 // lower goes first; typically expiry or last use
	shard    [shards]struct {
		sync.Mutex
		m map[string]*V
	}
}

func newBounded[V any](max int, rank func(*V) int64) *bounded[V] {
	b := &bounded[V]{perShard: (max + shards - 1) / shards, rank: rank}
	for i := range b.shard {
		b.shard[i].m = map[string]*V{}
	}
	return b
}

// with runs fn on the entry for key under its shard's lock; create makes a
// missing entry (or nil to not create one).
func (b *bounded[V]) with(key string, create func() *V, fn func(v *V) (remove bool)) {
	s := &b.shard[shardOf(key)]
	s.Lock()
	defer s.Unlock()
	v := s.m[key]
	if v == nil {
		if create == nil {
			return
		}
		if len(s.m) >= b.perShard {
			b.evictLocked(s.m)
		}
		v = create()
		s.m[key] = v
	}
	if fn(v) {
		delete(s.m, key)
	}
}

func (b *bounded[V]) evictLocked(m map[string]*V) {
	const samples = 5
	var victim string
	var low int64
	n := 0
	for k, v := range m {
		if r := b.rank(v); n == 0 || r < low {
			victim, low = k, r
		}
		if n++; n == samples {
			break
		}
	}
	delete(m, victim)
}

// each calls fn for every entry, shard by shard, under the shard's lock.
func (b *bounded[V]) each(fn func(key string, v *V) (remove bool)) {
	for i := range b.shard {
		s := &b.shard[i]
		s.Lock()
		for k, v := range s.m {
			if fn(k, v) {
				delete(s.m, k)
			}
		}
		s.Unlock()
	}
}

func (b *bounded[V]) delete(key string) bool {
	s := &b.shard[shardOf(key)]
	s.Lock()
	defer s.Unlock()
	_, ok := s.m[key]
	delete(s.m, key)
	return ok
}

func (b *bounded[V]) len() int {
	n := 0
	for i := range b.shard {
		s := &b.shard[i]
		s.Lock()
		n += len(s.m)
		s.Unlock()
	}
	return n
}

func (b *bounded[V]) reset() {
	b.each(func(string, *V) bool { return true })
}

// bucket is one sub-window: its index (time / sub-window size) and count.
type bucket struct{ idx, n int64 }

// counters are the buckets of one (client, scope).
type counters struct {
	w, b    []bucket
	expires int64 // unix ms, like the Redis key's TTL
}

// offender is the blocking state of one client.
type offender struct {
	blockedUntil int64 // unix ms
	rejections   int64
	rejUntil     int64
	offences     int64
	offUntil     int64
}

func (o *offender) expires() int64 { return max(o.blockedUntil, o.rejUntil, o.offUntil) }

// memStore is the in-process store: the same algorithm as decide.lua, on
// bounded maps.
type memStore struct {
	p        params
	now      func() time.Time
	counters *bounded[counters]
	clients  *bounded[offender]
}

func newMemStore(p params, maxKeys int, now func() time.Time) *memStore {
	return &memStore{
		p: p, now: now,
		counters: newBounded(maxKeys, func(c *counters) int64 { return c.expires }),
		clients:  newBounded(maxKeys, func(o *offender) int64 { return o.expires() }),
	}
}

func (s *memStore) reset() {
	s.counters.reset()
	s.clients.reset()
}

// window is one sliding window being evaluated.
type window struct {
	limit, size, cur int64 // size: sub-window length in ms
	used             int64
}

// prune drops buckets that left the window and sums the others.
func (w *window) prune(bs []bucket, n int64) []bucket {
	out := bs[:0]
	for _, b := range bs {
		if b.idx >= w.cur-n {
			out = append(out, b)
			w.used += b.n
		}
	}
	return out
}

// freeAt is when enough of the oldest buckets have left for need more
// units to fit.
func (w *window) freeAt(bs []bucket, need, n, now int64) int64 {
	sort.Slice(bs, func(i, j int) bool { return bs[i].idx < bs[j].idx })
	left := w.used
	for _, b := range bs {
		left -= b.n
		if left+need <= w.limit {
			return (b.idx + n + 1) * w.size
		}
	}
	return now
}

// newestOut is when every counted request has left the window.
func newestOut(bs []bucket, size, n, now int64) int64 {
	top, found := int64(0), false
	for _, b := range bs {
		if b.n > 0 && (!found || b.idx > top) {
			top, found = b.idx, true
		}
	}
	if !found {
		return now
	}
	return (top + n + 1) * size
}

func addTo(bs []bucket, idx, n int64) []bucket {
	for i := range bs {
		if bs[i].idx == idx {
			bs[i].n += n
			return bs
		}
	}
	return append(bs, bucket{idx, n})
}

func (s *memStore) decide(_ context.Context, q *query) (Decision, error) {
	now := q.now
	if now == 0 {
		now = s.now().UnixMilli()
	}
	p := &s.p
	n := p.precision
	d := Decision{Limit: q.pol.Limit, BurstLimit: max(q.pol.Burst, 0), Source: "memory", At: time.UnixMilli(now)}

	var blockedFor int64
	s.clients.with(q.client, nil, func(o *offender) bool {
		if o.blockedUntil > now {
			blockedFor = o.blockedUntil - now
		}
		return o.expires() <= now
	})
	if blockedFor > 0 {
		ms := time.Duration(blockedFor) * time.Millisecond
		d.Result, d.Reset, d.BurstReset, d.RetryAfter = Blocked, ms, ms, ms
		return d, nil
	}

	main := window{limit: q.pol.Limit, size: q.pol.Window.Milliseconds() / n}
	main.cur = now / main.size
	burst := window{limit: q.pol.Burst, size: 1}
	if q.pol.Burst > 0 {
		burst.size = q.pol.BurstWindow.Milliseconds() / n
		burst.cur = now / burst.size
	}
	span := q.pol.Window.Milliseconds() + main.size
	if q.pol.Burst > 0 {
		span = max(span, q.pol.BurstWindow.Milliseconds()+burst.size)
	}
	var ok bool
	var retry int64
	s.counters.with(counterKey(q.client, q.scope), func() *counters { return &counters{} }, func(c *counters) bool {
		if c.expires <= now {
			c.w, c.b = c.w[:0], c.b[:0]
		}
		c.w = main.prune(c.w, n)
		if q.pol.Burst > 0 {
			c.b = burst.prune(c.b, n)
		} else {
			c.b = c.b[:0]
		}
		ok = main.used+q.cost <= main.limit && (q.pol.Burst <= 0 || burst.used+q.cost <= burst.limit)
		if !ok {
			if main.used+q.cost > main.limit {
				retry = main.freeAt(c.w, q.cost, n, now) - now
			}
			if q.pol.Burst > 0 && burst.used+q.cost > burst.limit {
				retry = max(retry, burst.freeAt(c.b, q.cost, n, now)-now)
			}
		}
		add := int64(0)
		if ok {
			add = q.cost
		} else if p.countRejected {
			add = q.cost + q.extraCost
		}
		if add > 0 {
			c.w = addTo(c.w, main.cur, add)
			main.used += add
			if q.pol.Burst > 0 {
				c.b = addTo(c.b, burst.cur, add)
				burst.used += add
			}
			c.expires = now + span
		}
		d.Remaining = max(main.limit-main.used, 0)
		d.Reset = time.Duration(newestOut(c.w, main.size, n, now)-now) * time.Millisecond
		if q.pol.Burst > 0 {
			d.BurstRemaining = max(burst.limit-burst.used, 0)
			d.BurstReset = time.Duration(newestOut(c.b, burst.size, n, now)-now) * time.Millisecond
		}
		return len(c.w) == 0 && len(c.b) == 0
	})
	if ok {
		d.Result = Allowed
	} else {
		d.Result = Limited
		d.RetryAfter = time.Duration(retry) * time.Millisecond
	}

	rejections := q.extra
	if !ok {
		rejections++
	}
	bp := &p.block
	if bp.After > 0 && rejections > 0 {
		s.clients.with(q.client, func() *offender { return &offender{} }, func(o *offender) bool {
			if o.rejUntil <= now {
				o.rejections = 0
			}
			if o.offUntil <= now {
				o.offences = 0
			}
			if o.rejections == 0 {
				o.rejUntil = now + bp.Within.Milliseconds()
			}
			o.rejections += rejections
			d.strikes = o.rejections
			if o.rejections > bp.After {
				d.strikes = 0
				o.offences++
				o.offUntil = now + bp.Forget.Milliseconds()
				dur := escalate(bp, o.offences)
				o.blockedUntil = now + dur.Milliseconds()
				o.rejections, o.rejUntil = 0, 0
				d.Result, d.NewBlock, d.RetryAfter = Blocked, dur, dur
			}
			return false
		})
	}
	return d, nil
}

// refund gives back cost units counted at q.now (unix ms), from the
// sub-windows they were counted in while those are still counted.
func (s *memStore) refund(_ context.Context, q *query) {
	n := s.p.precision
	undo := func(bs []bucket, size int64) {
		idx := q.now / size
		for i := range bs {
			if bs[i].idx == idx {
				bs[i].n -= min(q.cost, bs[i].n)
				return
			}
		}
	}
	s.counters.with(counterKey(q.client, q.scope), nil, func(c *counters) bool {
		undo(c.w, q.pol.Window.Milliseconds()/n)
		if q.pol.Burst > 0 {
			undo(c.b, q.pol.BurstWindow.Milliseconds()/n)
		}
		return false
	})
}

// escalate is the length of the nth block: Duration doubled for each
// earlier offence, at most Max.
func escalate(bp *BlockPolicy, offences int64) time.Duration {
	d := bp.Duration
	for i := int64(2); i <= offences && d < bp.Max; i++ {
		d *= 2
	}
	return min(d, bp.Max)
}

func (s *memStore) blocks(context.Context) ([]Block, error) {
	now := s.now().UnixMilli()
	var out []Block
	s.clients.each(func(k string, o *offender) bool {
		if o.blockedUntil > now {
			out = append(out, Block{Key: k, Until: time.UnixMilli(o.blockedUntil).UTC()})
		}
		return o.expires() <= now
	})
	return out, nil
}

func (s *memStore) unblock(_ context.Context, client string, now int64) (bool, error) {
	if now == 0 {
		now = s.now().UnixMilli()
	}
	found := false
	s.clients.with(client, nil, func(o *offender) bool {
		found = o.blockedUntil > now
		o.blockedUntil, o.rejections, o.rejUntil = 0, 0, 0
		return o.expires() <= now
	})
	return found, nil
}

// localCache remembers clients that are over a limit or blocked, so that
// their requests are answered without a store call until their retry time.
type localCache struct {
	now     func() time.Time
	over    *bounded[overEntry]
	blocked *bounded[int64] // unix ms until
}

type overEntry struct {
	until, at   int64 // unix ms
	d           Decision
	pending     int64 // rejections answered from the cache since
	pendingCost int64
	flush       int64 // pending count that sends the next request to the store
}

func newLocalCache(maxKeys int, now func() time.Time) *localCache {
	return &localCache{
		now:     now,
		over:    newBounded(maxKeys, func(e *overEntry) int64 { return e.until }),
		blocked: newBounded(maxKeys, func(u *int64) int64 { return *u }),
	}
}

// check answers q from the cache when it can. When it cannot, rejections
// it answered since the last store call are moved into q (once the entry's
// flush count is reached, or when the entry expires) so the store counts
// them towards blocking.
func (c *localCache) check(q *query) (Decision, bool) {
	now := q.now
	if now == 0 {
		now = c.now().UnixMilli()
	}
	var d Decision
	hit := false
	c.blocked.with(q.client, nil, func(until *int64) bool {
		if *until > now {
			ms := time.Duration(*until-now) * time.Millisecond
			d = Decision{Result: Blocked, Limit: q.pol.Limit, BurstLimit: max(q.pol.Burst, 0),
				Reset: ms, BurstReset: ms, RetryAfter: ms, Source: "cache"}
			hit = true
		}
		return !hit
	})
	if hit {
		return d, true
	}
	c.over.with(counterKey(q.client, q.scope), nil, func(e *overEntry) bool {
		if e.until <= now || e.pending >= e.flush {
			q.extra, q.extraCost = e.pending, e.pendingCost
			return true
		}
		e.pending++
		e.pendingCost += q.cost
		d = e.d
		elapsed := time.Duration(now-e.at) * time.Millisecond
		d.RetryAfter = time.Duration(e.until-now) * time.Millisecond
		d.Reset = max(d.Reset-elapsed, d.RetryAfter)
		d.BurstReset = max(d.BurstReset-elapsed, 0)
		d.NewBlock = 0
		d.Source = "cache"
		hit = true
		return false
	})
	return d, hit
}

func (c *localCache) put(q *query, d Decision, flush int64) {
	now := q.now
	if now == 0 {
		now = c.now().UnixMilli()
	}
	until := now + d.RetryAfter.Milliseconds()
	if until <= now {
		return
	}
	if d.Result == Blocked {
		c.blocked.with(q.client, func() *int64 { return new(int64) }, func(u *int64) bool {
			*u = until
			return false
		})
		c.over.delete(counterKey(q.client, q.scope))
		return
	}
	c.over.with(counterKey(q.client, q.scope), func() *overEntry { return &overEntry{} }, func(e *overEntry) bool {
		*e = overEntry{until: until, at: now, d: d, flush: flush}
		return false
	})
}

// forget drops everything cached about client.
func (c *localCache) forget(client string) {
	c.blocked.delete(client)
	prefix := client + "\x00"
	c.over.each(func(k string, _ *overEntry) bool {
		return len(k) >= len(prefix) && k[:len(prefix)] == prefix
	})
}

func (c *localCache) clear() {
	c.over.reset()
	c.blocked.reset()
}
