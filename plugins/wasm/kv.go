package wasm

import (
	"container/list"
	"context"
	"errors"
	"strconv"
	"sync"
	"time"
)

// KV is the shared key-value store behind the ABI's kv_* functions. The
// host namespaces keys per plugin before they reach the store ("wasm:" +
// plugin name + ":" + the guest's key), so an implementation sees plain
// string keys. Every method may block on the network and must honour ctx.
// Implementations are safe for concurrent use.
//
// The in-process implementation is MemoryKV; a Redis one makes the values
// shared by every gateway instance.
type KV interface {
	// Get returns the value of key; ok is false when it is absent or
	// expired.
	Get(ctx context.Context, key string) (val []byte, ok bool, err error)
	// Set stores val under key. ttl > 0 expires it after ttl; ttl <= 0
	// keeps it until it is deleted or evicted.
	Set(ctx context.Context, key string, val []byte, ttl time.Duration) error
	// Incr adds delta to the integer stored under key (an absent key counts
	// as 0) and returns the new value. When the key is created by this call
	// and ttl > 0, it expires after ttl; an existing key keeps its expiry.
	// A value that is not a decimal integer is an error.
	Incr(ctx context.Context, key string, delta int64, ttl time.Duration) (int64, error)
	// Delete removes key; deleting an absent key is not an error.
	Delete(ctx context.Context, key string) error
}

// ErrNotInteger is returned by Incr when the stored value is not a decimal
// integer.
var ErrNotInteger = errors.New("value is not an integer")

// MemoryKVOptions configure a MemoryKV.
type MemoryKVOptions struct {
	// MaxKeys bounds the number of keys; the least recently used key is
	// evicted to make room. Default 100000.
	MaxKeys int
	// MaxValueSize bounds one value; a larger Set is an error. Default 1MiB.
	MaxValueSize int
	// Now is the clock that expiries are measured on. Default time.Now.
	Now func() time.Time
}

// MemoryKV is a KV in process memory: bounded (least recently used keys
// are evicted), with TTLs honoured on read. It is what plugins use when no
// shared store is configured; values are then per gateway instance.
type MemoryKV struct {
	opts MemoryKVOptions
	mu   sync.Mutex
	m    map[string]*list.Element
	lru  list.List // front: most recently used
}

type memEntry struct {
	key     string
	val     []byte
	expires time.Time // zero: never
}

// NewMemoryKV returns an empty MemoryKV.
func NewMemoryKV(opts MemoryKVOptions) *MemoryKV {
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = 100000
	}
	if opts.MaxValueSize <= 0 {
		opts.MaxValueSize = 1 << 20
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &MemoryKV{opts: opts, m: map[string]*list.Element{}}
}

var _ KV = (*MemoryKV)(nil)

// lookup returns the live entry of key, dropping it when expired. The
// caller holds mu.
func (kv *MemoryKV) lookup(key string) *memEntry {
	el, ok := kv.m[key]
	if !ok {
		return nil
	}
	e := el.Value.(*memEntry)
	if !e.expires.IsZero() && !kv.opts.Now().Before(e.expires) {
		kv.lru.Remove(el)
		delete(kv.m, key)
		return nil
	}
	kv.lru.MoveToFront(el)
	return e
}

func (kv *MemoryKV) expiry(ttl time.Duration) time.Time {
	if ttl <= 0 {
		return time.Time{}
	}
	return kv.opts.Now().Add(ttl)
}

func (kv *MemoryKV) put(key string, val []byte, expires time.Time) {
	if el, ok := kv.m[key]; ok {
		e := el.Value.(*memEntry)
		e.val, e.expires = val, expires
		kv.lru.MoveToFront(el)
		return
	}
	for len(kv.m) >= kv.opts.MaxKeys {
		back := kv.lru.Back()
		kv.lru.Remove(back)
		delete(kv.m, back.Value.(*memEntry).key)
	}
	kv.m[key] = kv.lru.PushFront(&memEntry{key: key, val: val, expires: expires})
}

// Get implements KV.
func (kv *MemoryKV) Get(ctx context.Context, key string) ([]byte, bool, error) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	e := kv.lookup(key)
	if e == nil {
		return nil, false, nil
	}
	return append([]byte(nil), e.val...), true, nil
}

// Set implements KV. A value over MaxValueSize is an error.
func (kv *MemoryKV) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if len(val) > kv.opts.MaxValueSize {
		return errors.New("value of " + strconv.Itoa(len(val)) + " bytes exceeds the limit of " + strconv.Itoa(kv.opts.MaxValueSize))
	}
	kv.mu.Lock()
	defer kv.mu.Unlock()
	kv.put(key, append([]byte(nil), val...), kv.expiry(ttl))
	return nil
}

// Incr implements KV.
func (kv *MemoryKV) Incr(ctx context.Context, key string, delta int64, ttl time.Duration) (int64, error) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	var n int64
	expires := kv.expiry(ttl)
	if e := kv.lookup(key); e != nil {
		v, err := strconv.ParseInt(string(e.val), 10, 64)
		if err != nil {
			return 0, ErrNotInteger
		}
		n, expires = v, e.expires
	}
	n += delta
	kv.put(key, strconv.AppendInt(nil, n, 10), expires)
	return n, nil
}

// Delete implements KV.
func (kv *MemoryKV) Delete(ctx context.Context, key string) error {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if el, ok := kv.m[key]; ok {
		kv.lru.Remove(el)
		delete(kv.m, key)
	}
	return nil
}

// Len returns the number of keys held, expired ones included until they are
// read or evicted.
func (kv *MemoryKV) Len() int {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return len(kv.m)
}
