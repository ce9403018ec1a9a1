package session

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/omnigate/omnigate/builtin/backbone"
)

// What the store does while Redis is down (on_redis_down).
const (
	// DownMemory: new logins get memory sessions, written back to Redis
	// when it returns.
	DownMemory = "memory"
	// DownDeny: logins fail with 503 until Redis returns.
	DownDeny = "deny"
)

// Sessions that only Redis knows while it is down (outage_sessions).
const (
	// OutageReject answers 401: the session cannot be checked.
	OutageReject = "reject"
	// OutageCached accepts sessions this instance validated or created
	// (those in its local cache), until they end by their own idle or
	// absolute timeout as last known: the outage does not log users out.
	// Sessions revoked on another instance whose broadcast this instance
	// missed stay valid here until then too.
	OutageCached = "cached"
)

// errUnavailable means the session store cannot take a login now.
var errUnavailable = errors.New("session store unavailable: redis is down")

// sessions is the session store the plugin uses: Redis when configured and
// up, memory without Redis or while it is down, a local cache in front,
// revocations broadcast to every instance.
type sessions struct {
	m      *backbone.Manager
	redis  *redisStore // nil without Redis
	mem    *memStore
	cache  *localCache // nil when off
	onDown string
	outage string
	now    func() time.Time
	logger *slog.Logger

	mu             sync.Mutex
	pendingDeletes []string // deleted during an outage, to delete in Redis on return
	replaying      sync.Mutex

	opRevoke       *backbone.Op
	unsub, unwatch func()
	sampler        sync.Once
	done           chan struct{}
}

// revocation channel payloads: "s <id>" or "u <user> <keep>".
const revokeChannel = "session:revoke"

// storeOptions configure the session store.
type storeOptions struct {
	// CacheTTL is the local cache's TTL; 0 turns the cache off.
	CacheTTL time.Duration
	// CacheMax bounds the local cache.
	CacheMax int
	// OnDown is on_redis_down: DownMemory or DownDeny.
	OnDown string
	// Outage is outage_sessions: OutageCached or OutageReject.
	Outage string
	// MaxMemory bounds the memory store.
	MaxMemory int
	// Clock replaces time.Now and Redis TIME, for tests. Default nil: the
	// real clocks.
	Clock func() time.Time
	// Logger receives the write-back lines.
	Logger *slog.Logger
}

func newSessions(ctx context.Context, m *backbone.Manager, o storeOptions) *sessions {
	now := o.Clock
	if now == nil {
		now = time.Now
	}
	s := &sessions{m: m, onDown: o.OnDown, outage: o.Outage, now: now, logger: o.Logger, done: make(chan struct{})}
	s.mem = newMemStore(o.MaxMemory, s.now)
	if o.CacheTTL > 0 {
		s.cache = newLocalCache(o.CacheTTL, o.CacheMax)
	}
	if m != nil && m.Enabled() {
		s.redis = newRedisStore(ctx, m, o.Clock)
		s.opRevoke = m.Op("session.revoke")
		s.unsub = m.Subscribe(revokeChannel, s.onRevoke)
		s.unwatch = m.OnChange(func(up bool) {
			if s.cache != nil && up {
				// Revocations published while we were cut off were missed.
				s.cache.clear()
			}
			if up {
				s.writeBack()
			}
		})
	}
	return s
}

func (s *sessions) close() {
	close(s.done)
	if s.unsub != nil {
		s.unsub()
	}
	if s.unwatch != nil {
		s.unwatch()
	}
}

// redisUp reports whether operations go to Redis now.
func (s *sessions) redisUp() bool { return s.redis != nil && s.m.Up() }

// outageErr reports whether err means Redis is unavailable.
func outageErr(ctx context.Context, err error) bool {
	return errors.Is(err, backbone.ErrDown) || errors.Is(err, backbone.ErrDisabled) || backbone.IsOutage(ctx, err)
}

func (s *sessions) create(ctx context.Context, rec *Record, absolute time.Duration, max int) ([]string, error) {
	if s.redisUp() {
		evicted, err := s.redis.Create(ctx, rec, absolute, max)
		if err == nil || !outageErr(ctx, err) {
			s.revokeAll(ctx, evicted)
			if err == nil {
				// The instance that made it can check it in an outage too.
				s.remember(rec)
			}
			return evicted, err
		}
	}
	if s.redis != nil && s.onDown == DownDeny {
		return nil, errUnavailable
	}
	evicted, err := s.mem.Create(ctx, rec, absolute, max)
	s.revokeAll(ctx, evicted)
	return evicted, err
}

// get returns the live session id, refreshing its activity at most every
// touchAfter. While Redis is down it answers from memory (sessions made
// during the outage) and, with OutageCached, from the local cache until
// the session ends by its last known times.
func (s *sessions) get(ctx context.Context, id string, touchAfter time.Duration) (*Record, error) {
	now := s.now()
	if s.cache != nil {
		if r, ok := s.cache.get(id, now, false); ok && now.Sub(r.LastSeen) < touchAfter {
			return r, nil
		}
	}
	if s.redisUp() {
		r, err := s.redis.Get(ctx, id, touchAfter)
		switch {
		case err == nil:
			s.remember(r)
			return r, nil
		case errors.Is(err, ErrNotFound):
			// A session made in memory during an outage may not be
			// written back yet.
			return s.fromMemory(ctx, id, touchAfter)
		case !outageErr(ctx, err):
			return nil, err
		}
	}
	if r, err := s.fromMemory(ctx, id, touchAfter); err == nil || s.redis == nil {
		return r, err
	}
	if s.outage == OutageCached && s.cache != nil {
		if r, ok := s.cache.get(id, now, true); ok {
			return r, nil
		}
	}
	return nil, ErrNotFound
}

func (s *sessions) fromMemory(ctx context.Context, id string, touchAfter time.Duration) (*Record, error) {
	r, err := s.mem.Get(ctx, id, touchAfter)
	if err == nil {
		s.remember(r)
	}
	return r, err
}

func (s *sessions) remember(r *Record) {
	if s.cache != nil {
		s.cache.put(r, s.now())
	}
}

func (s *sessions) delete(ctx context.Context, id string) error {
	s.mem.Delete(ctx, id)
	if s.cache != nil {
		s.cache.forget(id)
	}
	if s.redis != nil {
		if err := s.redis.Delete(ctx, id); err != nil {
			if !outageErr(ctx, err) {
				return err
			}
			s.mu.Lock()
			s.pendingDeletes = append(s.pendingDeletes, id)
			s.mu.Unlock()
		}
		s.m.Publish(ctx, s.opRevoke, revokeChannel, "s "+id)
	}
	return nil
}

func (s *sessions) list(ctx context.Context, user string) ([]*Record, error) {
	out, err := s.mem.List(ctx, user)
	if err != nil || !s.redisUp() {
		return out, err
	}
	fromRedis, err := s.redis.List(ctx, user)
	if err != nil {
		if outageErr(ctx, err) {
			return out, nil
		}
		return nil, err
	}
	seen := map[string]bool{}
	for _, r := range out {
		seen[r.ID] = true
	}
	for _, r := range fromRedis {
		if !seen[r.ID] {
			out = append(out, r)
		}
	}
	return out, nil
}

// deleteUser ends every session of user except keep, on every instance.
func (s *sessions) deleteUser(ctx context.Context, user, keep string) ([]string, error) {
	removed, _ := s.mem.DeleteUser(ctx, user, keep)
	if s.cache != nil {
		s.cache.forgetUser(user, keep)
	}
	if s.redis != nil {
		if s.redisUp() {
			r, err := s.redis.DeleteUser(ctx, user, keep)
			if err != nil && !outageErr(ctx, err) {
				return nil, err
			}
			removed = append(removed, r...)
		}
		s.m.Publish(ctx, s.opRevoke, revokeChannel, "u "+user+" "+keep)
	}
	return removed, nil
}

func (s *sessions) count(ctx context.Context) (map[string]int, error) {
	out, _ := s.mem.Count(ctx)
	if s.redisUp() {
		r, err := s.redis.Count(ctx)
		if err != nil && !outageErr(ctx, err) {
			return nil, err
		}
		for role, n := range r {
			out[role] += n
		}
	}
	return out, nil
}

// revokeAll tells every instance that ids ended (evicted sessions).
func (s *sessions) revokeAll(ctx context.Context, ids []string) {
	for _, id := range ids {
		if s.cache != nil {
			s.cache.forget(id)
		}
		if s.redis != nil {
			s.m.Publish(ctx, s.opRevoke, revokeChannel, "s "+id)
		}
	}
}

func (s *sessions) onRevoke(payload string) {
	if s.cache == nil {
		return
	}
	kind, rest, _ := strings.Cut(payload, " ")
	switch kind {
	case "s":
		s.cache.forget(rest)
	case "u":
		user, keep, _ := strings.Cut(rest, " ")
		s.cache.forgetUser(user, keep)
	}
}

// pendingReplays is the number of deletions made during an outage that
// are not yet replayed to Redis.
func (s *sessions) pendingReplays() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pendingDeletes)
}

// writeBack replays the deletions made during an outage and moves the
// sessions created in memory meanwhile to Redis. What fails stays queued
// for the next recovery. One runs at a time.
func (s *sessions) writeBack() {
	s.replaying.Lock()
	defer s.replaying.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	deleted := s.replayDeletes(ctx)
	recs := s.mem.drain()
	written := 0
	for _, r := range recs {
		if err := s.redis.restore(ctx, r); err != nil {
			// Keep it in memory; the next recovery tries again.
			s.mem.restore(r)
			continue
		}
		written++
	}
	if len(recs) > 0 || deleted > 0 {
		s.logger.Info("sessions written back to redis", "sessions", written, "deletions", deleted)
	}
}

// replayDeletes deletes in Redis the sessions deleted during an outage,
// and tells every instance. It returns how many it replayed; the others
// stay queued.
func (s *sessions) replayDeletes(ctx context.Context) int {
	s.mu.Lock()
	ids := slices.Clone(s.pendingDeletes)
	s.mu.Unlock()
	var failed []string
	for _, id := range ids {
		if err := s.redis.Delete(ctx, id); err != nil {
			failed = append(failed, id)
			continue
		}
		s.m.Publish(ctx, s.opRevoke, revokeChannel, "s "+id)
	}
	s.mu.Lock()
	// Deletions queued while this ran stay after the failed ones.
	s.pendingDeletes = append(failed, s.pendingDeletes[len(ids):]...)
	s.mu.Unlock()
	return len(ids) - len(failed)
}
