package session

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
//
// Revocations made while Redis is down (a logout, a revoke-all) hold on
// this instance at once and are queued; when Redis returns they are
// replayed to Redis and broadcast, before the sessions made in memory
// meanwhile are written back. A revoke-all is kept as a per-user marker
// ("sessions created at or before T are revoked"), in Redis and in every
// instance's memory, that every accepted session is checked against.
type sessions struct {
	m        *backbone.Manager
	redis    *redisStore // nil without Redis
	mem      *memStore
	cache    *localCache // nil when off
	markers  *revocations
	onDown   string
	outage   string
	now      func() time.Time
	lifetime atomic.Int64 // longest absolute timeout (ns): how long a marker is kept
	logger   *slog.Logger

	mu             sync.Mutex
	pendingDeletes []string          // deleted during an outage, to delete in Redis on return
	pendingRevokes map[string]marker // revoke-alls made during an outage, by user
	replaying      sync.Mutex

	opRevoke       *backbone.Op
	unsub, unwatch func()
	sampler        sync.Once
	done           chan struct{}
}

// Session channel payloads: "s <id>" (one session revoked), "r <ms> <keep>
// <user>" (a revoke-all marker; keep is "-" for none), "c <instance>
// <record JSON>" (a session created on that instance, which the others
// cache so that they can check it through a Redis outage) and, from instances of
// earlier versions, "u <user> <keep>".
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
	// Lifetime is the longest absolute timeout of any role: how long a
	// revoke-all marker is kept. Default (0) defaultLifetime.
	Lifetime time.Duration
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
	s := &sessions{m: m, onDown: o.OnDown, outage: o.Outage, now: now, logger: o.Logger,
		markers: newRevocations(), pendingRevokes: map[string]marker{}, done: make(chan struct{})}
	s.raiseLifetime(cmp.Or(o.Lifetime, defaultLifetime))
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

// raiseLifetime makes markers last at least d (the longest absolute
// timeout of a config that uses the store: one config may have left
// sessions that another does not know of).
func (s *sessions) raiseLifetime(d time.Duration) {
	for {
		cur := s.lifetime.Load()
		if int64(d) <= cur || s.lifetime.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

func (s *sessions) markerLifetime() time.Duration { return time.Duration(s.lifetime.Load()) }

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
				// Every instance can check it in an outage: this one
				// caches it, the others hear of it.
				s.remember(rec)
				s.announce(ctx, rec)
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
// the session ends by its last known times. A session a revoke-all marker
// covers is ErrNotFound wherever it is found.
func (s *sessions) get(ctx context.Context, id string, touchAfter time.Duration) (*Record, error) {
	now := s.now()
	if s.cache != nil {
		if r, ok := s.cache.get(id, now, false); ok && now.Sub(r.LastSeen) < touchAfter {
			return s.unlessRevoked(r)
		}
	}
	if s.redisUp() {
		r, err := s.redis.Get(ctx, id, touchAfter)
		switch {
		case err == nil:
			if s.markers.covers(r) {
				// Revoked here, not yet replayed, or read just before the
				// revoke-all deleted it.
				return nil, ErrNotFound
			}
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
			return s.unlessRevoked(r)
		}
	}
	return nil, ErrNotFound
}

// unlessRevoked returns r from the local cache, or drops it and returns
// ErrNotFound when a marker covers it.
func (s *sessions) unlessRevoked(r *Record) (*Record, error) {
	if s.markers.covers(r) {
		s.cache.forget(r.ID)
		return nil, ErrNotFound
	}
	return r, nil
}

func (s *sessions) fromMemory(ctx context.Context, id string, touchAfter time.Duration) (*Record, error) {
	r, err := s.mem.Get(ctx, id, touchAfter)
	if err != nil {
		return nil, err
	}
	if s.markers.covers(r) {
		s.mem.Delete(ctx, r.ID)
		return nil, ErrNotFound
	}
	s.remember(r)
	return r, nil
}

// announce tells the other instances of a new session, for their local
// caches. The record holds no token: its ID is the token's SHA-256.
func (s *sessions) announce(ctx context.Context, r *Record) {
	if s.cache == nil {
		return
	}
	b, err := json.Marshal(wireRecord{Record: r, Idle: r.IdleTimeout.Milliseconds()})
	if err == nil {
		s.m.Publish(ctx, s.opRevoke, revokeChannel, "c "+s.m.InstanceID()+" "+string(b))
	}
}

// wireRecord is a Record as announced: Record's JSON form leaves out the
// idle timeout.
type wireRecord struct {
	*Record
	Idle int64 `json:"idle_ms"`
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

// list returns the user's live sessions: memory's, then Redis's (while it
// is up), without those a marker covers.
func (s *sessions) list(ctx context.Context, user string) ([]*Record, error) {
	out, err := s.mem.List(ctx, user)
	if err != nil {
		return nil, err
	}
	if s.redisUp() {
		fromRedis, err := s.redis.List(ctx, user)
		if err != nil && !outageErr(ctx, err) {
			return nil, err
		}
		for _, r := range fromRedis {
			if !slices.ContainsFunc(out, func(m *Record) bool { return m.ID == r.ID }) {
				out = append(out, r)
			}
		}
	}
	return slices.DeleteFunc(out, s.markers.covers), nil
}

// revokeResult is what a revoke-all did.
type revokeResult struct {
	// Revoked is the number of sessions ended now: in Redis, in this
	// instance's memory and in its local cache.
	Revoked int
	// Pending is true when Redis could not be reached: the revocation
	// holds on this instance now, and on every instance once Redis returns
	// and this instance has replayed it.
	Pending bool
}

// deleteUser ends every session of user except keep, on every instance:
// the sessions it finds, and any session of the user created up to now
// that turns up later (written back from another instance's memory, or in
// a cache), through the user's marker.
func (s *sessions) deleteUser(ctx context.Context, user, keep string) (revokeResult, error) {
	now := s.now()
	ended := map[string]bool{}
	add := func(ids []string) {
		for _, id := range ids {
			ended[id] = true
		}
	}
	fromMem, _ := s.mem.DeleteUser(ctx, user, keep)
	add(fromMem)
	if s.cache != nil {
		add(s.cache.forgetUser(user, keep))
	}
	m := marker{before: now, keep: keep}
	pending := false
	if s.redis != nil {
		before, removed, err := s.redis.revokeBefore(ctx, user, keep, time.Time{}, s.markerLifetime())
		switch {
		case err == nil:
			m.before = before // Redis's time: sessions made in Redis after it are not covered
			add(removed)
			s.publishMarker(ctx, user, m)
		case outageErr(ctx, err):
			pending = true
			s.queueRevoke(user, m)
		default:
			return revokeResult{}, err
		}
	}
	s.markers.add(user, m, now, s.markerLifetime())
	return revokeResult{Revoked: len(ended), Pending: pending}, nil
}

// queueRevoke keeps a revoke-all made during an outage for the replay.
func (s *sessions) queueRevoke(user string, m marker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.pendingRevokes[user]; !ok || !cur.before.After(m.before) {
		s.pendingRevokes[user] = m
	}
}

func (s *sessions) publishMarker(ctx context.Context, user string, m marker) {
	keep := m.keep
	if keep == "" {
		keep = "-"
	}
	s.m.Publish(ctx, s.opRevoke, revokeChannel, "r "+strconv.FormatInt(m.before.UnixMilli(), 10)+" "+keep+" "+user)
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

// onRevoke applies a revocation broadcast by any instance.
func (s *sessions) onRevoke(payload string) {
	kind, rest, _ := strings.Cut(payload, " ")
	switch kind {
	case "s":
		if s.cache != nil {
			s.cache.forget(rest)
		}
	case "r":
		msText, rest, _ := strings.Cut(rest, " ")
		keep, user, _ := strings.Cut(rest, " ")
		msec, err := strconv.ParseInt(msText, 10, 64)
		if err != nil || user == "" {
			return
		}
		if keep == "-" {
			keep = ""
		}
		s.markers.add(user, marker{before: fromMS(msec), keep: keep}, s.now(), s.markerLifetime())
		if s.cache != nil {
			s.cache.forgetUser(user, keep)
		}
	case "u":
		if s.cache != nil {
			user, keep, _ := strings.Cut(rest, " ")
			s.cache.forgetUser(user, keep)
		}
	case "c":
		// Not from this instance: it cached the session when it made it,
		// and may have revoked it since.
		from, rec, _ := strings.Cut(rest, " ")
		w := wireRecord{Record: &Record{}}
		if s.cache == nil || from == s.m.InstanceID() || json.Unmarshal([]byte(rec), &w) != nil || w.ID == "" || w.Idle <= 0 {
			return
		}
		w.IdleTimeout = time.Duration(w.Idle) * time.Millisecond
		if !s.markers.covers(w.Record) {
			s.cache.put(w.Record, s.now())
		}
	}
}

// cached is the number of sessions in the local cache.
func (s *sessions) cached() int {
	if s.cache == nil {
		return 0
	}
	return s.cache.len()
}

// pendingReplays is the number of revocations (deletions and revoke-alls)
// made during an outage that are not yet replayed to Redis.
func (s *sessions) pendingReplays() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pendingDeletes) + len(s.pendingRevokes)
}

// writeBack replays the revocations made during an outage, then moves the
// sessions created in memory meanwhile to Redis (those a revoke-all
// covers are dropped). What fails stays queued for the next recovery. One
// runs at a time.
func (s *sessions) writeBack() {
	s.replaying.Lock()
	defer s.replaying.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	revoked := s.replayRevokes(ctx)
	deleted := s.replayDeletes(ctx)
	recs := s.mem.drain()
	written, dropped := 0, 0
	for _, r := range recs {
		switch err := s.redis.restore(ctx, r); {
		case err == nil:
			written++
		case errors.Is(err, errRevokedSession):
			dropped++
		default:
			// Keep it in memory; the next recovery tries again.
			s.mem.restore(r)
		}
	}
	if len(recs) > 0 || deleted > 0 || revoked > 0 {
		s.logger.Info("sessions written back to redis", "sessions", written, "deletions", deleted,
			"revoke_all", revoked, "revoked_sessions_dropped", dropped)
	}
}

// replayRevokes records in Redis the revoke-alls made during an outage,
// deletes the sessions they cover, and tells every instance. It returns
// how many it replayed; the others stay queued.
func (s *sessions) replayRevokes(ctx context.Context) int {
	s.mu.Lock()
	todo := maps.Clone(s.pendingRevokes)
	s.mu.Unlock()
	done := 0
	for user, m := range todo {
		before, _, err := s.redis.revokeBefore(ctx, user, m.keep, m.before, s.markerLifetime())
		if err != nil {
			continue
		}
		replayed := marker{before: before, keep: m.keep}
		s.markers.replace(user, m, replayed)
		s.publishMarker(ctx, user, replayed)
		s.mu.Lock()
		if s.pendingRevokes[user] == m {
			delete(s.pendingRevokes, user)
		}
		s.mu.Unlock()
		done++
	}
	return done
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
