package session

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// tickingClock returns a later time, by one microsecond, at every call: a
// deterministic clock under which every session gets its own times.
type tickingClock struct{ n atomic.Int64 }

func (c *tickingClock) now() time.Time {
	return time.Date(2031, 3, 14, 9, 0, 0, 0, time.UTC).Add(time.Duration(c.n.Add(1)) * time.Microsecond)
}

// fullMemStore returns a memory store holding n live sessions (its
// capacity), one per user, and their ids.
func fullMemStore(b *testing.B, n int) (*memStore, []string) {
	b.Helper()
	clk := &tickingClock{}
	m := newMemStore(n, clk.now)
	ids := make([]string, n)
	for i := range n {
		r := rec("u"+strconv.Itoa(i), "nurse", 15*time.Minute)
		if _, err := m.Create(context.Background(), r, 12*time.Hour, 5); err != nil {
			b.Fatal(err)
		}
		ids[i] = r.ID
	}
	return m, ids
}

// BenchmarkMemStore measures logins (Create) and session checks (Get) on a
// memory store at its default capacity of 100,000 sessions, the state it
// is in during a long Redis outage. Every login there has to drop a
// session. check-with-logins runs checks on every core while one
// operation in ten is a login, which shows how long a login holds the
// lock that checks need.
func BenchmarkMemStore(b *testing.B) {
	const n = 100000
	ctx := context.Background()
	b.Run("login-at-100k", func(b *testing.B) {
		m, _ := fullMemStore(b, n)
		recs := make([]*Record, b.N)
		for i := range recs {
			recs[i] = rec("new"+strconv.Itoa(i), "nurse", 15*time.Minute)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if _, err := m.Create(ctx, recs[i], 12*time.Hour, 5); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("check-at-100k", func(b *testing.B) {
		m, ids := fullMemStore(b, n)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if _, err := m.Get(ctx, ids[i%n], time.Minute); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("check-with-logins-at-100k", func(b *testing.B) {
		m, ids := fullMemStore(b, n)
		var next atomic.Int64
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := next.Add(1)
				if i%10 == 0 {
					m.Create(ctx, rec("new"+strconv.FormatInt(i, 10), "nurse", 15*time.Minute), 12*time.Hour, 5)
					continue
				}
				// A session evicted by a login is a miss, as it would be.
				m.Get(ctx, ids[i%n], time.Minute)
			}
		})
	})
}
