package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/redistest"
)

func backends(t *testing.T) []struct{ name, url string } {
	return []struct{ name, url string }{{"memory", ""}, {"redis", redistest.Start(t).URL()}}
}

func TestHitMissAndTTL(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			up := newFakeFHIR(t)
			g := newGateway(t, be.url, up, "ttl: 5m\npatient_ttl: 5m")
			x, b1, rec := g.get("/fhir/R4/Observation/1", "u1")
			if x != "MISS" || rec.Code != 200 {
				t.Fatalf("first: %s %d", x, rec.Code)
			}
			x, b2, rec := g.get("/fhir/R4/Observation/1", "u1")
			if x != "HIT" || b2["call"] != b1["call"] || rec.Header().Get("Age") == "" ||
				rec.Header().Get("Content-Type") != "application/fhir+json" || rec.Header().Get("ETag") == "" {
				t.Fatalf("second: %s %v %v", x, b2, rec.Header())
			}
			// HEAD is answered from the GET entry.
			if rec := g.do("HEAD", "/fhir/R4/Observation/1", "", "X-Test-User", "u1", "X-Test-Role", "nurse"); rec.Header().Get("X-Cache") != "HIT" || rec.Body.Len() != 0 {
				t.Errorf("HEAD: %v %d bytes", rec.Header().Get("X-Cache"), rec.Body.Len())
			}
			g.clock.Advance(5*time.Minute - time.Millisecond)
			if x, _, _ := g.get("/fhir/R4/Observation/1", "u1"); x != "HIT" {
				t.Errorf("just before the TTL: %s", x)
			}
			g.clock.Advance(time.Millisecond)
			if x, _, _ := g.get("/fhir/R4/Observation/1", "u1"); x != "MISS" {
				t.Errorf("after the TTL: %s", x)
			}
			if n := up.count("/fhir/R4/Observation/1"); n != 2 {
				t.Errorf("upstream called %d times, want 2", n)
			}
		})
	}
}

// TestAuditEventsNotCached: the audit trail is written in process, where
// the cache cannot see it: its reads and searches are never cached.
func TestAuditEventsNotCached(t *testing.T) {
	up := newFakeFHIR(t)
	g := newGateway(t, "", up, "")
	for _, path := range []string{"/fhir/R4/AuditEvent/1", "/fhir/R4/AuditEvent?patient=85"} {
		for range 2 {
			if x, _, rec := g.get(path, "u1"); x != "BYPASS" || rec.Code != 200 {
				t.Errorf("%s: %s %d", path, x, rec.Code)
			}
		}
	}
	if x, _, _ := g.get("/fhir/R4/Observation/1", "u1"); x != "MISS" {
		t.Errorf("other types are cached: %s", x)
	}
}

func TestKeyNormalization(t *testing.T) {
	up := newFakeFHIR(t)
	g := newGateway(t, "", up, "")
	g.get("/fhir/R4/Observation?code=a&patient=85&code=b", "u1")
	for _, same := range []string{
		"/fhir/R4/Observation?patient=85&code=b&code=a",
		"/fhir/R4/Observation/?code=a&code=b&patient=85",
		"/fhir/R4/Observation?patient=85&code=a&code=b&_format=json",
	} {
		if x, _, _ := g.get(same, "u1"); x != "HIT" {
			t.Errorf("%s: %s, want HIT", same, x)
		}
	}
	for _, other := range []string{
		"/fhir/R4/Observation?code=a&patient=86&code=b",
		"/fhir/R4/Observation?code=a&patient=85",
	} {
		if x, _, _ := g.get(other, "u1"); x != "MISS" {
			t.Errorf("%s: %s, want MISS", other, x)
		}
	}
	if x, _, _ := g.get("/fhir/R4/Observation?code=a&patient=85&code=b", "u1", "Accept", "application/xml"); x != "MISS" {
		t.Errorf("another Accept shared the entry")
	}
}

func TestPartitions(t *testing.T) {
	up := newFakeFHIR(t)
	g := newGateway(t, "", up, "route_partitions: {analytics: role}")
	// user partition (the default): never shared between users.
	g.get("/fhir/R4/Patient/1", "alice")
	x, body, _ := g.get("/fhir/R4/Patient/1", "bob")
	if x != "MISS" || body["user"] != "bob" {
		t.Fatalf("bob got %s %v", x, body)
	}
	// role partition: shared by users of one role, not across roles.
	g.get("/analytics/report", "alice")
	if x, _, _ := g.get("/analytics/report", "bob"); x != "HIT" {
		t.Errorf("same role on a role-partitioned route: %s", x)
	}
	if rec := g.do("GET", "/analytics/report", "", "X-Test-User", "carol", "X-Test-Role", "physician"); rec.Header().Get("X-Cache") != "MISS" {
		t.Errorf("another role shared the entry: %s", rec.Header().Get("X-Cache"))
	}
	// Patients of one role never share (the partition holds the patient).
	g.do("GET", "/analytics/p", "", "X-Test-User", "p1", "X-Test-Role", "patient", "X-Test-Patient", "1")
	if rec := g.do("GET", "/analytics/p", "", "X-Test-User", "p2", "X-Test-Role", "patient", "X-Test-Patient", "2"); rec.Header().Get("X-Cache") != "MISS" {
		t.Errorf("two patients shared an entry")
	}
	// Credentials nobody checked: bypass.
	if rec := g.do("GET", "/fhir/R4/Patient/1", "", "Authorization", "Bearer x"); rec.Header().Get("X-Cache") != "BYPASS" {
		t.Errorf("credentials without identity: %s", rec.Header().Get("X-Cache"))
	}
}

// TestNoLeakUnderConcurrency: many users read the same paths at once,
// through coalescing and L1; every answer must be the requester's own.
func TestNoLeakUnderConcurrency(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			up := newFakeFHIR(t)
			up.delay.Store(int64(2 * time.Millisecond))
			g := newGateway(t, be.url, up, "l1: {enabled: true}")
			var wg sync.WaitGroup
			paths := []string{"/fhir/R4/Patient/1", "/fhir/R4/Observation?patient=1", "/fhir/R4/Patient/1/Observation"}
			for w := 0; w < 16; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 60; i++ {
						user := fmt.Sprintf("user%d", rand.IntN(6))
						path := paths[rand.IntN(len(paths))]
						_, body, rec := g.get(path, user)
						if rec.Code != 200 || body["user"] != user {
							t.Errorf("%s asked %s and got %v (%d)", user, path, body["user"], rec.Code)
							return
						}
						if rand.IntN(10) == 0 {
							g.do("PUT", "/fhir/R4/Patient/1", `{"resourceType":"Patient","id":"1"}`, "X-Test-User", user, "X-Test-Role", "nurse")
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}

func TestCacheControl(t *testing.T) {
	up := newFakeFHIR(t)
	g := newGateway(t, "", up, "")
	tests := []struct {
		name, path string
		hdr        []string
		second     string
	}{
		{"response no-store", "/fhir/R4/A/1?cc=no-store", nil, "MISS"},
		{"response private, user partition", "/fhir/R4/A/2?cc=private", nil, "HIT"},
		{"response max-age=0", "/fhir/R4/A/3?cc=max-age%3D0", nil, "MISS"},
		{"set-cookie", "/fhir/R4/A/4?cookie=1", nil, "MISS"},
		{"404 not cached", "/fhir/R4/A/5?status=404", nil, "MISS"},
		{"500 not cached", "/fhir/R4/A/6?status=500", nil, "MISS"},
		{"request no-store", "/fhir/R4/A/7", []string{"Cache-Control", "no-store"}, "BYPASS"},
		{"request no-cache refetches", "/fhir/R4/A/8", []string{"Cache-Control", "no-cache"}, "MISS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g.get(tt.path, "u", tt.hdr...)
			if x, _, _ := g.get(tt.path, "u", tt.hdr...); x != tt.second {
				t.Errorf("second request: %s, want %s", x, tt.second)
			}
		})
	}
	// private is never stored in a shared partition.
	g2 := newGateway(t, "", up, "partition: role")
	g2.get("/fhir/R4/B/1?cc=private", "u")
	if x, _, _ := g2.get("/fhir/R4/B/1?cc=private", "u"); x != "MISS" {
		t.Errorf("private response stored in the role partition: %s", x)
	}
	// s-maxage caps the TTL.
	g.get("/fhir/R4/C/1?cc=s-maxage%3D1", "u")
	g.clock.Advance(time.Second)
	if x, _, _ := g.get("/fhir/R4/C/1?cc=s-maxage%3D1", "u"); x != "MISS" {
		t.Errorf("s-maxage=1 not honoured: %s", x)
	}
}

func TestConditionalFromCache(t *testing.T) {
	up := newFakeFHIR(t)
	g := newGateway(t, "", up, "")
	_, _, first := g.get("/fhir/R4/Patient/9", "u")
	etag := first.Header().Get("ETag")
	_, _, rec := g.get("/fhir/R4/Patient/9", "u", "If-None-Match", etag)
	if rec.Code != http.StatusNotModified || rec.Header().Get("X-Cache") != "HIT" || rec.Body.Len() != 0 || rec.Header().Get("ETag") != etag {
		t.Errorf("If-None-Match: %d %v", rec.Code, rec.Header())
	}
	_, _, rec = g.get("/fhir/R4/Patient/9", "u", "If-Modified-Since", "Wed, 02 Sep 2026 10:00:00 GMT")
	if rec.Code != http.StatusNotModified {
		t.Errorf("If-Modified-Since after Last-Modified: %d", rec.Code)
	}
	_, _, rec = g.get("/fhir/R4/Patient/9", "u", "If-Modified-Since", "Mon, 31 Aug 2026 10:00:00 GMT")
	if rec.Code != http.StatusOK {
		t.Errorf("If-Modified-Since before Last-Modified: %d", rec.Code)
	}
	// A conditional miss is fetched whole, stored, and answered 304.
	_, _, rec = g.get("/fhir/R4/Patient/10", "u", "If-None-Match", `W/"0"`)
	if rec.Code != http.StatusNotModified || rec.Header().Get("X-Cache") != "MISS" {
		t.Errorf("conditional miss: %d %v", rec.Code, rec.Header())
	}
	if x, _, _ := g.get("/fhir/R4/Patient/10", "u"); x != "HIT" {
		t.Errorf("conditional miss not stored: %s", x)
	}
}

func TestConcurrentMissesCallHandlerOnce(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			up := newFakeFHIR(t)
			release := up.hold(t, "/fhir/R4/Observation")
			g := newGateway(t, be.url, up, "")
			var wg sync.WaitGroup
			var mu sync.Mutex
			results := map[string]int{} // "X-Cache call" -> how many
			for i := 0; i < 100; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					x, body, rec := g.get("/fhir/R4/Observation?code=x", "same-user")
					if rec.Code != 200 || body["user"] != "same-user" {
						t.Errorf("%d %v", rec.Code, body)
					}
					mu.Lock()
					results[fmt.Sprint(x, " ", body["call"])]++
					mu.Unlock()
				}()
			}
			// The handler answers only once one request is in it and the
			// 99 others wait for it.
			eventually(t, "one call in the handler, 99 waiting", 30*time.Second, func() bool {
				return up.count("/fhir/R4/Observation") == 1 && g.cache.flights.waiting() == 99
			})
			release()
			wg.Wait()
			if n := up.count("/fhir/R4/Observation"); n != 1 {
				t.Errorf("100 concurrent misses made %d handler calls, want 1; results %v; /ping %s", n, results, g.ping())
			}
		})
	}
}

// TestFollowerStopsWaitingWhenItsRequestEnds: a request waiting for
// another's call to the handler (same key) stops waiting when its own
// context ends, without calling the handler, and the leader still
// completes and stores its response.
func TestFollowerStopsWaitingWhenItsRequestEnds(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			const path = "/fhir/R4/Patient/1"
			up := newFakeFHIR(t)
			release := up.hold(t, path)
			g := newGateway(t, be.url, up, "")
			leader := g.getAsync(t.Context(), path, "u")
			eventually(t, "the leader in the handler", 30*time.Second, func() bool { return up.count(path) == 1 })

			// A follower whose client goes away while it waits.
			ctx, cancel := context.WithCancel(t.Context())
			gone := g.getAsync(ctx, path, "u")
			eventually(t, "the follower waiting", 30*time.Second, func() bool { return g.cache.flights.waiting() == 1 })
			cancel()
			if rec := await(t, "the follower after its client left", 10*time.Second, gone); rec.Code != 499 {
				t.Errorf("follower whose client left: %d, want 499", rec.Code)
			}
			// A follower whose deadline has passed.
			ctx, cancel = context.WithDeadline(t.Context(), time.Unix(1, 0))
			defer cancel()
			if rec := await(t, "the follower past its deadline", 10*time.Second, g.getAsync(ctx, path, "u")); rec.Code != http.StatusGatewayTimeout {
				t.Errorf("follower past its deadline: %d, want 504", rec.Code)
			}
			if n := up.count(path); n != 1 {
				t.Errorf("the followers called the handler: %d calls", n)
			}

			// The leader was not disturbed: it completes and stores.
			release()
			rec := await(t, "the leader", 30*time.Second, leader)
			var body map[string]any
			json.Unmarshal(rec.Body.Bytes(), &body)
			if rec.Code != 200 || rec.Header().Get("X-Cache") != "MISS" || body["user"] != "u" {
				t.Fatalf("leader: %d %s %v", rec.Code, rec.Header().Get("X-Cache"), body)
			}
			if x, b, _ := g.get(path, "u"); x != "HIT" || b["call"] != body["call"] {
				t.Errorf("after the leader: %s %v, want a HIT of call %v", x, b, body["call"])
			}
			if g.cache.flights.waiting() != 0 {
				t.Errorf("%d followers still counted as waiting", g.cache.flights.waiting())
			}
		})
	}
}

func TestStaleIfError(t *testing.T) {
	up := newFakeFHIR(t)
	g := newGateway(t, "", up, "ttl: 1m\npatient_ttl: 1m\nstale_if_error: 10m")
	g.get("/fhir/R4/Observation/5", "u")
	g.clock.Advance(2 * time.Minute)
	up.failing.Store(true)
	x, body, rec := g.get("/fhir/R4/Observation/5", "u")
	if x != "STALE" || rec.Code != 200 || body["call"] != float64(1) || !strings.Contains(rec.Header().Get("Warning"), "110") {
		t.Errorf("stale-if-error: %s %d %v %v", x, rec.Code, body, rec.Header())
	}
	// Without a stale entry the failure passes through.
	if rec := g.do("GET", "/fhir/R4/Observation/6", "", "X-Test-User", "u"); rec.Code != 500 {
		t.Errorf("failure without a stale entry: %d", rec.Code)
	}
}

func TestWritesInvalidate(t *testing.T) {
	up := newFakeFHIR(t)
	g := newGateway(t, "", up, "")
	read := func(path string) string { x, _, _ := g.get(path, "u"); return x }
	write := func(method, path, body string) {
		if rec := g.do(method, path, body, "X-Test-User", "u", "Content-Type", "application/fhir+json"); rec.Code/100 != 2 {
			t.Fatalf("%s %s: %d", method, path, rec.Code)
		}
	}
	warm := func(paths ...string) {
		for _, p := range paths {
			read(p)
			if read(p) != "HIT" {
				t.Fatalf("%s not cached", p)
			}
		}
	}
	const (
		pat85   = "/fhir/R4/Patient/85"
		obs1    = "/fhir/R4/Observation/1"
		obsQ    = "/fhir/R4/Observation?patient=85"
		comp85  = "/fhir/R4/Patient/85/Observation"
		comp99  = "/fhir/R4/Patient/99/Observation"
		condQ   = "/fhir/R4/Condition?patient=85"
		allType = "/fhir/R4?_type=Observation"
	)
	// A new Observation for patient 85: searches of its type and patient
	// 85's compartment change, patient 99's compartment and other types
	// do not.
	warm(pat85, obs1, obsQ, comp85, comp99, condQ, allType)
	write("POST", "/fhir/R4/Observation", `{"resourceType":"Observation","subject":{"reference":"Patient/85"}}`)
	for path, want := range map[string]string{pat85: "HIT", obs1: "HIT", obsQ: "MISS", comp85: "MISS", comp99: "HIT", condQ: "HIT", allType: "MISS"} {
		if got := read(path); got != want {
			t.Errorf("after POST Observation for 85: %s %s, want %s", path, got, want)
		}
	}
	// Updating the patient changes its read and its compartment.
	warm(pat85, comp85, comp99)
	write("PUT", pat85, `{"resourceType":"Patient","id":"85"}`)
	for path, want := range map[string]string{pat85: "MISS", comp85: "MISS", comp99: "HIT"} {
		if got := read(path); got != want {
			t.Errorf("after PUT Patient/85: %s %s, want %s", path, got, want)
		}
	}
	// A DELETE whose compartment is unknown invalidates every compartment.
	warm(obs1, comp85, comp99, condQ)
	write("DELETE", obs1, "")
	for path, want := range map[string]string{obs1: "MISS", comp85: "MISS", comp99: "MISS", condQ: "HIT"} {
		if got := read(path); got != want {
			t.Errorf("after DELETE Observation/1: %s %s, want %s", path, got, want)
		}
	}
	// Each entry of a transaction counts.
	warm(pat85, condQ, obsQ)
	write("POST", "/fhir/R4", `{"resourceType":"Bundle","type":"transaction","entry":[
		{"resource":{"resourceType":"Condition","subject":{"reference":"Patient/85"}},"request":{"method":"POST","url":"Condition"}},
		{"resource":{"resourceType":"Patient","id":"85"},"request":{"method":"PUT","url":"Patient/85"}}]}`)
	for path, want := range map[string]string{pat85: "MISS", condQ: "MISS", obsQ: "HIT"} {
		if got := read(path); got != want {
			t.Errorf("after a transaction: %s %s, want %s", path, got, want)
		}
	}
	// A failed write invalidates nothing; POST _search is a read.
	warm(obsQ)
	up.failing.Store(true)
	g.do("PUT", "/fhir/R4/Observation/2", `{}`, "X-Test-User", "u")
	up.failing.Store(false)
	g.do("POST", "/fhir/R4/Observation/_search", "code=x", "X-Test-User", "u", "Content-Type", "application/x-www-form-urlencoded")
	if got := read(obsQ); got != "HIT" {
		t.Errorf("after a failed write and a POST search: %s", got)
	}
	// Writes through a non-FHIR route invalidate that route.
	read("/analytics/r")
	g.do("POST", "/analytics/r", `{}`, "X-Test-User", "u")
	if got := read("/analytics/r"); got != "MISS" {
		t.Errorf("analytics after a write: %s", got)
	}
}

func TestCrossInstanceInvalidation(t *testing.T) {
	redis := redistest.Start(t)
	up := newFakeFHIR(t)
	a := newGateway(t, redis.URL(), up, "l1: {enabled: true, ttl: 30s}")
	b := newGateway(t, redis.URL(), up, "l1: {enabled: true, ttl: 30s}")
	waitRedisUp(t, a, b)
	b.get("/fhir/R4/Patient/7", "u")
	if x, _, _ := b.get("/fhir/R4/Patient/7", "u"); x != "HIT" {
		t.Fatalf("B not warm: %s", x)
	}
	// A write on A: B's L1 holds the entry for 30s, so only the broadcast
	// (or the version check on Redis) can make B miss sooner.
	a.do("PUT", "/fhir/R4/Patient/7", `{"resourceType":"Patient","id":"7"}`, "X-Test-User", "u")
	d := eventually(t, "B sees A's write", 30*time.Second, func() bool {
		x, _, _ := b.get("/fhir/R4/Patient/7", "u")
		return x == "MISS"
	})
	t.Logf("write on A invalidated B's L1 entry after %s", d)
	// And A's own next read sees it at once.
	a.get("/fhir/R4/Patient/7", "u")
	a.do("PUT", "/fhir/R4/Patient/7", `{"resourceType":"Patient","id":"7"}`, "X-Test-User", "u")
	if x, _, _ := a.get("/fhir/R4/Patient/7", "u"); x != "MISS" {
		t.Errorf("same instance after its own write: %s", x)
	}
}

func TestRedisDownMidTest(t *testing.T) {
	redis := redistest.Start(t)
	up := newFakeFHIR(t)
	g := newGateway(t, redis.URL(), up, "l1: {enabled: true}")
	g.get("/fhir/R4/Patient/3", "alice")
	redis.Stop()
	for i := 0; i < 20; i++ {
		for _, user := range []string{"alice", "bob"} {
			_, body, rec := g.get("/fhir/R4/Patient/3", user)
			if rec.Code != 200 || body["user"] != user {
				t.Fatalf("during the outage %s got %d %v", user, rec.Code, body)
			}
		}
	}
	// Writes during the outage are honoured in memory...
	g.get("/fhir/R4/Patient/4", "alice")
	g.do("PUT", "/fhir/R4/Patient/4", `{}`, "X-Test-User", "alice")
	if x, _, _ := g.get("/fhir/R4/Patient/4", "alice"); x != "MISS" {
		t.Errorf("write during the outage not honoured: %s", x)
	}
	redis.Restart()
	eventually(t, "redis back", 30*time.Second, func() bool { return g.srvCacheUp() })
	// ...and entries made before it are stale afterwards.
	if x, body, _ := g.get("/fhir/R4/Patient/3", "alice"); x != "MISS" || body["user"] != "alice" {
		t.Errorf("after recovery: %s %v", x, body)
	}
}

// TestOutageBoundsStalenessAcrossInstances: during a Redis outage the
// instances' memories do not hear of each other's writes, so an entry is
// served from memory only until it is outage_max_age old (default 5s) on
// the serving instance's clock: before that B serves its copy, from then on
// it fetches the response again and sees A's write.
func TestOutageBoundsStalenessAcrossInstances(t *testing.T) {
	const outageMaxAge = 5 * time.Second // the documented default
	for _, tt := range []struct{ name, yaml string }{{"l1 off", ""}, {"l1 on", "l1: {enabled: true}"}} {
		t.Run(tt.name, func(t *testing.T) {
			const path = "/fhir/R4/Patient/7"
			redis := redistest.Start(t)
			up := newFakeFHIR(t)
			a := newGateway(t, redis.URL(), up, tt.yaml)
			b := newGateway(t, redis.URL(), up, tt.yaml)
			waitRedisUp(t, a, b)
			a.get(path, "u")
			if x, _, _ := b.get(path, "u"); x != "HIT" {
				t.Fatalf("B on Redis: %s, want HIT", x)
			}

			redis.Stop()
			for name, g := range map[string]*gw{"A": a, "B": b} {
				eventually(t, name+" notices the outage", 30*time.Second, func() bool {
					g.get("/fhir/R4/Basic/probe", "u") // a read that needs Redis
					return g.srvCacheDown()
				})
			}
			// Both cache the read in memory.
			a.get(path, "u")
			_, old, _ := b.get(path, "u")
			if x, body, _ := b.get(path, "u"); x != "HIT" || body["call"] != old["call"] {
				t.Fatalf("B during the outage: %s %v, want a HIT of %v", x, body, old)
			}

			if rec := a.do("PUT", path, `{"resourceType":"Patient","id":"7"}`, "X-Test-User", "u"); rec.Code != 200 {
				t.Fatalf("write through A: %d", rec.Code)
			}
			if x, body, _ := a.get(path, "u"); x != "MISS" || body["version"] == old["version"] {
				t.Errorf("A after its own write: %s %v", x, body)
			}

			// B cannot know of the write: it serves its copy until it is
			// outage_max_age old, and not after.
			b.clock.Advance(outageMaxAge - time.Millisecond)
			if x, body, _ := b.get(path, "u"); x != "HIT" || body["call"] != old["call"] {
				t.Errorf("B just before the cap: %s %v, want a HIT of %v", x, body, old)
			}
			b.clock.Advance(time.Millisecond)
			x, fresh, _ := b.get(path, "u")
			if x != "MISS" || fresh["version"] == old["version"] {
				t.Errorf("B once the cap has passed: %s %v, want a MISS with A's write (not version %v)", x, fresh, old["version"])
			}
			// The new copy is served from memory again, for as long.
			if x, body, _ := b.get(path, "u"); x != "HIT" || body["call"] != fresh["call"] {
				t.Errorf("B after fetching again: %s %v", x, body)
			}

			rec := httptest.NewRecorder()
			b.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/admin/cache/stats", nil))
			if !strings.Contains(rec.Body.String(), `"outage_max_age": "5s"`) || !strings.Contains(rec.Body.String(), `"outage_refetches": 1`) {
				t.Errorf("stats do not show the cap and the refetch:\n%s", rec.Body)
			}
		})
	}
}

func TestOutageMaxAgeValidated(t *testing.T) {
	if d := Defaults().OutageMaxAge; d != 5*time.Second {
		t.Errorf("default outage_max_age %s, want 5s", d)
	}
	for _, d := range []time.Duration{0, -time.Second} {
		cfg := Defaults()
		cfg.OutageMaxAge = d
		err := cfg.Validate()
		var fe *gateway.FieldError
		if !errors.As(err, &fe) || fe.Key != "outage_max_age" {
			t.Errorf("outage_max_age %s: %v, want an error on outage_max_age", d, err)
		}
	}
	if _, err := gateway.Parse("test.yaml", []byte("plugins:\n  cache: {type: cache, outage_max_age: 0s}\n"), nil); err == nil ||
		!strings.Contains(err.Error(), "outage_max_age") {
		t.Errorf("config with outage_max_age: 0s: %v", err)
	}
}

func TestSeparateCacheRedis(t *testing.T) {
	state, cacheRedis := redistest.Start(t), redistest.Start(t)
	up := newFakeFHIR(t)
	g := newGatewayText(t, "redis: {url: "+state.URL()+", read_timeout: 1s}\ncache_redis: {url: "+cacheRedis.URL()+", read_timeout: 1s}\n", up, "")
	g.get("/fhir/R4/Patient/1", "u")
	if x, _, _ := g.get("/fhir/R4/Patient/1", "u"); x != "HIT" {
		t.Fatalf("second read: %s", x)
	}
	if keys, _ := cacheRedis.Do("KEYS", "*ce:*"); keys == "" {
		t.Error("no entry in the cache's Redis")
	}
	if keys, _ := state.Do("KEYS", "*ce:*"); keys != "" {
		t.Errorf("cache entries in the state Redis: %s", keys)
	}
	ping := g.ping()
	if !strings.Contains(ping, `"redis-cache"`) {
		t.Errorf("/ping does not show the cache's Redis:\n%s", ping)
	}
}
