package sqlite

import (
	"sync"
	"sync/atomic"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// readCache keeps the current versions of recently read resources, up to
// a total body size. It is sound because all writes to the file go through
// this Store (the process holds the file's lock): a commit drops what it
// wrote, and a read whose result may predate a concurrent commit does not
// fill the cache (gen changed meanwhile).
type readCache struct {
	max  int64
	gen  atomic.Uint64 // bumped by every commit, before it drops keys
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

func (c *readCache) get(typ, id string) *store.Version {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.m[cacheKey(typ, id)]
}

// put stores v, read when the generation was gen.
func (c *readCache) put(gen uint64, v *store.Version) {
	n := int64(len(v.Body)) + 128
	if n > c.max/16 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen.Load() != gen {
		return
	}
	k := cacheKey(v.Type, v.ID)
	if old, ok := c.m[k]; ok {
		c.size -= int64(len(old.Body)) + 128
	}
	for c.size+n > c.max && len(c.m) > 0 {
		for k2, old := range c.m { // map order: a random victim
			delete(c.m, k2)
			c.size -= int64(len(old.Body)) + 128
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
			c.size -= int64(len(old.Body)) + 128
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
