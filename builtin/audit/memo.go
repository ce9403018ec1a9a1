package audit

import (
	"sync"
)

// memoEntries bounds each generation of a compartmentMemo: at most twice
// this many resource versions are remembered (a few MiB).
const memoEntries = 32 << 10

// compartmentMemo remembers the patients whose compartments hold a
// resource version, so that reading the same version again (a cached
// read, a popular record) does not decode it again. Keys name a version
// (type, id and the response's ETag), whose content never changes, so
// entries never go stale; they are forgotten two generations after their
// last use. It is safe for concurrent use.
type compartmentMemo struct {
	mu        sync.RWMutex
	cur, prev map[string][]string
	max       int
}

func newCompartmentMemo(max int) *compartmentMemo {
	return &compartmentMemo{cur: map[string][]string{}, prev: map[string][]string{}, max: max}
}

// memoKey is the key of a resource version, "" when the version is not
// known (no ETag): such responses are not remembered.
func memoKey(typ, id, etag string) string {
	if typ == "" || id == "" || etag == "" {
		return ""
	}
	return typ + "/" + id + "\x00" + etag
}

// get returns the patients remembered for key.
func (m *compartmentMemo) get(key string) ([]string, bool) {
	m.mu.RLock()
	ids, ok := m.cur[key]
	if ok {
		m.mu.RUnlock()
		return ids, true
	}
	ids, ok = m.prev[key]
	m.mu.RUnlock()
	if ok {
		m.put(key, ids) // keep it in the current generation
	}
	return ids, ok
}

// put remembers ids (not to be changed afterwards) for key.
func (m *compartmentMemo) put(key string, ids []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.cur[key]; ok {
		return
	}
	if len(m.cur) >= m.max {
		m.prev, m.cur = m.cur, make(map[string][]string, len(m.cur))
	}
	m.cur[key] = ids
}
