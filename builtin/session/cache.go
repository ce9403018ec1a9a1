package session

import (
	"sync"
	"time"
)

// localCache keeps recently validated sessions in process so that most
// requests cost no Redis round trip. Revocations on any instance reach it
// over Redis pub/sub (forget, forgetUser); an entry also ages out after
// ttl, which bounds staleness when a message is lost.
type localCache struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	entries map[string]cacheEntry
	byUser  map[string]map[string]struct{}
}

type cacheEntry struct {
	rec     Record
	fetched time.Time
}

func newLocalCache(ttl time.Duration, max int) *localCache {
	return &localCache{ttl: ttl, max: max, entries: map[string]cacheEntry{}, byUser: map[string]map[string]struct{}{}}
}

// get returns the cached session when it is fresh and, by what the cache
// knows, still live. stale returns it even when it is older than ttl
// (used while Redis is down, when configured).
func (c *localCache) get(id string, now time.Time, stale bool) (*Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok || !e.rec.Live(now) || !stale && now.Sub(e.fetched) >= c.ttl {
		return nil, false
	}
	r := e.rec
	return &r, true
}

func (c *localCache) put(r *Record, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		// Drop the entries that aged out; if none did, drop an arbitrary
		// tenth: the cache only saves round trips.
		n := 0
		for id, e := range c.entries {
			if now.Sub(e.fetched) >= c.ttl || n < c.max/10 {
				c.removeLocked(id)
				n++
			}
		}
	}
	c.entries[r.ID] = cacheEntry{rec: *r, fetched: now}
	ids := c.byUser[r.UserID]
	if ids == nil {
		ids = map[string]struct{}{}
		c.byUser[r.UserID] = ids
	}
	ids[r.ID] = struct{}{}
}

func (c *localCache) removeLocked(id string) {
	e, ok := c.entries[id]
	if !ok {
		return
	}
	delete(c.entries, id)
	if ids := c.byUser[e.rec.UserID]; ids != nil {
		delete(ids, id)
		if len(ids) == 0 {
			delete(c.byUser, e.rec.UserID)
		}
	}
}

func (c *localCache) forget(id string) {
	c.mu.Lock()
	c.removeLocked(id)
	c.mu.Unlock()
}

// forgetUser drops every cached session of user except keep.
func (c *localCache) forgetUser(user, keep string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.byUser[user] {
		if id != keep {
			c.removeLocked(id)
		}
	}
}

func (c *localCache) clear() {
	c.mu.Lock()
	c.entries, c.byUser = map[string]cacheEntry{}, map[string]map[string]struct{}{}
	c.mu.Unlock()
}

func (c *localCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
