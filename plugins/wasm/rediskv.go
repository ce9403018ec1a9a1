package wasm

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/omnigate/omnigate/builtin/backbone"
)

// BackboneKV keeps plugin values in Redis through the backbone, so every
// gateway instance sees the same values (a tenant quota holds across the
// fleet). Without Redis, or while it is down, it uses an in-process
// MemoryKV: values are then per instance until Redis returns (what was
// written meanwhile stays in memory and is not copied back).
//
// Keys are the backbone prefix followed by the namespaced key
// ("omnigate:wasm:<plugin>:<key>"); each call is one round trip.
type BackboneKV struct {
	m                    *backbone.Manager
	mem                  *MemoryKV
	opGet, opSet, opIncr *backbone.Op
	opDel                *backbone.Op
	incr                 *redis.Script
}

var _ KV = (*BackboneKV)(nil)

// incrLua adds ARGV[1] to KEYS[1] and, when this call created the key and
// ARGV[2] > 0, sets its expiry in milliseconds.
const incrLua = `
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
`

// NewBackboneKV returns a KV on m, with mem for when Redis is unavailable.
func NewBackboneKV(ctx context.Context, m *backbone.Manager, mem *MemoryKV) *BackboneKV {
	kv := &BackboneKV{m: m, mem: mem, opGet: m.Op("wasm.kv.get"), opSet: m.Op("wasm.kv.set"),
		opIncr: m.Op("wasm.kv.incr"), opDel: m.Op("wasm.kv.delete"), incr: redis.NewScript(incrLua)}
	m.Load(ctx, kv.incr)
	m.Declare("plugin key-value data", backbone.Durable)
	return kv
}

func (kv *BackboneKV) key(k string) string { return kv.m.Prefix() + k }

// fallback reports whether err means "use memory".
func fallback(ctx context.Context, err error) bool {
	return errors.Is(err, backbone.ErrDisabled) || errors.Is(err, backbone.ErrDown) || backbone.IsOutage(ctx, err)
}

// Get implements KV.
func (kv *BackboneKV) Get(ctx context.Context, key string) ([]byte, bool, error) {
	var val []byte
	var ok bool
	err := kv.m.Do(ctx, kv.opGet, func(ctx context.Context, c redis.UniversalClient) error {
		b, err := c.Get(ctx, kv.key(key)).Bytes()
		if errors.Is(err, redis.Nil) {
			return nil
		}
		val, ok = b, err == nil
		return err
	})
	if err != nil && fallback(ctx, err) {
		return kv.mem.Get(ctx, key)
	}
	return val, ok, err
}

// Set implements KV.
func (kv *BackboneKV) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if ttl < 0 {
		ttl = 0
	}
	err := kv.m.Do(ctx, kv.opSet, func(ctx context.Context, c redis.UniversalClient) error {
		return c.Set(ctx, kv.key(key), val, ttl).Err()
	})
	if err != nil && fallback(ctx, err) {
		return kv.mem.Set(ctx, key, val, ttl)
	}
	return err
}

// Incr implements KV.
func (kv *BackboneKV) Incr(ctx context.Context, key string, delta int64, ttl time.Duration) (int64, error) {
	var n int64
	err := kv.m.Do(ctx, kv.opIncr, func(ctx context.Context, c redis.UniversalClient) error {
		var err error
		n, err = kv.incr.Run(ctx, c, []string{kv.key(key)}, delta, max(ttl, 0).Milliseconds()).Int64()
		return err
	})
	switch {
	case err == nil:
		return n, nil
	case fallback(ctx, err):
		return kv.mem.Incr(ctx, key, delta, ttl)
	case strings.Contains(err.Error(), "not an integer"):
		return 0, ErrNotInteger
	}
	return 0, err
}

// Delete implements KV.
func (kv *BackboneKV) Delete(ctx context.Context, key string) error {
	err := kv.m.Do(ctx, kv.opDel, func(ctx context.Context, c redis.UniversalClient) error {
		return c.Del(ctx, kv.key(key)).Err()
	})
	if err != nil && fallback(ctx, err) {
		return kv.mem.Delete(ctx, key)
	}
	return err
}
