package wasm

import (
	"context"
	"strconv"
	"testing"
	"time"
)

func TestMemoryKV(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	kv := NewMemoryKV(MemoryKVOptions{MaxKeys: 3, MaxValueSize: 8, Now: func() time.Time { return now }})

	t.Run("set get delete", func(t *testing.T) {
		if err := kv.Set(ctx, "a", []byte("1"), 0); err != nil {
			t.Fatal(err)
		}
		if v, ok, _ := kv.Get(ctx, "a"); !ok || string(v) != "1" {
			t.Fatalf("get = %q %v", v, ok)
		}
		kv.Delete(ctx, "a")
		if _, ok, _ := kv.Get(ctx, "a"); ok {
			t.Fatal("deleted key found")
		}
		if err := kv.Set(ctx, "big", []byte("123456789"), 0); err == nil {
			t.Fatal("oversized value stored")
		}
	})
	t.Run("ttl", func(t *testing.T) {
		kv.Set(ctx, "t", []byte("x"), time.Minute)
		now = now.Add(59 * time.Second)
		if _, ok, _ := kv.Get(ctx, "t"); !ok {
			t.Fatal("expired early")
		}
		now = now.Add(time.Second)
		if _, ok, _ := kv.Get(ctx, "t"); ok {
			t.Fatal("not expired")
		}
	})
	t.Run("incr keeps the first expiry", func(t *testing.T) {
		for i := 1; i <= 3; i++ {
			n, err := kv.Incr(ctx, "c", 1, time.Hour)
			if err != nil || n != int64(i) {
				t.Fatalf("incr = %d, %v", n, err)
			}
			now = now.Add(20 * time.Minute)
		}
		if _, ok, _ := kv.Get(ctx, "c"); ok {
			t.Fatal("counter outlived its first ttl")
		}
		kv.Set(ctx, "s", []byte("abc"), 0)
		if _, err := kv.Incr(ctx, "s", 1, 0); err != ErrNotInteger {
			t.Fatalf("incr of a string: %v", err)
		}
	})
	t.Run("bounded", func(t *testing.T) {
		for i := 0; i < 10; i++ {
			kv.Set(ctx, "k"+strconv.Itoa(i), []byte("v"), 0)
		}
		if kv.Len() != 3 {
			t.Fatalf("len = %d", kv.Len())
		}
		if _, ok, _ := kv.Get(ctx, "k9"); !ok {
			t.Fatal("newest key evicted")
		}
		if _, ok, _ := kv.Get(ctx, "k0"); ok {
			t.Fatal("oldest key kept")
		}
	})
}
