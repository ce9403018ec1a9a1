package session

import (
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/redisproc"
	"github.com/omnigate/omnigate/internal/redistest"
)

// persistent makes the test's redis-server keep its data when it is
// killed and restarted, as a production Redis with an append-only file
// does; without it every session would be gone after the restart anyway.
func persistent() redistest.Option {
	return func(o *redisproc.Options) {
		o.Persistent = true
		o.Args = append(o.Args, "--appendfsync", "always")
	}
}

// storeStats is the body of GET /admin/sessions/stats.
type storeStats struct {
	Store         string `json:"store"`
	PendingReplay int    `json:"pending_replay"`
	Cached        int    `json:"cached"`
}

func (g *gw) stats() storeStats {
	g.t.Helper()
	rec := httptest.NewRecorder()
	g.admin.ServeHTTP(rec, httptest.NewRequest("GET", "/admin/sessions/stats", nil))
	var st storeStats
	if err := json.Unmarshal(rec.Body.Bytes(), &st); rec.Code != 200 || err != nil {
		g.t.Fatalf("stats: %d %v %s", rec.Code, err, rec.Body)
	}
	return st
}

// onRedisAndReplayed reports whether g is back on Redis with everything
// it queued during an outage replayed.
func (g *gw) onRedisAndReplayed() bool {
	st := g.stats()
	return st.Store == "redis" && st.PendingReplay == 0
}

// sessionKey is the Redis key of a token's session (default key prefix).
func sessionKey(token string) string { return "omnigate:{s:" + recordID(token) + "}" }

func TestSessionWorksOnEveryInstanceAndSurvivesRestart(t *testing.T) {
	redis := redistest.Start(t)
	users := usersFile(t)
	a := newGateway(t, redis.URL(), users, "")
	b := newGateway(t, redis.URL(), users, "")
	tok := a.login("nina")
	if rec := b.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 || rec.Header().Get("X-User") != "nina" {
		t.Fatalf("session from A on B: %d", rec.Code)
	}
	// A gateway restart (a new process, here a new server) keeps it.
	a.srv.Shutdown(t.Context())
	c := newGateway(t, redis.URL(), users, "")
	if rec := c.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
		t.Fatalf("session after a gateway restart: %d", rec.Code)
	}
	// Logout on C ends it on B, once the broadcast reaches B's local
	// cache (its TTL never passes on the test's clock).
	c.do("POST", "/auth/logout", "", bearer(tok)...)
	waitFor(t, 30*time.Second, "logged-out session still valid on B", func() bool {
		return b.do("GET", "/fhir/R4/x", "", bearer(tok)...).Code == 401
	})
}

// TestRevokeAllReachesCachedInstances: B caches validated sessions for 30s
// on a clock that does not move, so only the broadcast can end them.
func TestRevokeAllReachesCachedInstances(t *testing.T) {
	redis := redistest.Start(t)
	users := usersFile(t)
	clk := newFakeClock()
	a := newGatewayAt(t, clk, redis.URL(), users, "local_cache: {enabled: true, ttl: 30s}")
	b := newGatewayAt(t, clk, redis.URL(), users, "local_cache: {enabled: true, ttl: 30s}")
	phone, laptop := a.login("alice"), a.login("alice")
	for _, tok := range []string{phone, laptop} {
		if rec := b.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
			t.Fatalf("warm B's cache: %d", rec.Code)
		}
	}
	if rec := a.do("DELETE", "/auth/sessions", "", bearer(laptop)...); rec.Code != 200 {
		t.Fatalf("revoke all: %d %s", rec.Code, rec.Body)
	}
	for _, tok := range []string{phone, laptop} {
		waitFor(t, 30*time.Second, "revocation never reached B's cache", func() bool {
			return b.do("GET", "/fhir/R4/x", "", bearer(tok)...).Code == 401
		})
	}
}

// TestRedisDownRejectsRedisOnlySessionsAndWritesBackMemorySessions: without
// the local cache, outage_sessions defaults to reject.
func TestRedisDownRejectsRedisOnlySessionsAndWritesBackMemorySessions(t *testing.T) {
	redis := redistest.Start(t)
	users := usersFile(t)
	a := newGateway(t, redis.URL(), users, "local_cache: {enabled: false}")
	b := newGateway(t, redis.URL(), users, "local_cache: {enabled: false}")
	before := a.login("nina")

	redis.Stop()
	// Sessions only Redis knows cannot be checked: 401 (fail closed).
	if rec := a.do("GET", "/fhir/R4/x", "", bearer(before)...); rec.Code != 401 {
		t.Fatalf("redis-only session during outage: %d", rec.Code)
	}
	// New logins get memory sessions that work at once on this instance.
	during := a.login("alice")
	if rec := a.do("GET", "/fhir/R4/x", "", bearer(during)...); rec.Code != 200 {
		t.Fatalf("memory session during outage: %d", rec.Code)
	}
	ping := httptest.NewRecorder()
	a.admin.ServeHTTP(ping, httptest.NewRequest("GET", "/ping", nil))
	if !strings.Contains(ping.Body.String(), "redis down") {
		t.Errorf("ping during outage does not say sessions are degraded:\n%s", ping.Body)
	}

	redis.Restart()
	// Once Redis is back, the memory session is written back: instance B,
	// which never saw it, accepts it; the older session works again too.
	waitFor(t, 30*time.Second, "memory session not written back to redis", func() bool {
		return b.do("GET", "/fhir/R4/x", "", bearer(during)...).Code == 200
	})
	if rec := a.do("GET", "/fhir/R4/x", "", bearer(during)...); rec.Code != 200 {
		t.Errorf("written-back session on A: %d", rec.Code)
	}
	// (redistest runs without persistence, so the session made before the
	// outage is gone with the restart, as it would be on a Redis without
	// persistence.)
	if rec := a.do("GET", "/fhir/R4/x", "", bearer(before)...); rec.Code != 401 {
		t.Errorf("session lost with a non-persistent redis: %d", rec.Code)
	}
}

func TestOutageCachedSessions(t *testing.T) {
	redis := redistest.Start(t)
	g := newGateway(t, redis.URL(), usersFile(t), "local_cache: {enabled: true, ttl: 5s}\noutage_sessions: cached")
	tok := g.login("nina")
	if rec := g.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
		t.Fatal(rec.Code)
	}
	redis.Stop()
	g.clock.Advance(time.Minute) // past the cache TTL, within the session's timeouts
	if rec := g.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
		t.Errorf("cached session during outage with outage_sessions: cached: %d", rec.Code)
	}
}

func TestDenyLoginsWhileRedisDown(t *testing.T) {
	redis := redistest.Start(t)
	g := newGateway(t, redis.URL(), usersFile(t), "on_redis_down: deny")
	redis.Stop()
	if rec := g.do("POST", "/auth/login", `{"username":"nina","password":"nina-password"}`); rec.Code != 503 {
		t.Errorf("login with on_redis_down: deny while down: %d", rec.Code)
	}
}

// TestOutageKeepsValidatedSessionsUntilTheirOwnTimeouts: with the default
// config, a Redis outage does not log out users whose sessions an instance
// has created or validated: each instance accepts them from its local
// cache until they end by their own timeouts, on its clock. A logout
// during the outage is honored at once where it was made, and replayed to
// Redis when Redis returns.
func TestOutageKeepsValidatedSessionsUntilTheirOwnTimeouts(t *testing.T) {
	redis := redistest.Start(t, persistent())
	users := usersFile(t)
	clk := newFakeClock()
	a := newGatewayAt(t, clk, redis.URL(), users, "")
	b := newGatewayAt(t, clk, redis.URL(), users, "")
	stay, leave := a.login("nina"), a.login("nina") // nurse: 15m idle
	for _, tok := range []string{stay, leave} {
		if rec := b.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
			t.Fatalf("session from A on B: %d", rec.Code)
		}
	}
	if n, err := redis.Do("EXISTS", sessionKey(leave)); n != "1" {
		t.Fatalf("session key not found in redis: %q %v", n, err)
	}

	redis.Stop()
	clk.Advance(14 * time.Minute) // past the cache TTL, within the idle timeout
	for name, g := range map[string]*gw{"A (made them)": a, "B (validated them)": b} {
		for _, tok := range []string{stay, leave} {
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
				t.Errorf("valid session refused on %s during the outage: %d %s", name, rec.Code, rec.Body)
			}
		}
	}
	if rec := b.do("POST", "/auth/logout", "", bearer(leave)...); rec.Code != 204 {
		t.Fatalf("logout on B during the outage: %d %s", rec.Code, rec.Body)
	}
	if rec := b.do("GET", "/fhir/R4/x", "", bearer(leave)...); rec.Code != 401 {
		t.Errorf("logged-out session still valid on B: %d", rec.Code)
	}
	clk.Advance(2 * time.Minute) // 16m without activity: past the idle timeout
	for name, g := range map[string]*gw{"A": a, "B": b} {
		if rec := g.do("GET", "/fhir/R4/x", "", bearer(stay)...); rec.Code != 401 {
			t.Errorf("session idle past its timeout still valid on %s: %d", name, rec.Code)
		}
	}

	redis.Restart()
	waitFor(t, 30*time.Second, "B not back on redis with its logout replayed", b.onRedisAndReplayed)
	if n, err := redis.Do("EXISTS", sessionKey(leave)); n != "0" {
		t.Errorf("logout made during the outage not replayed to redis: EXISTS %q %v", n, err)
	}
	waitFor(t, 30*time.Second, "session logged out on B during the outage still valid on A", func() bool {
		return a.do("GET", "/fhir/R4/x", "", bearer(leave)...).Code == 401
	})
}

// TestOutageAcceptsSessionsMadeElsewhere: an instance hears of every
// session another instance makes while Redis is up, so a session never
// used on B before an outage is accepted there during it; a logout on A
// before the outage reaches B's cache too.
func TestOutageAcceptsSessionsMadeElsewhere(t *testing.T) {
	redis := redistest.Start(t)
	users := usersFile(t)
	clk := newFakeClock()
	a := newGatewayAt(t, clk, redis.URL(), users, "")
	b := newGatewayAt(t, clk, redis.URL(), users, "")
	kept, gone := a.login("nina"), a.login("alice")
	waitFor(t, 30*time.Second, "B to hear of the sessions made on A", func() bool { return b.stats().Cached >= 2 })
	if rec := a.do("POST", "/auth/logout", "", bearer(gone)...); rec.Code != 204 {
		t.Fatalf("logout: %d", rec.Code)
	}
	waitFor(t, 30*time.Second, "B to hear of the logout", func() bool { return b.stats().Cached == 1 })

	redis.Stop()
	waitFor(t, 30*time.Second, "B to notice the outage", func() bool { return b.stats().Store == "memory" })
	clk.Advance(time.Minute) // past the cache TTL, within the idle timeout
	if rec := b.do("GET", "/fhir/R4/x", "", bearer(kept)...); rec.Code != 200 {
		t.Errorf("session made on A, never used on B, refused on B during the outage: %d %s", rec.Code, rec.Body)
	}
	if rec := b.do("GET", "/fhir/R4/x", "", bearer(gone)...); rec.Code != 401 {
		t.Errorf("session logged out before the outage accepted on B: %d", rec.Code)
	}
}

// TestRevokeAllDuringOutageIsReplayed: a revoke-all made while Redis is
// down answers that it is pending, holds on the instance that made it at
// once, and, once that instance is back on Redis and has replayed it,
// holds on every instance, B's local cache included, although the
// sessions come back with Redis (it keeps its data across the crash).
func TestRevokeAllDuringOutageIsReplayed(t *testing.T) {
	redis := redistest.Start(t, persistent())
	users := usersFile(t)
	clk := newFakeClock()
	a := newGatewayAt(t, clk, redis.URL(), users, "")
	b := newGatewayAt(t, clk, redis.URL(), users, "")
	revoked := []string{a.login("alice"), a.login("alice"), a.login("alice")}
	keep, gone := a.login("nina"), a.login("nina")
	revoked = append(revoked, gone)
	for _, tok := range append(revoked, keep) {
		if rec := b.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
			t.Fatalf("session from A on B: %d", rec.Code)
		}
	}

	redis.Stop()
	// A login on B during the outage, before the revoke-all: a memory
	// session that B writes back when Redis returns, which must not
	// revive it.
	revoked = append(revoked, b.login("alice"))
	rec := httptest.NewRecorder()
	a.admin.ServeHTTP(rec, httptest.NewRequest("DELETE", "/admin/users/alice/sessions", nil))
	var ans struct {
		Revoked int   `json:"revoked"`
		Pending *bool `json:"pending"`
	}
	json.Unmarshal(rec.Body.Bytes(), &ans)
	if rec.Code != 200 || ans.Pending == nil || !*ans.Pending || ans.Revoked != 3 {
		t.Errorf("admin revoke-all during the outage: %d %s; want 200, pending, the 3 sessions A holds", rec.Code, rec.Body)
	}
	rec = a.do("DELETE", "/auth/sessions?keep=current", "", bearer(keep)...)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"pending": true`) {
		t.Errorf("DELETE /auth/sessions?keep=current during the outage: %d %s", rec.Code, rec.Body)
	}
	for _, tok := range revoked[:4] { // those A knew
		if rec := a.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 401 {
			t.Errorf("revoked session still valid on A during the outage: %d", rec.Code)
		}
		// B cannot hear of it before Redis returns: its cache keeps the
		// session (the documented trade-off), which the replay must end.
		b.do("GET", "/fhir/R4/x", "", bearer(tok)...)
	}

	redis.Restart()
	waitFor(t, 30*time.Second, "A not back on redis with its revocations replayed", a.onRedisAndReplayed)
	waitFor(t, 30*time.Second, "B not back on redis", b.onRedisAndReplayed)
	for i, tok := range revoked {
		if n, err := redis.Do("EXISTS", sessionKey(tok)); n != "0" {
			t.Errorf("session %d still in redis after the replay: EXISTS %q %v", i, n, err)
		}
		for name, g := range map[string]*gw{"A": a, "B": b} {
			waitFor(t, 30*time.Second, "revoked session "+strconv.Itoa(i)+" still valid on "+name, func() bool {
				return g.do("GET", "/fhir/R4/x", "", bearer(tok)...).Code == 401
			})
		}
	}
	for name, g := range map[string]*gw{"A": a, "B": b} {
		if rec := g.do("GET", "/fhir/R4/x", "", bearer(keep)...); rec.Code != 200 {
			t.Errorf("the session kept by ?keep=current was revoked on %s: %d", name, rec.Code)
		}
	}
}
