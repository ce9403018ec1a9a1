package cache

import (
	"container/list"
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/omnigate/omnigate/builtin/backbone"
)

// tier stores entries and tag versions.
type tier interface {
	// get returns the entry under key (nil when there is none) and the
	// current versions of tags, in one round trip.
	get(ctx context.Context, key string, tags []string) (*entry, []int64, error)
	// put stores e under key for ttl.
	put(ctx context.Context, key string, e *entry, ttl time.Duration) error
	// bump increments the versions of tags: entries made before are stale.
	bump(ctx context.Context, tags []string) error
}

// redisTier keeps entries in Redis, shared by every instance.
//
// Keys: {ce:<sha256>} holds an encoded entry with a TTL of its fresh plus
// stale lifetime; {cv:<tag>} holds a tag's version, kept twice as long as
// the longest entry lifetime so that it never resets under a live entry.
// A read is one pipeline: the entry and its tags' versions.
type redisTier struct {
	m          *backbone.Manager
	opGet      *backbone.Op
	opPut      *backbone.Op
	opBump     *backbone.Op
	versionTTL time.Duration
}

func newRedisTier(m *backbone.Manager, versionTTL time.Duration) *redisTier {
	return &redisTier{m: m, opGet: m.Op("cache.get"), opPut: m.Op("cache.put"), opBump: m.Op("cache.invalidate"), versionTTL: versionTTL}
}

func (t *redisTier) entryKey(key string) string { return t.m.Key("ce:"+key, "") }
func (t *redisTier) versionKey(tag string) string {
	return t.m.Key("cv:"+backbone.Tag(tag), "")
}

func (t *redisTier) get(ctx context.Context, key string, tags []string) (*entry, []int64, error) {
	var e *entry
	versions := make([]int64, len(tags))
	err := t.m.Do(ctx, t.opGet, func(ctx context.Context, c redis.UniversalClient) error {
		var ecmd *redis.StringCmd
		vcmds := make([]*redis.StringCmd, len(tags))
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			ecmd = p.Get(ctx, t.entryKey(key))
			for i, tag := range tags {
				vcmds[i] = p.Get(ctx, t.versionKey(tag))
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for i, vc := range vcmds {
			if s, err := vc.Result(); err == nil {
				versions[i], _ = strconv.ParseInt(s, 10, 64)
			}
		}
		if b, err := ecmd.Bytes(); err == nil {
			if e, err = decodeEntry(b); err != nil {
				e = nil // a corrupt entry is a miss; the next store replaces it
			}
		}
		return nil
	})
	return e, versions, err
}

func (t *redisTier) put(ctx context.Context, key string, e *entry, ttl time.Duration) error {
	return t.m.Do(ctx, t.opPut, func(ctx context.Context, c redis.UniversalClient) error {
		return c.Set(ctx, t.entryKey(key), e.encode(), ttl).Err()
	})
}

func (t *redisTier) bump(ctx context.Context, tags []string) error {
	return t.m.Do(ctx, t.opBump, func(ctx context.Context, c redis.UniversalClient) error {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, tag := range tags {
				k := t.versionKey(tag)
				p.Incr(ctx, k)
				p.PExpire(ctx, k, t.versionTTL)
			}
			return nil
		})
		return err
	})
}

// memTier keeps entries in process: without Redis or while it is down. It
// holds at most maxBytes of entries, dropping the least recently used.
type memTier struct {
	mu         sync.Mutex
	lru        *lru
	versions   map[string]memVersion
	versionTTL time.Duration
	now        func() time.Time
}

type memVersion struct {
	v       int64
	expires time.Time
}

func newMemTier(maxBytes int64, versionTTL time.Duration, now func() time.Time, onEvict func()) *memTier {
	return &memTier{lru: newLRU(maxBytes, onEvict), versions: map[string]memVersion{}, versionTTL: versionTTL, now: now}
}

func (t *memTier) get(ctx context.Context, key string, tags []string) (*entry, []int64, error) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	versions := make([]int64, len(tags))
	for i, tag := range tags {
		if v, ok := t.versions[tag]; ok && now.Before(v.expires) {
			versions[i] = v.v
		}
	}
	e, _ := t.lru.get(key, now)
	return e, versions, nil
}

func (t *memTier) put(ctx context.Context, key string, e *entry, ttl time.Duration) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lru.put(key, e, t.now().Add(ttl))
	return nil
}

func (t *memTier) bump(ctx context.Context, tags []string) error {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.versions) > 100000 {
		for k, v := range t.versions {
			if !now.Before(v.expires) {
				delete(t.versions, k)
			}
		}
	}
	for _, tag := range tags {
		v := t.versions[tag]
		if !now.Before(v.expires) {
			v.v = 0
		}
		t.versions[tag] = memVersion{v: v.v + 1, expires: now.Add(t.versionTTL)}
	}
	return nil
}

// size returns the bytes and the number of the entries held.
func (t *memTier) size() (int64, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lru.bytes, len(t.lru.items)
}

func (t *memTier) clear() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lru.clear()
	t.versions = map[string]memVersion{}
}

// lru is a byte-bounded least-recently-used map of entries with
// expiries. It is not safe for concurrent use.
type lru struct {
	max, bytes int64
	ll         *list.List
	items      map[string]*list.Element
	onEvict    func()
}

type lruItem struct {
	key     string
	e       *entry
	expires time.Time
	size    int64
}

func newLRU(max int64, onEvict func()) *lru {
	return &lru{max: max, ll: list.New(), items: map[string]*list.Element{}, onEvict: onEvict}
}

func (l *lru) get(key string, now time.Time) (*entry, time.Time) {
	el, ok := l.items[key]
	if !ok {
		return nil, time.Time{}
	}
	it := el.Value.(*lruItem)
	if !now.Before(it.expires) {
		l.remove(el)
		return nil, time.Time{}
	}
	l.ll.MoveToFront(el)
	return it.e, it.expires
}

func (l *lru) put(key string, e *entry, expires time.Time) {
	if el, ok := l.items[key]; ok {
		l.remove(el)
	}
	size := int64(e.size() + len(key))
	if size > l.max {
		return
	}
	l.items[key] = l.ll.PushFront(&lruItem{key: key, e: e, expires: expires, size: size})
	l.bytes += size
	for l.bytes > l.max {
		l.remove(l.ll.Back())
		if l.onEvict != nil {
			l.onEvict()
		}
	}
}

func (l *lru) remove(el *list.Element) {
	it := el.Value.(*lruItem)
	l.ll.Remove(el)
	delete(l.items, it.key)
	l.bytes -= it.size
}

func (l *lru) delete(key string) {
	if el, ok := l.items[key]; ok {
		l.remove(el)
	}
}

func (l *lru) clear() {
	l.ll.Init()
	l.items = map[string]*list.Element{}
	l.bytes = 0
}

// l1 is the in-process cache in front of Redis: entries served without a
// round trip for at most ttl, dropped at once by tag when a write on this
// instance, or an invalidation broadcast from another, touches them.
type l1 struct {
	mu    sync.Mutex
	lru   *lru
	ttl   time.Duration
	byTag map[string]map[string]struct{}
	now   func() time.Time
}

func newL1(maxBytes int64, ttl time.Duration, now func() time.Time, onEvict func()) *l1 {
	return &l1{lru: newLRU(maxBytes, onEvict), ttl: ttl, byTag: map[string]map[string]struct{}{}, now: now}
}

func (c *l1) get(key string) *entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, _ := c.lru.get(key, c.now())
	return e
}

func (c *l1) put(key string, e *entry) {
	now := c.now()
	expires := now.Add(c.ttl)
	if end := e.Stored.Add(e.Fresh); end.Before(expires) {
		expires = end
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.put(key, e, expires)
	for _, t := range e.Tags {
		keys := c.byTag[t]
		if keys == nil {
			keys = map[string]struct{}{}
			c.byTag[t] = keys
		}
		keys[key] = struct{}{}
	}
}

// drop removes every entry with one of tags.
func (c *l1) drop(tags []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range tags {
		if t == tagAll {
			c.lru.clear()
			c.byTag = map[string]map[string]struct{}{}
			return
		}
		for k := range c.byTag[t] {
			c.lru.delete(k)
		}
		delete(c.byTag, t)
	}
	// Keep the tag index from growing with keys the LRU already dropped.
	if len(c.byTag) > 4*len(c.lru.items)+1024 {
		for t, keys := range c.byTag {
			for k := range keys {
				if _, ok := c.lru.items[k]; !ok {
					delete(keys, k)
				}
			}
			if len(keys) == 0 {
				delete(c.byTag, t)
			}
		}
	}
}

func (c *l1) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.bytes
}
