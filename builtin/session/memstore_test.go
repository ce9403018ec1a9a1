package session

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestMemStoreDropsEndedSessionsFirst: a full store makes room by dropping
// sessions that have ended, not the oldest live one.
func TestMemStoreDropsEndedSessionsFirst(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	m := newMemStore(3, clk.Now)
	long := rec("ann", "physician", time.Hour)
	m.Create(ctx, long, 12*time.Hour, 0)
	clk.Advance(time.Minute)
	m.Create(ctx, rec("bo", "nurse", time.Minute), 12*time.Hour, 0)
	m.Create(ctx, rec("cy", "nurse", time.Minute), 12*time.Hour, 0)
	clk.Advance(2 * time.Minute) // bo's and cy's sessions are idle past their timeout

	fresh := rec("di", "nurse", time.Hour)
	if _, err := m.Create(ctx, fresh, 12*time.Hour, 0); err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]string{"oldest live session": long.ID, "new session": fresh.ID} {
		if _, err := m.Get(ctx, id, time.Minute); err != nil {
			t.Errorf("%s dropped while ended sessions were kept: %v", name, err)
		}
	}
	if n := m.len(); n > 3 {
		t.Errorf("store holds %d sessions, more than its bound of 3", n)
	}
}

// TestMemStoreFullOfLiveSessionsDropsTheOneClosestToItsEnd: with nothing
// ended, the session that would end first goes, whenever it was created.
func TestMemStoreFullOfLiveSessionsDropsTheOneClosestToItsEnd(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	m := newMemStore(2, clk.Now)
	old := rec("ann", "physician", time.Hour)
	m.Create(ctx, old, 12*time.Hour, 0)
	clk.Advance(time.Second)
	soon := rec("bo", "admin", 10*time.Minute)
	m.Create(ctx, soon, 12*time.Hour, 0)
	clk.Advance(time.Second)
	fresh := rec("cy", "nurse", 10*time.Minute) // ends after soon
	m.Create(ctx, fresh, 12*time.Hour, 0)

	if _, err := m.Get(ctx, soon.ID, time.Minute); !errors.Is(err, ErrNotFound) {
		t.Errorf("the session closest to its end was kept: %v", err)
	}
	for name, id := range map[string]string{"oldest session (ends last)": old.ID, "new session": fresh.ID} {
		if _, err := m.Get(ctx, id, time.Minute); err != nil {
			t.Errorf("%s dropped: %v", name, err)
		}
	}
}

// TestMemStoreTouchMovesTheEnd: activity pushes a session back in the
// eviction order.
func TestMemStoreTouchMovesTheEnd(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	m := newMemStore(2, clk.Now)
	a, b := rec("ann", "nurse", 10*time.Minute), rec("bo", "nurse", 10*time.Minute)
	m.Create(ctx, a, 12*time.Hour, 0)
	clk.Advance(time.Minute)
	m.Create(ctx, b, 12*time.Hour, 0)
	clk.Advance(time.Minute)
	if _, err := m.Get(ctx, a.ID, 0); err != nil { // a now ends after b
		t.Fatal(err)
	}
	m.Create(ctx, rec("cy", "nurse", 10*time.Minute), 12*time.Hour, 0)
	if _, err := m.Get(ctx, a.ID, time.Minute); err != nil {
		t.Errorf("the recently active session was dropped: %v", err)
	}
	if _, err := m.Get(ctx, b.ID, time.Minute); !errors.Is(err, ErrNotFound) {
		t.Errorf("the idle session was kept: %v", err)
	}
}
