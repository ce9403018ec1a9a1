package session

import (
	"testing"
	"time"
)

func cached(id, user string, lastSeen time.Time, idle time.Duration) *Record {
	return &Record{ID: id, UserID: user, Role: "nurse", Created: lastSeen, LastSeen: lastSeen,
		Expires: lastSeen.Add(12 * time.Hour), IdleTimeout: idle}
}

// TestLocalCacheKeepsLiveSessionsPastItsTTL: entries older than the TTL
// are not used while Redis is up, but are kept (for an outage) until their
// session ends; a full cache drops ended sessions first.
func TestLocalCacheKeepsLiveSessionsPastItsTTL(t *testing.T) {
	clk := newFakeClock()
	c := newLocalCache(5*time.Second, 2)
	c.put(cached("a", "ann", clk.Now(), time.Hour), clk.Now())
	c.put(cached("b", "bo", clk.Now(), time.Minute), clk.Now())
	clk.Advance(2 * time.Minute) // b has ended; a is live, fetched long ago

	if _, ok := c.get("a", clk.Now(), false); ok {
		t.Error("an entry older than the TTL was used while not stale")
	}
	c.put(cached("c", "cy", clk.Now(), time.Hour), clk.Now())
	if _, ok := c.get("a", clk.Now(), true); !ok {
		t.Error("a live session was dropped from the full cache while an ended one was there")
	}
	if _, ok := c.get("c", clk.Now(), false); !ok {
		t.Error("new entry missing")
	}
	if n := c.len(); n != 2 {
		t.Errorf("cache holds %d entries, want its bound of 2", n)
	}
	clk.Advance(time.Hour)
	if _, ok := c.get("a", clk.Now(), true); ok {
		t.Error("a session past its idle timeout was returned")
	}
}

// TestLocalCacheFullOfLiveSessionsDropsTheOneClosestToItsEnd.
func TestLocalCacheFullOfLiveSessionsDropsTheOneClosestToItsEnd(t *testing.T) {
	clk := newFakeClock()
	c := newLocalCache(5*time.Second, 2)
	c.put(cached("long", "ann", clk.Now(), time.Hour), clk.Now())
	c.put(cached("short", "bo", clk.Now(), 10*time.Minute), clk.Now())
	clk.Advance(time.Second)
	c.put(cached("new", "cy", clk.Now(), 30*time.Minute), clk.Now())
	if _, ok := c.get("short", clk.Now(), true); ok {
		t.Error("the session closest to its end was kept")
	}
	for _, id := range []string{"long", "new"} {
		if _, ok := c.get(id, clk.Now(), true); !ok {
			t.Errorf("%s dropped", id)
		}
	}
}
