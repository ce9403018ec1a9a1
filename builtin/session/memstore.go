package session

import (
	"context"
	"slices"
	"sync"
	"time"
)

// memStore keeps sessions in process memory: without Redis, and for logins
// while Redis is down. It holds at most max sessions; past that, the
// oldest is dropped.
type memStore struct {
	mu     sync.Mutex
	now    func() time.Time
	max    int
	byID   map[string]*Record
	byUser map[string][]string // ids, oldest first
}

func newMemStore(max int, now func() time.Time) *memStore {
	return &memStore{now: now, max: max, byID: map[string]*Record{}, byUser: map[string][]string{}}
}

func (m *memStore) Create(ctx context.Context, rec *Record, absolute time.Duration, maxSessions int) ([]string, error) {
	now := m.now()
	r := *rec
	r.Created, r.LastSeen, r.Expires = now, now, now.Add(absolute)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.put(&r)
	*rec = r
	var evicted []string
	if maxSessions > 0 {
		live := m.liveIDs(r.UserID, now)
		for len(live) > maxSessions {
			evicted = append(evicted, live[0])
			m.remove(live[0])
			live = live[1:]
		}
	}
	for len(m.byID) > m.max {
		m.removeOldest()
	}
	return evicted, nil
}

// put stores r as is (used by Create and by the write-back after an outage).
func (m *memStore) put(r *Record) {
	m.byID[r.ID] = r
	ids := m.byUser[r.UserID]
	if !slices.Contains(ids, r.ID) {
		m.byUser[r.UserID] = append(ids, r.ID)
	}
}

func (m *memStore) removeOldest() {
	var oldest *Record
	for _, r := range m.byID {
		if oldest == nil || r.Created.Before(oldest.Created) {
			oldest = r
		}
	}
	if oldest != nil {
		m.remove(oldest.ID)
	}
}

func (m *memStore) remove(id string) {
	r, ok := m.byID[id]
	if !ok {
		return
	}
	delete(m.byID, id)
	ids := slices.DeleteFunc(m.byUser[r.UserID], func(s string) bool { return s == id })
	if len(ids) == 0 {
		delete(m.byUser, r.UserID)
	} else {
		m.byUser[r.UserID] = ids
	}
}

// liveIDs returns the user's live session ids, oldest first, removing ended
// ones.
func (m *memStore) liveIDs(user string, now time.Time) []string {
	var live []string
	for _, id := range slices.Clone(m.byUser[user]) {
		if r := m.byID[id]; r != nil && r.Live(now) {
			live = append(live, id)
		} else {
			m.remove(id)
		}
	}
	slices.SortStableFunc(live, func(a, b string) int { return m.byID[a].Created.Compare(m.byID[b].Created) })
	return live
}

func (m *memStore) Get(ctx context.Context, id string, touchAfter time.Duration) (*Record, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.byID[id]
	if !ok {
		return nil, ErrNotFound
	}
	if !r.Live(now) {
		m.remove(id)
		return nil, ErrNotFound
	}
	if now.Sub(r.LastSeen) >= touchAfter {
		r.LastSeen = now
	}
	c := *r
	return &c, nil
}

func (m *memStore) Delete(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.remove(id)
	return nil
}

func (m *memStore) List(ctx context.Context, user string) ([]*Record, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Record
	for _, id := range m.liveIDs(user, now) {
		c := *m.byID[id]
		out = append(out, &c)
	}
	return out, nil
}

func (m *memStore) DeleteUser(ctx context.Context, user, keep string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var removed []string
	for _, id := range slices.Clone(m.byUser[user]) {
		if id != keep {
			m.remove(id)
			removed = append(removed, id)
		}
	}
	return removed, nil
}

func (m *memStore) Count(ctx context.Context) (map[string]int, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int{}
	for id, r := range m.byID {
		if r.Live(now) {
			out[r.Role]++
		} else {
			m.remove(id)
		}
	}
	return out, nil
}

// drain removes and returns every live session (for the write-back to
// Redis when it returns).
func (m *memStore) drain() []*Record {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Record
	for _, r := range m.byID {
		if r.Live(now) {
			out = append(out, r)
		}
	}
	m.byID, m.byUser = map[string]*Record{}, map[string][]string{}
	return out
}
