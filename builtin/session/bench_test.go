package session

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"testing"

	"github.com/omnigate/omnigate/internal/redistest"
)

// redisCalls returns how many commands of each kind Redis has run.
func redisCalls(t testing.TB, srv *redistest.Server) map[string]int {
	t.Helper()
	out, err := srv.Do("INFO", "commandstats")
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	for _, m := range regexp.MustCompile(`cmdstat_(\w+):calls=(\d+)`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[2])
		calls[m[1]] = n
	}
	return calls
}

func total(m map[string]int, skip ...string) int {
	n := 0
	for k, v := range m {
		skipped := false
		for _, s := range skip {
			skipped = skipped || k == s
		}
		if !skipped {
			n += v
		}
	}
	return n
}

// TestRedisRoundTripsPerRequest counts the commands Redis runs for 200
// authenticated requests: one script call each without the local cache,
// next to none with it.
func TestRedisRoundTripsPerRequest(t *testing.T) {
	for _, tc := range []struct {
		name      string
		yaml      string
		maxPer100 int
	}{
		{"no local cache", "local_cache: {enabled: false}", 100},
		{"local cache", "local_cache: {enabled: true, ttl: 30s}", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			redis := redistest.Start(t)
			g := newGateway(t, redis.URL(), usersFile(t), tc.yaml)
			tok := g.login("nina")
			g.do("GET", "/fhir/R4/x", "", bearer(tok)...)
			before := redisCalls(t, redis)
			const n = 200
			for i := 0; i < n; i++ {
				if rec := g.do("GET", "/fhir/R4/x", "", bearer(tok)...); rec.Code != 200 {
					t.Fatal(rec.Code)
				}
			}
			after := redisCalls(t, redis)
			// Commands run inside the script (HMGET, HSET, PEXPIRE, TIME)
			// are counted by Redis too but cost no round trip; heartbeats
			// (the instance registry) are not per request.
			skip := []string{"hmget", "hset", "pexpire", "time", "del", "zadd", "zremrangebyscore", "zcard", "info", "ping"}
			calls := total(after, skip...) - total(before, skip...)
			t.Logf("%d requests: %d Redis round trips (%.2f per request)", n, calls, float64(calls)/n)
			if calls*100 > tc.maxPer100*n {
				t.Errorf("%d commands for %d requests; want at most %d per 100", calls, n, tc.maxPer100)
			}
		})
	}
}

// BenchmarkSessionCheck compares the gateway without the session plugin
// with the plugin on memory, on Redis, and on Redis with the local cache.
func BenchmarkSessionCheck(b *testing.B) {
	users := usersFile(b)
	run := func(b *testing.B, g *gw, hdr []string) {
		req := httptest.NewRequest("GET", "http://127.0.0.1:8080/fhir/R4/metadata", nil)
		if hdr != nil {
			req = httptest.NewRequest("GET", "http://127.0.0.1:8080/fhir/R4/Patient/1", nil)
			req.Header.Set(hdr[0], hdr[1])
		}
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				rec := httptest.NewRecorder()
				g.srv.ServeHTTP(rec, req.Clone(req.Context()))
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d", rec.Code)
				}
			}
		})
	}
	redis := redistest.Start(b)
	b.Run("no-session-plugin", func(b *testing.B) {
		g := newGateway(b, "", users, "")
		run(b, g, nil)
	})
	for _, tc := range []struct{ name, url, yaml string }{
		{"memory", "", ""},
		{"redis", redis.URL(), "local_cache: {enabled: false}"},
		{"redis+local-cache", redis.URL(), "local_cache: {enabled: true, ttl: 5s}"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			g := newGateway(b, tc.url, users, tc.yaml)
			run(b, g, bearer(g.login("nina")))
		})
	}
}
