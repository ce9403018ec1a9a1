package session

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"
)

// memStore keeps sessions in process memory: without Redis, and for logins
// while Redis is down. It holds at most max sessions.
//
// Sessions are ordered by when they end (idle or absolute expiry, whichever
// comes first) in a heap, so no operation scans the store: a check is a map
// lookup (plus O(log n) when it refreshes the activity time), a login
// O(log n). A login that finds the store full drops sessions that have
// ended first and, when none has, the live session closest to its end; a
// login also drops up to two ended sessions on its way, so ended sessions
// do not pile up. Times come from now (injected by tests).
type memStore struct {
	mu     sync.Mutex
	now    func() time.Time
	max    int
	seq    uint64
	byID   map[string]*entry
	byUser map[string]map[string]*entry
	byRole map[string]int // sessions held by role (live or not yet dropped)
	ends   endHeap
}

// pruneBatch is how many ended sessions Count drops per hold of the lock.
const pruneBatch = 256

func newMemStore(max int, now func() time.Time) *memStore {
	m := &memStore{now: now, max: max}
	m.reset()
	return m
}

func (m *memStore) reset() {
	m.byID, m.byUser, m.byRole, m.ends = map[string]*entry{}, map[string]map[string]*entry{}, map[string]int{}, nil
}

func (m *memStore) Create(ctx context.Context, rec *Record, absolute time.Duration, maxSessions int) ([]string, error) {
	now := m.now()
	r := *rec
	r.Created, r.LastSeen, r.Expires = now, now, now.Add(absolute)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropEnded(now, 2)
	var evicted []string
	if maxSessions > 0 {
		live := m.liveEntries(r.UserID, now)
		for ; len(live) >= maxSessions; live = live[1:] {
			evicted = append(evicted, live[0].rec.ID)
			m.remove(live[0])
		}
	}
	m.makeRoom()
	m.put(&r)
	*rec = r
	return evicted, nil
}

// restore puts back a record as it is (a write-back to Redis that failed).
func (m *memStore) restore(r *Record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.makeRoom()
	m.put(r)
}

// put stores a copy of r, replacing a session with the same id.
func (m *memStore) put(r *Record) {
	if old := m.byID[r.ID]; old != nil {
		m.remove(old)
	}
	m.seq++
	e := &entry{rec: *r, seq: m.seq}
	m.byID[r.ID] = e
	ids := m.byUser[r.UserID]
	if ids == nil {
		ids = map[string]*entry{}
		m.byUser[r.UserID] = ids
	}
	ids[r.ID] = e
	m.byRole[r.Role]++
	m.ends.add(e)
}

func (m *memStore) remove(e *entry) {
	delete(m.byID, e.rec.ID)
	if ids := m.byUser[e.rec.UserID]; ids != nil {
		delete(ids, e.rec.ID)
		if len(ids) == 0 {
			delete(m.byUser, e.rec.UserID)
		}
	}
	if m.byRole[e.rec.Role]--; m.byRole[e.rec.Role] <= 0 {
		delete(m.byRole, e.rec.Role)
	}
	m.ends.drop(e)
}

// dropEnded removes up to limit sessions that ended at now, soonest
// first, and returns how many it removed.
func (m *memStore) dropEnded(now time.Time, limit int) int {
	n := 0
	for ; n < limit; n++ {
		e := m.ends.soonest()
		if e == nil || e.end.After(now) {
			break
		}
		m.remove(e)
	}
	return n
}

// makeRoom removes sessions until one more fits: ended ones first (they
// end soonest), then the live ones closest to their end.
func (m *memStore) makeRoom() {
	for len(m.byID) >= m.max && len(m.ends) > 0 {
		m.remove(m.ends.soonest())
	}
}

// liveEntries returns the user's live sessions, oldest first, removing
// ended ones.
func (m *memStore) liveEntries(user string, now time.Time) []*entry {
	var live []*entry
	for _, e := range m.byUser[user] {
		if e.rec.Live(now) {
			live = append(live, e)
		} else {
			m.remove(e)
		}
	}
	slices.SortFunc(live, func(a, b *entry) int {
		return cmp.Or(a.rec.Created.Compare(b.rec.Created), cmp.Compare(a.seq, b.seq))
	})
	return live
}

func (m *memStore) Get(ctx context.Context, id string, touchAfter time.Duration) (*Record, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.byID[id]
	if !ok {
		return nil, ErrNotFound
	}
	if !e.rec.Live(now) {
		m.remove(e)
		return nil, ErrNotFound
	}
	if now.Sub(e.rec.LastSeen) >= touchAfter {
		e.rec.LastSeen = now
		m.ends.changed(e)
	}
	c := e.rec
	return &c, nil
}

func (m *memStore) Delete(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.byID[id]; e != nil {
		m.remove(e)
	}
	return nil
}

func (m *memStore) List(ctx context.Context, user string) ([]*Record, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Record
	for _, e := range m.liveEntries(user, now) {
		c := e.rec
		out = append(out, &c)
	}
	return out, nil
}

func (m *memStore) DeleteUser(ctx context.Context, user, keep string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var removed []string
	for id, e := range m.byUser[user] {
		if id != keep {
			m.remove(e)
			removed = append(removed, id)
		}
	}
	return removed, nil
}

// Count drops the ended sessions, pruneBatch at a time so that checks are
// not held up, and returns the live ones by role.
func (m *memStore) Count(ctx context.Context) (map[string]int, error) {
	now := m.now()
	for {
		m.mu.Lock()
		if m.dropEnded(now, pruneBatch) < pruneBatch {
			out := make(map[string]int, len(m.byRole))
			for role, n := range m.byRole {
				out[role] = n
			}
			m.mu.Unlock()
			return out, nil
		}
		m.mu.Unlock()
	}
}

// len returns the number of sessions held, ended ones not yet dropped
// included.
func (m *memStore) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byID)
}

// drain removes and returns every live session (for the write-back to
// Redis when it returns). The store is emptied in O(1) under the lock.
func (m *memStore) drain() []*Record {
	now := m.now()
	m.mu.Lock()
	all := m.byID
	m.reset()
	m.mu.Unlock()
	var out []*Record
	for _, e := range all {
		if e.rec.Live(now) {
			r := e.rec
			out = append(out, &r)
		}
	}
	return out
}
