package session

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/redistest"
)

// editUser rewrites the directory at path with fn applied to user.
func editUser(t *testing.T, path, user string, fn func(*User)) {
	t.Helper()
	users, err := readUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range users {
		if users[i].Username == user {
			fn(&users[i])
		}
	}
	if err := writeUsers(path, users); err != nil {
		t.Fatal(err)
	}
}

// copyFile copies the directory, for an instance that reads its own copy.
func copyFile(t *testing.T, from string) string {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	to := filepath.Join(t.TempDir(), "users.yaml")
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return to
}

// TestSessionsFollowTheUserDirectory: two instances on one Redis, local
// caches on (their TTL never passes on the test's clock, so no store
// lookup can end a cached session by itself). A change to the directory
// ends the sessions it no longer grants on both: B reads a copy of the
// directory that is not changed (another host whose copy lags), so on B
// only what A sent through Redis can end them.
func TestSessionsFollowTheUserDirectory(t *testing.T) {
	redis := redistest.Start(t)
	clk := newFakeClock()
	users := usersFile(t)
	a := newGatewayAt(t, clk, redis.URL(), users, "")
	bUsers := copyFile(t, users)
	b := newGatewayAt(t, clk, redis.URL(), bUsers, "")
	ok := func(g *gw, tok string) int { return g.do("GET", "/fhir/R4/x", "", bearer(tok)...).Code }

	nina, alice, pat := a.login("nina"), a.login("alice"), a.login("pat")
	for _, tok := range []string{nina, alice, pat} {
		if ok(a, tok) != 200 || ok(b, tok) != 200 {
			t.Fatalf("sessions before the change: %d %d", ok(a, tok), ok(b, tok))
		}
	}
	if b.stats().Cached < 3 {
		t.Fatalf("B does not cache the sessions: %+v", b.stats())
	}

	t.Run("disabled", func(t *testing.T) {
		editUser(t, users, "nina", func(u *User) { u.Disabled = true })
		waitFor(t, 30*time.Second, "disabled user's session still valid", func() bool {
			return ok(a, nina) == 401 && ok(b, nina) == 401
		})
		if rec := a.do("POST", "/auth/login", `{"username":"nina","password":"nina-password"}`); rec.Code != 401 {
			t.Errorf("disabled user logs in: %d", rec.Code)
		}
		if ok(a, pat) != 200 || ok(b, pat) != 200 {
			t.Errorf("another user's session ended")
		}
	})

	t.Run("role changed", func(t *testing.T) {
		editUser(t, users, "alice", func(u *User) { u.Role = "nurse"; u.Scopes = []string{"user/*.rs"} })
		waitFor(t, 30*time.Second, "session with the old role still valid", func() bool {
			return ok(a, alice) == 401 && ok(b, alice) == 401
		})
		// A login now gets the new role, and keeps it.
		fresh := a.login("alice")
		rec := a.do("GET", "/fhir/R4/x", "", bearer(fresh)...)
		if rec.Code != 200 || rec.Header().Get("X-Role") != "nurse" {
			t.Fatalf("login after the change: %d %s", rec.Code, rec.Header().Get("X-Role"))
		}
		// B's copy still says physician: B grants no nurse session until
		// its copy has the change too, and then keeps the new session.
		if ok(b, fresh) != 401 {
			t.Errorf("a session B's directory does not grant: %d", ok(b, fresh))
		}
		data, _ := os.ReadFile(users)
		if err := os.WriteFile(bUsers+".new", data, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Rename(bUsers+".new", bUsers)
		waitFor(t, 30*time.Second, "B refuses the new session after its copy caught up", func() bool {
			return ok(b, fresh) == 200
		})
		if ok(a, fresh) != 200 {
			t.Errorf("the new session ended when B read the change")
		}
	})

	t.Run("scopes changed", func(t *testing.T) {
		editUser(t, users, "pat", func(u *User) { u.Scopes = []string{"patient/Observation.rs"} })
		waitFor(t, 30*time.Second, "session with the old scopes still valid", func() bool {
			return ok(a, pat) == 401 && ok(b, pat) == 401
		})
	})
}

// TestChangedUserIsRefusedAtOnceByTheInstanceThatReadTheChange: while
// Redis is down no broadcast arrives, yet the instance that read the new
// directory refuses the session it holds in its cache.
func TestChangedUserIsRefusedAtOnceByTheInstanceThatReadTheChange(t *testing.T) {
	redis := redistest.Start(t)
	users := usersFile(t)
	g := newGateway(t, redis.URL(), users, "")
	tok := g.login("nina")
	if rec := g.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
		t.Fatalf("before: %d", rec.Code)
	}
	redis.Stop()
	waitFor(t, 30*time.Second, "redis still up", func() bool { return g.stats().Store == "memory" })
	if rec := g.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
		t.Fatalf("cached session during the outage: %d", rec.Code)
	}
	editUser(t, users, "nina", func(u *User) { u.Disabled = true })
	waitFor(t, 30*time.Second, "disabled user's cached session still valid during the outage", func() bool {
		return g.do("GET", "/fhir/R4/x", "", bearer(tok)...).Code == 401
	})
}

// TestIdleShorterThanTouchIntervalRejected: activity is written at most
// once per touch_interval, so a shorter idle timeout would end active
// sessions; config check names the key.
func TestIdleShorterThanTouchIntervalRejected(t *testing.T) {
	_, err := parseSessionConfig("touch_interval: 2m\nroles:\n  nurse: {idle: 1m, absolute: 1h}\n")
	if err == nil || !strings.Contains(err.Error(), "plugins.session.roles.nurse.idle: must not be shorter than touch_interval (2m0s)") {
		t.Fatalf("error %v", err)
	}
	if _, err := parseSessionConfig("touch_interval: 1m\nroles:\n  nurse: {idle: 1m, absolute: 1h}\n"); err != nil {
		t.Fatalf("idle equal to touch_interval: %v", err)
	}
}
