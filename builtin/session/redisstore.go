package session

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/omnigate/omnigate/builtin/backbone"
)

// redisStore keeps sessions in Redis, shared by every gateway instance.
//
// Keys (all under the backbone's prefix):
//
//	{s:<id>}             hash: the session; its TTL is whichever of the idle
//	                     and absolute expiry comes first
//	{u:<user>}:sessions  sorted set: the user's session ids by creation time
//	{u:<user>}:revoked   hash: the user's revoke-all marker: t (ms) and k, the
//	                     session kept; sessions of the user created at or
//	                     before t, except k, are revoked. Kept as long as the
//	                     longest absolute timeout, after which every session
//	                     it covers has ended.
//	{sessions}:role:<r>  sorted set: session ids of role r by expiry, for counts
//	{sessions}:roles     set: role names seen
//
// Reading a session (and refreshing its activity when due) is one script
// on one key: one round trip per validated request, on Cluster too.
//
// Times come from Redis TIME, so gateway clocks do not matter, unless now
// is set (tests): the scripts then take the time as their first argument.
type redisStore struct {
	m                                  *backbone.Manager
	now                                func() time.Time
	opCreate, opGet, opDel, opList     *backbone.Op
	opCount, opRevoke                  *backbone.Op
	createScript, getScript, delScript *redis.Script
	countScript, revokeScript          *redis.Script
	indexScript                        *redis.Script
}

// defaultLifetime is how long DeleteUser keeps a revoke-all marker: the
// longest absolute timeout of the default roles.
const defaultLifetime = 24 * time.Hour

// Session hash fields.
const (
	fUser, fRole, fScopes, fPatient, fMethod = "u", "r", "s", "p", "m"
	fCreated, fLast, fAbs, fIdle, fUA, fIP   = "c", "l", "a", "i", "ua", "ip"
	fFHIRUser                                = "f"
)

var getFields = []string{fUser, fRole, fScopes, fPatient, fMethod, fCreated, fLast, fAbs, fIdle, fUA, fIP, fFHIRUser}

// nowLua sets now (ms) from ARGV[1], or from Redis TIME when it is 0.
const nowLua = `local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

// createLua stores a session. ARGV: now, absolute_ms, idle_ms, then
// field/value pairs. Returns now (ms).
var createLua = nowLua + `
local abs, idle = tonumber(ARGV[2]), tonumber(ARGV[3])
local args = {KEYS[1], 'c', now, 'l', now, 'a', now + abs, 'i', idle}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', unpack(args))
redis.call('PEXPIRE', KEYS[1], math.min(idle, abs))
return now
`

// getLua reads a live session, deleting an ended one, and refreshes its
// activity when it is older than ARGV[2] ms. Returns the fields of
// getFields, then touched (0/1) and now, or nil.
var getLua = nowLua + `
local v = redis.call('HMGET', KEYS[1], 'u', 'r', 's', 'p', 'm', 'c', 'l', 'a', 'i', 'ua', 'ip', 'f')
if not v[1] then return false end
local last, abs, idle = tonumber(v[7]), tonumber(v[8]), tonumber(v[9])
if now >= abs or now - last >= idle then
  redis.call('DEL', KEYS[1])
  return false
end
local touched = 0
if now - last >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'l', now)
  redis.call('PEXPIRE', KEYS[1], math.min(idle, abs - now))
  v[7] = tostring(now)
  touched = 1
end
v[13] = tostring(touched)
v[14] = tostring(now)
return v
`

// delLua deletes a session and returns its user and role.
var delLua = `
local v = redis.call('HMGET', KEYS[1], 'u', 'r')
redis.call('DEL', KEYS[1])
return v
`

// countLua counts live sessions by role. KEYS[1] is the role name set;
// ARGV[2] the prefix of the role sets. Returns role, count pairs.
var countLua = nowLua + `
local out = {}
for _, role in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[2] .. role
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local n = redis.call('ZCARD', k)
  if n == 0 then redis.call('SREM', KEYS[1], role) end
  out[#out + 1] = role
  out[#out + 1] = n
end
return out
`

// newRedisStore returns the Redis store. now replaces Redis TIME when it
// is not nil (tests).
// revokeLua records a revoke-all marker and returns its time and the ids
// it covers. KEYS[1] is the user's marker, KEYS[2] the user's index.
// ARGV: now, before (ms; 0 or later than now: now), keep, marker TTL (ms).
// A marker never moves back: the later one stays. Returns {before, ids}.
var revokeLua = nowLua + `
local before = tonumber(ARGV[2])
if before == 0 or before > now then before = now end
local cur = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
if before >= cur then
  redis.call('HSET', KEYS[1], 't', before, 'k', ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {before, redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', before)}
`

// indexLua adds a session written back after an outage to its user's
// index, unless the user's revoke-all marker covers it. KEYS[1] is the
// index, KEYS[2] the marker; ARGV: id, created (ms). Returns 1 when
// indexed, 0 when revoked. It runs after the session's own key is
// written, and revokeLua before the index is read, on the same slot: either
// the revoke-all sees the session, or the write-back sees the marker.
const indexLua = `
local m = redis.call('HMGET', KEYS[2], 't', 'k')
if m[1] and tonumber(ARGV[2]) <= tonumber(m[1]) and ARGV[1] ~= m[2] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
`

func newRedisStore(ctx context.Context, m *backbone.Manager, now func() time.Time) *redisStore {
	s := &redisStore{
		m:            m,
		now:          now,
		opCreate:     m.Op("session.create"),
		opGet:        m.Op("session.get"),
		opDel:        m.Op("session.delete"),
		opList:       m.Op("session.list"),
		opCount:      m.Op("session.count"),
		opRevoke:     m.Op("session.revoke_user"),
		createScript: redis.NewScript(createLua),
		getScript:    redis.NewScript(getLua),
		delScript:    redis.NewScript(delLua),
		countScript:  redis.NewScript(countLua),
		revokeScript: redis.NewScript(revokeLua),
		indexScript:  redis.NewScript(indexLua),
	}
	m.Load(ctx, s.createScript, s.getScript, s.delScript, s.countScript, s.revokeScript, s.indexScript)
	return s
}

func (s *redisStore) sessKey(id string) string { return s.m.Key("s:"+id, "") }
func (s *redisStore) userKey(user string) string {
	return s.m.Key("u:"+backbone.Tag(user), ":sessions")
}
func (s *redisStore) markerKey(user string) string {
	return s.m.Key("u:"+backbone.Tag(user), ":revoked")
}
func (s *redisStore) rolesKey() string   { return s.m.Key("sessions", ":roles") }
func (s *redisStore) rolePrefix() string { return s.m.Key("sessions", ":role:") }

func ms(d time.Duration) int64 { return d.Milliseconds() }

func fromMS(v int64) time.Time { return time.UnixMilli(v) }

// nowArg is the time the scripts get: 0 for Redis TIME, or the injected
// clock's (ms).
func (s *redisStore) nowArg() int64 {
	if s.now == nil {
		return 0
	}
	return s.now().UnixMilli()
}

// clock returns the injected time, or the gateway's.
func (s *redisStore) clock() time.Time {
	if s.now == nil {
		return time.Now()
	}
	return s.now()
}

func (s *redisStore) Create(ctx context.Context, rec *Record, absolute time.Duration, maxSessions int) ([]string, error) {
	args := []any{s.nowArg(), ms(absolute), ms(rec.IdleTimeout),
		fUser, rec.UserID, fRole, rec.Role, fScopes, strings.Join(rec.Scopes, " "), fPatient, rec.PatientID,
		fMethod, rec.Method, fUA, rec.UserAgent, fIP, rec.ClientIP, fFHIRUser, rec.FHIRUser}
	var now int64
	err := s.m.Do(ctx, s.opCreate, func(ctx context.Context, c redis.UniversalClient) error {
		var err error
		now, err = s.createScript.Run(ctx, c, []string{s.sessKey(rec.ID)}, args...).Int64()
		if err != nil {
			return err
		}
		rec.Created, rec.LastSeen, rec.Expires = fromMS(now), fromMS(now), fromMS(now+ms(absolute))
		_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.ZAdd(ctx, s.userKey(rec.UserID), redis.Z{Score: float64(now), Member: rec.ID})
			p.ZAdd(ctx, s.rolePrefix()+backbone.Tag(rec.Role), redis.Z{Score: float64(rec.Ends().UnixMilli()), Member: rec.ID})
			p.SAdd(ctx, s.rolesKey(), backbone.Tag(rec.Role))
			return nil
		})
		return err
	})
	if err != nil || maxSessions <= 0 {
		return nil, err
	}
	live, err := s.List(ctx, rec.UserID)
	if err != nil {
		return nil, err
	}
	var evicted []string
	for i := 0; len(live)-i > maxSessions; i++ {
		if err := s.Delete(ctx, live[i].ID); err != nil {
			return evicted, err
		}
		evicted = append(evicted, live[i].ID)
	}
	return evicted, nil
}

// errRevokedSession means a session written back after an outage was
// revoked meanwhile by a revoke-all of its user.
var errRevokedSession = errors.New("session revoked while redis was down")

// restore writes a session created in memory during an outage, keeping
// its times; it is skipped when it has ended meanwhile, and removed again
// (errRevokedSession) when a revoke-all of its user covers it.
func (s *redisStore) restore(ctx context.Context, r *Record) error {
	revoked := false
	err := s.m.Do(ctx, s.opCreate, func(ctx context.Context, c redis.UniversalClient) error {
		ttl := r.Ends().Sub(s.clock())
		if ttl <= 0 {
			return nil
		}
		k := s.sessKey(r.ID)
		_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, k, fUser, r.UserID, fRole, r.Role, fScopes, strings.Join(r.Scopes, " "), fPatient, r.PatientID,
				fMethod, r.Method, fUA, r.UserAgent, fIP, r.ClientIP, fFHIRUser, r.FHIRUser, fCreated, r.Created.UnixMilli(),
				fLast, r.LastSeen.UnixMilli(), fAbs, r.Expires.UnixMilli(), fIdle, ms(r.IdleTimeout))
			p.PExpire(ctx, k, ttl)
			return nil
		})
		if err != nil {
			return err
		}
		indexed, err := s.indexScript.Run(ctx, c, []string{s.userKey(r.UserID), s.markerKey(r.UserID)},
			r.ID, r.Created.UnixMilli()).Int()
		if err != nil {
			return err
		}
		if revoked = indexed == 0; revoked {
			// Not an error of the call: Do would count it as an outage.
			return c.Del(ctx, k).Err()
		}
		_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.ZAdd(ctx, s.rolePrefix()+backbone.Tag(r.Role), redis.Z{Score: float64(r.Ends().UnixMilli()), Member: r.ID})
			p.SAdd(ctx, s.rolesKey(), backbone.Tag(r.Role))
			return nil
		})
		return err
	})
	if err == nil && revoked {
		return errRevokedSession
	}
	return err
}

func (s *redisStore) Get(ctx context.Context, id string, touchAfter time.Duration) (*Record, error) {
	var rec *Record
	var touched bool
	err := s.m.Do(ctx, s.opGet, func(ctx context.Context, c redis.UniversalClient) error {
		v, err := s.getScript.Run(ctx, c, []string{s.sessKey(id)}, s.nowArg(), ms(touchAfter)).StringSlice()
		if errors.Is(err, redis.Nil) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(v) != len(getFields)+2 {
			return fmt.Errorf("session script returned %d fields", len(v))
		}
		rec, err = parseRecord(id, v)
		touched = v[len(getFields)] == "1"
		return err
	})
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, ErrNotFound
	}
	if touched {
		// Keep the role count's expiry in step; at most once per touch interval.
		s.m.Do(ctx, s.opGet, func(ctx context.Context, c redis.UniversalClient) error {
			return c.ZAdd(ctx, s.rolePrefix()+backbone.Tag(rec.Role), redis.Z{Score: float64(rec.Ends().UnixMilli()), Member: id}).Err()
		})
	}
	return rec, nil
}

// parseRecord reads the fields of getFields, in order.
func parseRecord(id string, v []string) (*Record, error) {
	num := func(s string) int64 { n, _ := strconv.ParseInt(s, 10, 64); return n }
	r := &Record{
		ID: id, UserID: v[0], Role: v[1], PatientID: v[3], Method: v[4],
		Created: fromMS(num(v[5])), LastSeen: fromMS(num(v[6])), Expires: fromMS(num(v[7])),
		IdleTimeout: time.Duration(num(v[8])) * time.Millisecond, UserAgent: v[9], ClientIP: v[10], FHIRUser: v[11],
	}
	if v[2] != "" {
		r.Scopes = strings.Split(v[2], " ")
	}
	if r.UserID == "" || r.IdleTimeout <= 0 {
		return nil, fmt.Errorf("session record %s is malformed", id[:min(8, len(id))])
	}
	return r, nil
}

func (s *redisStore) Delete(ctx context.Context, id string) error {
	_, err := s.del(ctx, id)
	return err
}

// del deletes a session and reports whether it was there.
func (s *redisStore) del(ctx context.Context, id string) (bool, error) {
	existed := false
	err := s.m.Do(ctx, s.opDel, func(ctx context.Context, c redis.UniversalClient) error {
		v, err := s.delScript.Run(ctx, c, []string{s.sessKey(id)}).Slice()
		if err != nil {
			return err
		}
		user, _ := v[0].(string)
		role, _ := v[1].(string)
		if existed = user != ""; !existed {
			return nil
		}
		_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.ZRem(ctx, s.userKey(user), id)
			p.ZRem(ctx, s.rolePrefix()+backbone.Tag(role), id)
			return nil
		})
		return err
	})
	return existed, err
}

func (s *redisStore) List(ctx context.Context, user string) ([]*Record, error) {
	var out []*Record
	err := s.m.Do(ctx, s.opList, func(ctx context.Context, c redis.UniversalClient) error {
		out = nil
		ids, err := c.ZRange(ctx, s.userKey(user), 0, -1).Result()
		if err != nil || len(ids) == 0 {
			return err
		}
		cmds := make([]*redis.SliceCmd, len(ids))
		_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.HMGet(ctx, s.sessKey(id), getFields...)
			}
			return nil
		})
		if err != nil {
			return err
		}
		now := s.clock()
		if s.now == nil {
			if now, err = c.Time(ctx).Result(); err != nil {
				return err
			}
		}
		var gone []any
		for i, cmd := range cmds {
			v := cmd.Val()
			strs := make([]string, len(v))
			for j, x := range v {
				strs[j], _ = x.(string)
			}
			r, perr := parseRecord(ids[i], strs)
			if perr != nil || !r.Live(now) {
				gone = append(gone, ids[i])
				continue
			}
			out = append(out, r)
		}
		if len(gone) > 0 {
			return c.ZRem(ctx, s.userKey(user), gone...).Err()
		}
		return nil
	})
	return out, err
}

// DeleteUser revokes all of the user's sessions except keep (see
// revokeBefore), keeping the marker for defaultLifetime.
func (s *redisStore) DeleteUser(ctx context.Context, user, keep string) ([]string, error) {
	_, removed, err := s.revokeBefore(ctx, user, keep, time.Time{}, defaultLifetime)
	return removed, err
}

// revokeBefore revokes the user's sessions created at or before before
// (zero: now, by the store's clock; a time later than now counts as now),
// except keep: it records the user's marker for lifetime, so that a
// session of the user written back later from an instance's memory is
// refused too (see restore), and deletes the sessions the index holds.
// It returns the marker's time and the ids of the sessions deleted. On an
// error the marker may be recorded and some sessions deleted: calling it
// again with the same arguments completes it.
func (s *redisStore) revokeBefore(ctx context.Context, user, keep string, before time.Time, lifetime time.Duration) (time.Time, []string, error) {
	var t int64
	var ids []string
	err := s.m.Do(ctx, s.opRevoke, func(ctx context.Context, c redis.UniversalClient) error {
		arg := int64(0)
		if !before.IsZero() {
			arg = before.UnixMilli()
		}
		v, err := s.revokeScript.Run(ctx, c, []string{s.markerKey(user), s.userKey(user)},
			s.nowArg(), arg, keep, ms(lifetime)).Slice()
		if err != nil {
			return err
		}
		if len(v) != 2 {
			return fmt.Errorf("revoke script returned %d values", len(v))
		}
		t, _ = v[0].(int64)
		list, _ := v[1].([]any)
		ids = ids[:0]
		for _, x := range list {
			if id, _ := x.(string); id != "" && id != keep {
				ids = append(ids, id)
			}
		}
		return nil
	})
	if err != nil {
		return time.Time{}, nil, err
	}
	var removed []string
	for _, id := range ids {
		existed, err := s.del(ctx, id)
		if err != nil {
			return fromMS(t), removed, err
		}
		if existed {
			removed = append(removed, id)
		}
	}
	if len(ids) > 0 {
		// Ids of sessions that had ended already linger in the index.
		err = s.m.Do(ctx, s.opRevoke, func(ctx context.Context, c redis.UniversalClient) error {
			members := make([]any, len(ids))
			for i, id := range ids {
				members[i] = id
			}
			return c.ZRem(ctx, s.userKey(user), members...).Err()
		})
	}
	return fromMS(t), removed, err
}

func (s *redisStore) Count(ctx context.Context) (map[string]int, error) {
	out := map[string]int{}
	err := s.m.Do(ctx, s.opCount, func(ctx context.Context, c redis.UniversalClient) error {
		v, err := s.countScript.Run(ctx, c, []string{s.rolesKey()}, s.nowArg(), s.rolePrefix()).Slice()
		if err != nil {
			return err
		}
		for i := 0; i+1 < len(v); i += 2 {
			role, _ := v[i].(string)
			n, _ := v[i+1].(int64)
			out[role] = int(n)
		}
		return nil
	})
	return out, err
}
