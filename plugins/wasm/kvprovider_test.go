package wasm

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

// countingKV wraps a MemoryKV and counts calls, standing in for a shared
// store such as Redis.
type countingKV struct {
	*MemoryKV
	incrs atomic.Int32
}

func (c *countingKV) Incr(ctx context.Context, key string, delta int64, ttl time.Duration) (int64, error) {
	c.incrs.Add(1)
	return c.MemoryKV.Incr(ctx, key, delta, ttl)
}

func TestKVProvider(t *testing.T) {
	store := &countingKV{MemoryKV: NewMemoryKV(MemoryKVOptions{})}
	SetKVProvider(func(env *gateway.Env) (KV, error) { return store, nil })
	defer SetKVProvider(nil)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Hits"))
	}))
	defer up.Close()
	srv, err := gateway.New(context.Background(), gatewayConfig(t, up.URL, guest(t, "testguest"), ""),
		gateway.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	for want := 1; want <= 3; want++ {
		r := httptest.NewRequest("GET", "/fhir/R4/Patient/p1", nil)
		r.Header.Set("X-Test", "echo")
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		if w.Body.String() != string(rune('0'+want)) {
			t.Fatalf("hits = %q, want %d", w.Body, want)
		}
	}
	if n := store.incrs.Load(); n != 3 {
		t.Errorf("store saw %d increments", n)
	}
	if v, ok, _ := store.Get(context.Background(), "wasm:policy:hits"); !ok || string(v) != "3" {
		t.Errorf("namespaced key = %q %v", v, ok)
	}
}
