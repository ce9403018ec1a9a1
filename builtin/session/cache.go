package session

import (
	"sync"
	"time"
)

// localCache keeps recently validated sessions in process so that most
// requests cost no Redis round trip. Revocations on any instance reach it
// over Redis pub/sub (forget, forgetUser); an entry is used without asking
// the store for ttl after it was fetched, which bounds staleness when a
// message is lost.
//
// Entries are kept past ttl, until the session ends by what the cache
// last knew of it (idle or absolute timeout), so that while Redis is down
// the sessions this instance validated can still be checked (see
// OutageCached). When the cache is full, ended sessions go first, then
// the ones closest to their end; a put also drops up to two ended ones.
// No operation scans the cache.
type localCache struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	entries map[string]*entry
	byUser  map[string]map[string]*entry
	ends    endHeap
}

func newLocalCache(ttl time.Duration, max int) *localCache {
	c := &localCache{ttl: ttl, max: max}
	c.reset()
	return c
}

func (c *localCache) reset() {
	c.entries, c.byUser, c.ends = map[string]*entry{}, map[string]map[string]*entry{}, nil
}

// get returns the cached session when it is fresh (fetched less than ttl
// ago) and, by what the cache knows, still live. stale returns it even
// when it is older than ttl (used while Redis is down).
func (c *localCache) get(id string, now time.Time, stale bool) (*Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok {
		return nil, false
	}
	if !e.rec.Live(now) {
		c.remove(e)
		return nil, false
	}
	if !stale && now.Sub(e.fetched) >= c.ttl {
		return nil, false
	}
	r := e.rec
	return &r, true
}

// put caches r as fetched from the store at now.
func (c *localCache) put(r *Record, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[r.ID]; e != nil {
		e.rec, e.fetched = *r, now
		c.ends.changed(e)
		return
	}
	for i := 0; i < 2; i++ {
		if e := c.ends.soonest(); e != nil && !e.end.After(now) {
			c.remove(e)
		}
	}
	for len(c.entries) >= c.max && len(c.ends) > 0 {
		c.remove(c.ends.soonest())
	}
	e := &entry{rec: *r, fetched: now}
	c.entries[r.ID] = e
	ids := c.byUser[r.UserID]
	if ids == nil {
		ids = map[string]*entry{}
		c.byUser[r.UserID] = ids
	}
	ids[r.ID] = e
	c.ends.add(e)
}

func (c *localCache) remove(e *entry) {
	delete(c.entries, e.rec.ID)
	if ids := c.byUser[e.rec.UserID]; ids != nil {
		delete(ids, e.rec.ID)
		if len(ids) == 0 {
			delete(c.byUser, e.rec.UserID)
		}
	}
	c.ends.drop(e)
}

func (c *localCache) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[id]; e != nil {
		c.remove(e)
	}
}

// forgetUser drops every cached session of user except keep, and returns
// their ids.
func (c *localCache) forgetUser(user, keep string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for id, e := range c.byUser[user] {
		if id != keep {
			c.remove(e)
			ids = append(ids, id)
		}
	}
	return ids
}

func (c *localCache) clear() {
	c.mu.Lock()
	c.reset()
	c.mu.Unlock()
}

func (c *localCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
