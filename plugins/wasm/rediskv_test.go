package wasm

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/backbone"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/redistest"
)

// TestBackboneKVShared runs two gateways on one real Redis: the guest's
// counter in the KV is shared by both, keeps working in memory while Redis
// is down, and is on Redis again when it returns.
func TestBackboneKVShared(t *testing.T) {
	redis := redistest.Start(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Hits"))
	}))
	defer up.Close()
	module := guest(t, "testguest")
	newGW := func() *gateway.Server {
		cfg := gatewayConfig(t, up.URL, module, "")
		cfg.Redis.URL = redis.URL()
		cfg.Redis.ReconnectMin, cfg.Redis.ReconnectMax = 20*time.Millisecond, 200*time.Millisecond
		cfg.Redis.ReadTimeout, cfg.Redis.WriteTimeout = time.Second, time.Second
		srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Shutdown(context.Background()) })
		return srv
	}
	a, b := newGW(), newGW()
	hit := func(srv *gateway.Server) string {
		r := httptest.NewRequest("GET", "/fhir/R4/Patient/p1", nil)
		r.Header.Set("X-Test", "echo")
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		if w.Code != 200 {
			t.Fatalf("status %d: %s", w.Code, w.Body)
		}
		return w.Body.String()
	}
	for i, srv := range []*gateway.Server{a, b, a, b} {
		if got := hit(srv); got != strconv.Itoa(i+1) {
			t.Fatalf("request %d saw %s hits: the counter is not shared", i+1, got)
		}
	}
	if v, err := redis.Do("GET", "omnigate:wasm:policy:hits"); err != nil || v != "4" {
		t.Fatalf("redis holds %q, %v", v, err)
	}
	redis.Stop()
	for i := 0; i < 3; i++ {
		hit(a) // memory, no failure
	}
	redis.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for hit(b) != "1" { // a fresh, empty Redis: counting starts again there
		if time.Now().After(deadline) {
			t.Fatal("KV not back on Redis")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBackboneKVOperations(t *testing.T) {
	redis := redistest.Start(t)
	cfg := gateway.DefaultConfig().Redis
	cfg.URL = redis.URL()
	cfg.ReadTimeout, cfg.WriteTimeout = time.Second, time.Second
	m, err := backbone.New(context.Background(), cfg, backbone.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	kv := NewBackboneKV(context.Background(), m, NewMemoryKV(MemoryKVOptions{}))
	ctx := context.Background()
	if _, ok, err := kv.Get(ctx, "k"); ok || err != nil {
		t.Fatalf("absent key: %v %v", ok, err)
	}
	kv.Set(ctx, "k", []byte("v"), 0)
	if v, ok, _ := kv.Get(ctx, "k"); !ok || string(v) != "v" {
		t.Fatalf("get %q %v", v, ok)
	}
	// TTLs far beyond the test's run, so no key expires between the steps
	// however slow they are.
	if n, err := kv.Incr(ctx, "n", 5, time.Hour); n != 5 || err != nil {
		t.Fatalf("incr %d %v", n, err)
	}
	if n, _ := kv.Incr(ctx, "n", 2, 3*time.Hour); n != 7 {
		t.Fatalf("incr %d", n)
	}
	if ttl, _ := redis.Do("PTTL", "omnigate:n"); ttl == "-1" || ttl == "-2" {
		t.Errorf("expiry of a key created by Incr not set (PTTL %s)", ttl)
	} else if n, _ := strconv.Atoi(ttl); n > int(time.Hour/time.Millisecond) {
		t.Errorf("an existing key's expiry changed: PTTL %d", n)
	}
	if _, err := kv.Incr(ctx, "k", 1, 0); !errors.Is(err, ErrNotInteger) {
		t.Errorf("incr of a string: %v", err)
	}
	kv.Delete(ctx, "k")
	if _, ok, _ := kv.Get(ctx, "k"); ok {
		t.Error("deleted key still there")
	}
	// Set passes its TTL to Redis, which expires the key.
	kv.Set(ctx, "t", []byte("x"), time.Hour)
	if ttl, _ := redis.Do("PTTL", "omnigate:t"); ttl == "-1" || ttl == "-2" {
		t.Errorf("expiry of a key set with a TTL not set (PTTL %s)", ttl)
	} else if n, _ := strconv.Atoi(ttl); n > int(time.Hour/time.Millisecond) {
		t.Errorf("PTTL %d, more than the TTL given", n)
	}
	kv.Set(ctx, "t", []byte("x"), time.Millisecond)
	waitFor(t, "the key set with a TTL of 1ms to expire", func() bool {
		_, ok, _ := kv.Get(ctx, "t")
		return !ok
	})
}
