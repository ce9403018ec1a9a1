package postgres

import (
	"sync"
	"sync/atomic"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// readCache keeps the current versions of recently read resources, up to a
// total body size. Other instances write to the same database, so it is
// only used while the Store listens for their commits (live): every commit
// notifies the keys it wrote (see listener), and a notification drops
// them. A read whose result may predate a commit it has not seen does not
// fill the cache (gen changed meanwhile). While the listening connection is
// down the cache is bypassed, and it is emptied when it is back.
type readCache struct {
	max  int64
	live atomic.Bool   // the listener is connected and listening
	gen  atomic.Uint64 // bumped before every drop
	mu   sync.RWMutex
	m    map[string]*store.Version
	size int64
}

func newReadCache(max int64) *readCache {
	if max <= 0 {
		return nil
	}
	return &readCache{max: max, m: map[string]*store.Version{}}
}

func cacheKey(typ, id string) string { return typ + "/" + id }

// get returns the cached version, or nil; ok is false when the cache must
// not be used (not live).
func (c *readCache) get(typ, id string) (v *store.Version, gen uint64, ok bool) {
	if !c.live.Load() {
		return nil, 0, false
	}
	gen = c.gen.Load()
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.m[cacheKey(typ, id)], gen, true
}

func entrySize(v *store.Version) int64 { return int64(len(v.Body)) + 128 }

// put stores v, read when the generation was gen.
func (c *readCache) put(gen uint64, v *store.Version) {
	n := entrySize(v)
	if n > c.max/16 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen.Load() != gen || !c.live.Load() {
		return
	}
	k := cacheKey(v.Type, v.ID)
	if old, ok := c.m[k]; ok {
		c.size -= entrySize(old)
	}
	for c.size+n > c.max && len(c.m) > 0 {
		for k2, old := range c.m { // map order: a random victim
			delete(c.m, k2)
			c.size -= entrySize(old)
			break
		}
	}
	c.m[k] = v
	c.size += n
}

// invalidate drops the resources a commit wrote.
func (c *readCache) invalidate(keys []string) {
	c.gen.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		if old, ok := c.m[k]; ok {
			delete(c.m, k)
			c.size -= entrySize(old)
		}
	}
}

// clear drops everything.
func (c *readCache) clear() {
	c.gen.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m)
	c.size = 0
}

// setLive turns the cache on (emptied first: it may have missed commits)
// or off.
func (c *readCache) setLive(on bool) {
	if !on {
		c.live.Store(false)
		c.clear()
		return
	}
	c.clear()
	c.live.Store(true)
}

// len is the number of cached resources.
func (c *readCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
