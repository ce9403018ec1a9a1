package session

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/redistest"
)

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
	// Logout on C ends it on B.
	c.do("POST", "/auth/logout", "", bearer(tok)...)
	if rec := b.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 401 {
		t.Fatalf("logged-out session still valid on B: %d", rec.Code)
	}
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

func TestRedisDownRejectsRedisOnlySessionsAndWritesBackMemorySessions(t *testing.T) {
	redis := redistest.Start(t)
	users := usersFile(t)
	a := newGateway(t, redis.URL(), users, "")
	b := newGateway(t, redis.URL(), users, "")
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
