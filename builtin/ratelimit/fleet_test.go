package ratelimit

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/redistest"
)

const fleetYAML = `
{{REDIS}}
plugins:
  limit:
    type: ratelimit
    key: ip
    default: {limit: 40, window: 24h, burst: 0}
routes:
  - name: api
    path: /api
    upstream: {{UP}}
    plugins: [limit]
`

// TestFleet offers 10x the limit, concurrently, to four gateways sharing
// one Redis: exactly the limit is admitted per key, since the whole run
// fits in one window (a day: far longer than any test may run, so the
// count does not depend on the machine's speed).
func TestFleet(t *testing.T) {
	rs := redistest.Start(t)
	var fleet []*gateway.Server
	for i := 0; i < 4; i++ {
		fleet = append(fleet, newGateway(t, fleetYAML, rs.URL()))
	}
	const keys, limit, offered, workers = 3, 40, 400, 50
	var admitted [keys]atomic.Int64
	var other atomic.Int64
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				k := j % keys
				resp := do(fleet[j%len(fleet)], req{path: "/api", remote: fmt.Sprintf("192.0.2.%d:4000", 10+k)})
				switch resp.Code {
				case http.StatusOK:
					admitted[k].Add(1)
				case http.StatusTooManyRequests:
				default:
					other.Add(1)
				}
			}
		}()
	}
	for j := 0; j < keys*offered; j++ {
		jobs <- j
	}
	close(jobs)
	wg.Wait()
	if n := other.Load(); n != 0 {
		t.Fatalf("%d responses were neither 200 nor 429", n)
	}
	for k := range admitted {
		if got := admitted[k].Load(); got != limit {
			t.Errorf("key %d: %d admitted across the fleet, want exactly %d", k, got, limit)
		}
	}
}

func ping(t testing.TB, srv *gateway.Server) gateway.PingResponse {
	t.Helper()
	w := httptest.NewRecorder()
	srv.AdminHandler().ServeHTTP(w, httptest.NewRequest("GET", "/ping", nil))
	var p gateway.PingResponse
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("/ping: %v: %s", err, w.Body)
	}
	return p
}

func waitUntil(t *testing.T, what string, limit time.Duration, cond func() bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	for !cond() {
		if time.Since(t0) > limit {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(t0)
}

// TestFailover stops redis-server under traffic: no request fails, the
// limiter goes on in memory with the limit divided among the two live
// instances, /ping says Redis is down; after a restart the limiter is back
// on Redis within the reconnect backoff cap and /ping says up.
func TestFailover(t *testing.T) {
	rs := redistest.Start(t)
	a := newGateway(t, fleetYAML, rs.URL())
	b := newGateway(t, fleetYAML, rs.URL())
	// Both instances must have seen each other's heartbeat (every 2s).
	waitUntil(t, "two live instances", 10*time.Second, func() bool {
		return strings.Contains(ping(t, a).Components["redis"].Detail, "2 live instances") &&
			strings.Contains(ping(t, b).Components["redis"].Detail, "2 live instances")
	})
	if p := ping(t, a); p.Components["redis"].Status != gateway.StatusUp || p.Status != "ok" {
		t.Fatalf("/ping before: %+v", p)
	}

	// Background traffic on both instances for the whole test: never a 5xx.
	stop := make(chan struct{})
	var bad atomic.Int64
	var badMsg atomic.Value
	var wg sync.WaitGroup
	for i, srv := range []*gateway.Server{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				w := do(srv, req{path: "/api", remote: fmt.Sprintf("198.51.100.%d:1", n%200)})
				if w.Code >= 500 {
					bad.Add(1)
					badMsg.Store(fmt.Sprintf("instance %d: %d %s", i, w.Code, w.Body))
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
		if n := bad.Load(); n > 0 {
			t.Errorf("%d requests got a 5xx, e.g. %v", n, badMsg.Load())
		}
	}()

	rs.Stop()
	waitUntil(t, "/ping to show redis down", 10*time.Second, func() bool {
		return ping(t, a).Components["redis"].Status == gateway.StatusDown
	})
	p := ping(t, a)
	if p.Status != "degraded" || p.Plugins["limit"].Status != gateway.StatusDegraded ||
		!strings.Contains(p.Plugins["limit"].Detail, "divided by 2") {
		t.Fatalf("/ping while down: %+v", p)
	}
	// The limit of 40 is divided between the two instances last seen.
	q := req{path: "/api", remote: "203.0.113.77:1"}
	if got := allowed(t, a, q, 30); got != 20 {
		t.Fatalf("instance a admitted %d while redis was down, want 20", got)
	}

	rs.Restart()
	took := waitUntil(t, "/ping to show redis up", 15*time.Second, func() bool {
		return ping(t, a).Components["redis"].Status == gateway.StatusUp
	})
	// reconnect_max is 1s; allow for a loaded machine.
	t.Logf("back on redis %s after the restart", took)
	_, body := admin(t, a, "GET", "/admin/ratelimit/stats")
	st := body["plugins"].(map[string]any)["limit"].(map[string]any)
	if st["store"] != "redis" {
		t.Fatalf("store after restart: %v", st["store"])
	}
	before, _ := st["by_source"].(map[string]any)["redis"].(float64)
	// Decisions are on Redis again: the restarted server is empty, so the
	// full fleet-wide limit applies to a new key.
	if got := allowed(t, a, req{path: "/api", remote: "203.0.113.78:1"}, 45); got != 40 {
		t.Fatalf("after restart: %d admitted, want 40", got)
	}
	_, body = admin(t, a, "GET", "/admin/ratelimit/stats")
	after, _ := body["plugins"].(map[string]any)["limit"].(map[string]any)["by_source"].(map[string]any)["redis"].(float64)
	if after < before+40 {
		t.Fatalf("redis decisions before %v, after %v", before, after)
	}
}
