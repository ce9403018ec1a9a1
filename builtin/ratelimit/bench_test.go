package ratelimit

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/omnigate/omnigate/internal/redistest"
)

// benchGoroutines is the number of concurrent callers in every benchmark.
const benchGoroutines = 50

// parallel runs op from benchGoroutines goroutines until b.N calls are
// done, and reports calls per second and the p50 and p99 latency.
func parallel(b *testing.B, op func(ctx context.Context, i int) error) {
	b.Helper()
	ctx := context.Background()
	// Warm up: connection pools, script cache, keys.
	var wwg sync.WaitGroup
	for g := 0; g < benchGoroutines; g++ {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			for i := 0; i < 40; i++ {
				op(ctx, g*40+i)
			}
		}()
	}
	wwg.Wait()
	var next atomic.Int64
	lat := make([][]time.Duration, benchGoroutines)
	var failed atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for g := 0; g < benchGoroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, b.N/benchGoroutines+1)
			for {
				i := int(next.Add(1))
				if i > b.N {
					break
				}
				t0 := time.Now()
				if err := op(ctx, i); err != nil {
					failed.Add(1)
				}
				mine = append(mine, time.Since(t0))
			}
			lat[g] = mine
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d calls failed", n, b.N)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}

// redisCost runs the benchmark body and reports the redis-server CPU time
// per call of the command cmd ("get", "evalsha"), from INFO commandstats.
func redisCost(b *testing.B, c redis.UniversalClient, cmd string, body func()) {
	ctx := context.Background()
	c.ConfigResetStat(ctx)
	body()
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if !strings.HasPrefix(line, "cmdstat_"+cmd+":") {
			continue
		}
		for _, f := range strings.Split(strings.TrimSpace(line), ",") {
			if v, ok := strings.CutPrefix(f, "usec_per_call="); ok {
				us, _ := strconv.ParseFloat(v, 64)
				b.ReportMetric(us, "redis-µs/op")
			}
		}
	}
}

// BenchmarkRedis compares, on one redis-server and one client: a plain GET
// (the floor of any decision made with one round trip per call), the same
// GET auto-pipelined by the backbone, go-redis/redis_rate (GCRA in Lua, one
// round trip per call) and this limiter's decision (two sliding windows in
// Lua, auto-pipelined), each from 50 goroutines over 1000 keys, with limits
// high enough that every call is counted.
func BenchmarkRedis(b *testing.B) {
	m, _ := redisManager(b)
	c := m.Client()
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "ip:10.0." + strconv.Itoa(i/256) + "." + strconv.Itoa(i%256)
		c.Set(context.Background(), "bench:"+keys[i], "1", 0)
	}
	b.Run("get", func(b *testing.B) {
		redisCost(b, c, "get", func() {
			parallel(b, func(ctx context.Context, i int) error {
				return c.Get(ctx, "bench:"+keys[i%len(keys)]).Err()
			})
		})
	})
	b.Run("get-batched", func(b *testing.B) {
		// The same GET through the backbone's auto-pipelining, the floor
		// for a limiter that uses it.
		op := m.Op("bench")
		parallel(b, func(ctx context.Context, i int) error {
			_, err := m.Batch(ctx, op, func(p redis.Pipeliner) redis.Cmder {
				return p.Get(ctx, "bench:"+keys[i%len(keys)])
			})
			return err
		})
	})
	b.Run("redis_rate", func(b *testing.B) {
		rl := redis_rate.NewLimiter(c)
		limit := redis_rate.PerSecond(1_000_000_000)
		redisCost(b, c, "evalsha", func() {
			parallel(b, func(ctx context.Context, i int) error {
				_, err := rl.Allow(ctx, keys[i%len(keys)], limit)
				return err
			})
		})
	})
	b.Run("omnigate", func(b *testing.B) {
		// The plugin's defaults: blocking on, local cache on.
		d := Defaults()
		e, err := NewEngine(context.Background(), m, EngineOptions{Name: "bench", LocalCache: true,
			Block: BlockPolicy{After: d.Block.After, Within: d.Block.Within, Duration: d.Block.Duration,
				Max: d.Block.MaxDuration, Forget: d.Block.ForgetAfter}})
		if err != nil {
			b.Fatal(err)
		}
		defer e.Close()
		pol := Policy{Limit: 1_000_000_000, Window: 15 * time.Minute, Burst: 1_000_000_000, BurstWindow: time.Second}
		redisCost(b, c, "evalsha", func() {
			parallel(b, func(ctx context.Context, i int) error {
				d, err := e.Decide(ctx, keys[i%len(keys)], "api", pol, 1)
				if err == nil && d.Source != "redis" {
					return fmt.Errorf("decided in %s", d.Source)
				}
				return err
			})
		})
	})
}

// BenchmarkGateway measures requests through a gateway whose route proxies
// to a local upstream, without the limiter and with it (on Redis and in
// memory), from 50 goroutines.
func BenchmarkGateway(b *testing.B) {
	rs := redistest.Start(b)
	const plugin = `
plugins:
  limit:
    type: ratelimit
    default: {limit: 1000000000, window: 15m, burst: 1000000000, burst_window: 1s}
`
	for _, tc := range []struct{ name, yaml, redis string }{
		{"off", "", ""},
		{"redis", plugin, rs.URL()},
		{"memory", plugin, ""},
	} {
		b.Run(tc.name, func(b *testing.B) {
			plugins := ""
			if tc.yaml != "" {
				plugins = "    plugins: [limit]\n"
			}
			srv := newGateway(b, "{{REDIS}}\n"+tc.yaml+`
routes:
  - name: api
    path: /api
    upstream: {{UP}}
`+plugins, tc.redis)
			parallel(b, func(ctx context.Context, i int) error {
				r := httptest.NewRequest(http.MethodGet, "/api", nil)
				r.RemoteAddr = "10.1." + strconv.Itoa(i%1000/256) + "." + strconv.Itoa(i%256) + ":1000"
				w := httptest.NewRecorder()
				srv.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					return fmt.Errorf("status %d", w.Code)
				}
				return nil
			})
		})
	}
}
