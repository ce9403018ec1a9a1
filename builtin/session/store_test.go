package session

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/backbone"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/redistest"
)

// storeUnderTest builds a Store on memory or on a real redis-server, with
// its times from clk.
type storeUnderTest struct {
	name string
	make func(t *testing.T, clk *fakeClock) Store
}

func stores() []storeUnderTest {
	return []storeUnderTest{
		{"memory", func(t *testing.T, clk *fakeClock) Store { return newMemStore(1000, clk.Now) }},
		{"redis", func(t *testing.T, clk *fakeClock) Store {
			srv := redistest.Start(t)
			return newRedisStore(context.Background(), testManager(t, srv.URL()), clk.Now)
		}},
	}
}

func testManager(t *testing.T, url string) *backbone.Manager {
	t.Helper()
	cfg := gateway.DefaultConfig().Redis
	cfg.URL = url
	cfg.ReconnectMin, cfg.ReconnectMax = 20*time.Millisecond, 200*time.Millisecond
	// Generous timeouts: a loaded test machine must not look like an outage.
	cfg.ReadTimeout, cfg.WriteTimeout, cfg.DialTimeout = time.Second, time.Second, time.Second
	m, err := backbone.New(context.Background(), cfg, backbone.Options{Heartbeat: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func rec(user, role string, idle time.Duration) *Record {
	_, id := newToken()
	return &Record{ID: id, UserID: user, Role: role, Scopes: []string{"user/*.rs", "openid"}, PatientID: "85",
		FHIRUser: "Practitioner/12", Method: "password", IdleTimeout: idle, UserAgent: "curl/8", ClientIP: "127.0.0.1"}
}

// TestStoreContract runs the same checks against memory and Redis. Time
// moves only when a check advances the stores' clock; timeouts are minutes
// long, so Redis's own key expiry (on the real clock) never decides.
func TestStoreContract(t *testing.T) {
	for _, st := range stores() {
		t.Run(st.name, func(t *testing.T) {
			ctx := context.Background()
			t.Run("create get delete", func(t *testing.T) {
				clk := newFakeClock()
				s := st.make(t, clk)
				r := rec("alice", "nurse", time.Minute)
				if _, err := s.Create(ctx, r, time.Hour, 0); err != nil {
					t.Fatal(err)
				}
				if !r.Created.Equal(testT0) || !r.Expires.Equal(testT0.Add(time.Hour)) {
					t.Errorf("times not set from the store's clock: %+v", r)
				}
				got, err := s.Get(ctx, r.ID, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if got.UserID != "alice" || got.Role != "nurse" || !slices.Equal(got.Scopes, r.Scopes) ||
					got.PatientID != "85" || got.UserAgent != "curl/8" || got.ClientIP != "127.0.0.1" ||
					got.Method != "password" || got.IdleTimeout != time.Minute || got.FHIRUser != "Practitioner/12" {
					t.Errorf("got %+v", got)
				}
				if _, err := s.Get(ctx, "0000", time.Minute); !errors.Is(err, ErrNotFound) {
					t.Errorf("unknown id: %v", err)
				}
				if err := s.Delete(ctx, r.ID); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Get(ctx, r.ID, time.Minute); !errors.Is(err, ErrNotFound) {
					t.Errorf("after delete: %v", err)
				}
				if err := s.Delete(ctx, r.ID); err != nil {
					t.Errorf("deleting twice: %v", err)
				}
			})
			t.Run("idle expiry and touch", func(t *testing.T) {
				clk := newFakeClock()
				s := st.make(t, clk)
				r := rec("bob", "physician", 10*time.Minute)
				s.Create(ctx, r, 12*time.Hour, 0)
				// Activity every 5m keeps it alive past its idle timeout.
				for i := 0; i < 5; i++ {
					clk.Advance(5 * time.Minute)
					got, err := s.Get(ctx, r.ID, time.Minute)
					if err != nil {
						t.Fatalf("active session ended after %d touches: %v", i, err)
					}
					if !got.LastSeen.Equal(clk.Now()) {
						t.Errorf("touch %d: last seen %s, want %s", i, got.LastSeen, clk.Now())
					}
				}
				clk.Advance(10 * time.Minute)
				if _, err := s.Get(ctx, r.ID, time.Minute); !errors.Is(err, ErrNotFound) {
					t.Errorf("idle session still valid: %v", err)
				}
			})
			t.Run("touch is rate limited", func(t *testing.T) {
				clk := newFakeClock()
				s := st.make(t, clk)
				r := rec("bob", "physician", 10*time.Minute)
				s.Create(ctx, r, 12*time.Hour, 0)
				clk.Advance(5 * time.Minute)
				// Not due: the check does not count as activity.
				if _, err := s.Get(ctx, r.ID, time.Hour); err != nil {
					t.Fatal(err)
				}
				clk.Advance(5 * time.Minute)
				if _, err := s.Get(ctx, r.ID, time.Hour); !errors.Is(err, ErrNotFound) {
					t.Errorf("a check that was not a touch extended the session: %v", err)
				}
			})
			t.Run("absolute expiry", func(t *testing.T) {
				clk := newFakeClock()
				s := st.make(t, clk)
				r := rec("carol", "admin", time.Hour)
				s.Create(ctx, r, 40*time.Minute, 0)
				for i := 0; i < 3; i++ {
					clk.Advance(10 * time.Minute)
					if _, err := s.Get(ctx, r.ID, 0); err != nil {
						t.Fatal(err)
					}
				}
				clk.Advance(10 * time.Minute)
				if _, err := s.Get(ctx, r.ID, 0); !errors.Is(err, ErrNotFound) {
					t.Errorf("session valid at its absolute expiry despite activity: %v", err)
				}
			})
			t.Run("list, max sessions, delete user", func(t *testing.T) {
				clk := newFakeClock()
				s := st.make(t, clk)
				var ids []string
				for i := 0; i < 4; i++ {
					r := rec("dave", "nurse", time.Minute)
					evicted, err := s.Create(ctx, r, time.Hour, 3)
					if err != nil {
						t.Fatal(err)
					}
					ids = append(ids, r.ID)
					if i == 3 && !slices.Equal(evicted, ids[:1]) {
						t.Errorf("evicted %v, want the oldest %v", evicted, ids[:1])
					}
					clk.Advance(time.Second) // distinct creation times
				}
				other := rec("erin", "patient", time.Minute)
				s.Create(ctx, other, time.Hour, 0)
				list, err := s.List(ctx, "dave")
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, r := range list {
					got = append(got, r.ID)
				}
				if !slices.Equal(got, ids[1:]) {
					t.Errorf("list %v, want %v (oldest first, evicted gone)", got, ids[1:])
				}
				if _, err := s.Get(ctx, ids[0], time.Minute); !errors.Is(err, ErrNotFound) {
					t.Errorf("evicted session still valid")
				}
				counts, _ := s.Count(ctx)
				if counts["nurse"] != 3 || counts["patient"] != 1 {
					t.Errorf("counts %v", counts)
				}
				removed, err := s.DeleteUser(ctx, "dave", ids[3])
				if err != nil {
					t.Fatal(err)
				}
				slices.Sort(removed)
				want := slices.Clone(ids[1:3])
				slices.Sort(want)
				if !slices.Equal(removed, want) {
					t.Errorf("removed %v, want %v", removed, want)
				}
				if _, err := s.Get(ctx, ids[3], time.Minute); err != nil {
					t.Errorf("kept session gone: %v", err)
				}
				if _, err := s.Get(ctx, other.ID, time.Minute); err != nil {
					t.Errorf("other user's session gone: %v", err)
				}
				counts, _ = s.Count(ctx)
				if counts["nurse"] != 1 {
					t.Errorf("counts after delete user %v", counts)
				}
			})
			t.Run("list drops ended sessions", func(t *testing.T) {
				clk := newFakeClock()
				s := st.make(t, clk)
				short := rec("fay", "nurse", time.Minute)
				long := rec("fay", "nurse", time.Hour)
				s.Create(ctx, short, 12*time.Hour, 0)
				s.Create(ctx, long, 12*time.Hour, 0)
				clk.Advance(2 * time.Minute)
				list, _ := s.List(ctx, "fay")
				if len(list) != 1 || list[0].ID != long.ID {
					t.Errorf("list %d sessions, want only the live one", len(list))
				}
				counts, _ := s.Count(ctx)
				if counts["nurse"] != 1 {
					t.Errorf("count includes an ended session: %v", counts)
				}
			})
		})
	}
}

func TestRedisStoreKeepsNoToken(t *testing.T) {
	srv := redistest.Start(t)
	s := newRedisStore(context.Background(), testManager(t, srv.URL()), nil)
	token, id := newToken()
	r := rec("gus", "nurse", time.Minute)
	r.ID = id
	if _, err := s.Create(context.Background(), r, time.Hour, 0); err != nil {
		t.Fatal(err)
	}
	keys, _ := srv.Do("KEYS", "*")
	for _, k := range []string{keys} {
		if strings.Contains(k, token) {
			t.Fatal("a key holds the token")
		}
	}
	dump, _ := srv.Do("HGETALL", s.sessKey(id))
	if strings.Contains(dump, token) {
		t.Fatal("the record holds the token")
	}
	if ttl, _ := srv.Do("PTTL", s.sessKey(id)); ttl == "-1" || ttl == "-2" {
		t.Fatalf("session key has no TTL (%s): Redis must expire it by itself", ttl)
	}
}

// TestRedisRevokeAllBarsLaterWriteBacks: a session made in an instance's
// memory during an outage, and written back after a revoke-all of its
// user recorded in Redis, is refused if the revoke-all covers it.
func TestRedisRevokeAllBarsLaterWriteBacks(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	clk := newFakeClock()
	s := newRedisStore(ctx, testManager(t, srv.URL()), clk.Now)
	mk := func(created time.Time) *Record {
		r := rec("gus", "nurse", time.Hour)
		r.Created, r.LastSeen, r.Expires = created, created, created.Add(12*time.Hour)
		return r
	}
	before, kept := mk(testT0.Add(-time.Minute)), mk(testT0.Add(-time.Minute))
	after := mk(testT0.Add(time.Second))
	at, _, err := s.revokeBefore(ctx, "gus", kept.ID, testT0, time.Hour)
	if err != nil || !at.Equal(testT0) {
		t.Fatalf("revokeBefore: %s %v", at, err)
	}
	clk.Advance(time.Minute)
	if err := s.restore(ctx, before); !errors.Is(err, errRevokedSession) {
		t.Errorf("write-back of a session the revoke-all covers: %v", err)
	}
	if _, err := s.Get(ctx, before.ID, time.Minute); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoked session readable after its write-back: %v", err)
	}
	for name, r := range map[string]*Record{"the kept session": kept, "a later session": after} {
		if err := s.restore(ctx, r); err != nil {
			t.Errorf("write-back of %s: %v", name, err)
		}
		if _, err := s.Get(ctx, r.ID, time.Minute); err != nil {
			t.Errorf("%s refused: %v", name, err)
		}
	}
	// An older revoke-all replayed late does not move the marker back.
	if at, _, _ := s.revokeBefore(ctx, "gus", "", testT0.Add(-time.Hour), time.Hour); !at.Equal(testT0.Add(-time.Hour)) {
		t.Errorf("replayed marker time %s", at)
	}
	if m, _ := srv.Do("HGET", s.markerKey("gus"), "t"); m != strconv.FormatInt(testT0.UnixMilli(), 10) {
		t.Errorf("marker moved back to %s", m)
	}
}

func TestPatientOf(t *testing.T) {
	for _, tc := range []struct{ patient, fhirUser, want string }{
		{"85", "Patient/9", "85"},
		{"", "Patient/9", "9"},
		{"", "https://fhir.example/fhir/Patient/9", "9"},
		{"", "Practitioner/12", ""},
		{"", "RelatedPatient/9", ""},
		{"", "Patient/", ""},
		{"", "Patient/a b", ""},
		{"", "", ""},
	} {
		if got := patientOf(tc.patient, tc.fhirUser); got != tc.want {
			t.Errorf("patientOf(%q, %q) = %q, want %q", tc.patient, tc.fhirUser, got, tc.want)
		}
	}
}
