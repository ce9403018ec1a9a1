package session

import (
	"container/heap"
	"time"
)

// entry is one session held in process, by the memory store or the local
// cache, with its place in an endHeap.
type entry struct {
	rec Record
	// end is rec.Ends() as of the last change: the heap key.
	end time.Time
	// seq orders entries created at the same instant (memory store).
	seq uint64
	// fetched is when the local cache last had the record from the store.
	fetched time.Time
	// i is the entry's index in its endHeap.
	i int
}

// endHeap orders entries by end, soonest first, so ended sessions are
// found at the top in O(1) and dropped in O(log n) each, and when a bound
// is reached the session closest to its end is the one dropped.
type endHeap []*entry

func (h endHeap) Len() int           { return len(h) }
func (h endHeap) Less(i, j int) bool { return h[i].end.Before(h[j].end) }
func (h endHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].i, h[j].i = i, j
}
func (h *endHeap) Push(x any) {
	e := x.(*entry)
	e.i = len(*h)
	*h = append(*h, e)
}
func (h *endHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

// add inserts e.
func (h *endHeap) add(e *entry) {
	e.end = e.rec.Ends()
	heap.Push(h, e)
}

// changed restores the order after e.rec's times changed.
func (h *endHeap) changed(e *entry) {
	e.end = e.rec.Ends()
	heap.Fix(h, e.i)
}

// drop removes e.
func (h *endHeap) drop(e *entry) { heap.Remove(h, e.i) }

// soonest returns the entry that ends first, or nil.
func (h endHeap) soonest() *entry {
	if len(h) == 0 {
		return nil
	}
	return h[0]
}
