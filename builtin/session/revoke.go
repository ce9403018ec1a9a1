package session

import (
	"sync"
	"sync/atomic"
	"time"
)

// marker is a revoke-all of one user: the user's sessions created at or
// before before are revoked, except keep ("" for none).
type marker struct {
	before time.Time
	keep   string
}

// covers reports whether m revokes r.
func (m marker) covers(r *Record) bool { return r.ID != m.keep && !r.Created.After(m.before) }

// revocations are the revoke-all markers an instance knows: those made
// here (including the ones waiting for Redis to be replayed) and those
// broadcast by other instances. Every session an instance accepts, from
// Redis, memory or its local cache, is checked against them, so a
// revoke-all holds even for a session read just before it, or found in a
// cache while Redis is down.
//
// A marker is forgotten lifetime after its time, when every session it
// covers has ended by its absolute timeout; forgetting is amortized over
// additions, never a scan on the check path.
type revocations struct {
	n       atomic.Int32 // len(byUser): no lock while there is none
	mu      sync.RWMutex
	byUser  map[string]markerEntry
	pruneAt int
}

type markerEntry struct {
	marker
	until time.Time
}

func newRevocations() *revocations {
	return &revocations{byUser: map[string]markerEntry{}, pruneAt: 64}
}

// add records m for user, unless a later marker of the user is known.
func (v *revocations) add(user string, m marker, now time.Time, lifetime time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if cur, ok := v.byUser[user]; ok && cur.before.After(m.before) {
		return
	}
	v.byUser[user] = markerEntry{marker: m, until: m.before.Add(lifetime)}
	if len(v.byUser) >= v.pruneAt {
		for u, e := range v.byUser {
			if e.until.Before(now) {
				delete(v.byUser, u)
			}
		}
		v.pruneAt = 2*len(v.byUser) + 64
	}
	v.n.Store(int32(len(v.byUser)))
}

// covers reports whether a known marker revokes r.
func (v *revocations) covers(r *Record) bool {
	if v.n.Load() == 0 {
		return false
	}
	v.mu.RLock()
	m, ok := v.byUser[r.UserID]
	v.mu.RUnlock()
	return ok && m.covers(r)
}

// replace sets user's marker to m when it is still from (the marker that
// was queued, which the replay moved back to Redis's time).
func (v *revocations) replace(user string, from, m marker) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if cur, ok := v.byUser[user]; ok && cur.marker == from {
		v.byUser[user] = markerEntry{marker: m, until: cur.until}
	}
}
