// Package wasm runs WebAssembly policy plugins, "type: wasm" in the gateway
// config, on wazero.
//
// A plugin is a module that speaks OmniGate's ABI v1 (sdk/wasm/ABI.md),
// usually written in Go with the guest SDK (sdk/wasm) and built with
// "omnigate plugin build". The module is compiled once at load, through a
// compilation cache on disk; a bounded pool of pre-warmed instances serves
// requests, each instance used by one request at a time. Every call into
// the guest has a deadline; an instance that traps, exits, panics, runs out
// of memory or overruns its deadline is discarded and replaced, and the
// request gets the plugin's failure mode. The module has no filesystem,
// network or environment; its stdout and stderr go to the gateway log.
// When the .wasm file changes, the plugin compiles it and swaps pools
// without dropping a request; a module that fails to load leaves the old
// one serving.
//
// Config:
//
//	plugins:
//	  require-tenant:
//	    type: wasm
//	    path: data/plugins/require-header.wasm
//	    config: {header: X-Tenant}   # given to the guest as JSON
//	    fail: closed                 # or open
//	    timeout: 10ms
//
// New builds a plugin without a gateway config, for harnesses and tests.
package wasm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/omnigate/omnigate/builtin/backbone"
	"github.com/omnigate/omnigate/gateway"
)

// Config is the config of a "type: wasm" plugin instance.
type Config struct {
	// Path is the .wasm file. Required. Relative paths are relative to the
	// working directory.
	Path string `yaml:"path"`
	// Config is given to the guest as JSON, once, when an instance starts.
	// Default: none (the guest reads "null").
	Config yaml.Node `yaml:"config"`
	// Fail is what a request gets when the plugin fails (trap, panic,
	// deadline, no free instance): "closed" answers 500 (an
	// OperationOutcome on FHIR routes), "open" passes the request on as if
	// the plugin had allowed it. Default "closed".
	Fail string `yaml:"fail"`
	// Timeout is the deadline of one call into the guest. Default 10ms.
	Timeout time.Duration `yaml:"timeout"`
	// MemoryLimit caps the linear memory of one instance. Default 64MiB;
	// at least 4MiB (the Go runtime does not start in less).
	MemoryLimit gateway.ByteSize `yaml:"memory_limit"`
	// Instances bounds the pool; all are started at load. Default twice
	// GOMAXPROCS.
	Instances int `yaml:"instances"`
	// QueueTimeout bounds the wait for a free instance when all are busy,
	// then the request gets the failure mode. Default 1s.
	QueueTimeout time.Duration `yaml:"queue_timeout"`
	// MaxRequestBody caps the request body the guest may read. Default 1MiB.
	MaxRequestBody gateway.ByteSize `yaml:"max_request_body"`
	// MaxResponseBody caps the response body buffered for the response
	// phase. Default 4MiB.
	MaxResponseBody gateway.ByteSize `yaml:"max_response_body"`
	// CacheDir holds compiled modules across restarts. Default: the user
	// cache dir + "/omnigate/wasm", else ./data/wasm-cache. "off" disables
	// the cache on disk.
	CacheDir string `yaml:"cache_dir"`
	// WatchInterval is how often the .wasm file is checked for changes
	// (size and modification time). Default 2s; "0s" turns watching off.
	WatchInterval *time.Duration `yaml:"watch_interval"`
}

// Defaults of Config and Options.
const (
	DefaultTimeout         = 10 * time.Millisecond
	DefaultMemoryLimit     = 64 << 20
	MinMemoryLimit         = 4 << 20
	DefaultQueueTimeout    = time.Second
	DefaultMaxRequestBody  = 1 << 20
	DefaultMaxResponseBody = 4 << 20
	DefaultWatchInterval   = 2 * time.Second
)

// DefaultConfig returns a Config with its defaults set.
func DefaultConfig() *Config {
	watch := DefaultWatchInterval
	return &Config{
		Fail:            "closed",
		Timeout:         DefaultTimeout,
		MemoryLimit:     DefaultMemoryLimit,
		Instances:       DefaultInstances(),
		QueueTimeout:    DefaultQueueTimeout,
		MaxRequestBody:  DefaultMaxRequestBody,
		MaxResponseBody: DefaultMaxResponseBody,
		WatchInterval:   &watch,
	}
}

// DefaultInstances is the default pool size: twice GOMAXPROCS.
func DefaultInstances() int { return 2 * runtime.GOMAXPROCS(0) }

// DefaultCacheDir is where compiled modules are cached by default.
func DefaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "omnigate", "wasm")
	}
	return filepath.Join("data", "wasm-cache")
}

// Validate checks the config, and that the module file exists, so that
// "omnigate config check" catches a wrong path; errors name the key.
func (c *Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, gateway.FieldErrorf("path", "required"))
	} else if st, err := os.Stat(c.Path); err != nil {
		errs = append(errs, gateway.FieldErrorf("path", "%v", err))
	} else if st.IsDir() {
		errs = append(errs, gateway.FieldErrorf("path", "%s is a directory; build the plugin with \"omnigate plugin build %s\"", c.Path, c.Path))
	}
	if c.Fail != "closed" && c.Fail != "open" {
		errs = append(errs, gateway.FieldErrorf("fail", "must be closed or open, not %q", c.Fail))
	}
	if c.Timeout <= 0 {
		errs = append(errs, gateway.FieldErrorf("timeout", "must be positive"))
	}
	if c.MemoryLimit < MinMemoryLimit {
		errs = append(errs, gateway.FieldErrorf("memory_limit", "must be at least 4MiB (the Go runtime does not start in less)"))
	} else if c.MemoryLimit > 4<<30 {
		errs = append(errs, gateway.FieldErrorf("memory_limit", "must be at most 4GiB (wasm32)"))
	}
	if c.Instances < 1 || c.Instances > 1024 {
		errs = append(errs, gateway.FieldErrorf("instances", "must be between 1 and 1024"))
	}
	if c.QueueTimeout <= 0 {
		errs = append(errs, gateway.FieldErrorf("queue_timeout", "must be positive"))
	}
	if c.MaxRequestBody < 0 {
		errs = append(errs, gateway.FieldErrorf("max_request_body", "must not be negative"))
	}
	if c.MaxResponseBody < 0 {
		errs = append(errs, gateway.FieldErrorf("max_response_body", "must not be negative"))
	}
	if c.WatchInterval != nil && *c.WatchInterval < 0 {
		errs = append(errs, gateway.FieldErrorf("watch_interval", "must not be negative"))
	}
	if _, err := gateway.NodeJSON(&c.Config); err != nil {
		errs = append(errs, gateway.FieldErrorf("config", "%v", err))
	}
	return errors.Join(errs...)
}

func init() {
	gateway.RegisterPlugin("wasm", DefaultConfig, build)
}

func build(ctx context.Context, cfg *Config, env *gateway.Env) (gateway.Plugin, error) {
	conf, err := gateway.NodeJSON(&cfg.Config)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cacheDir := cfg.CacheDir
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	watch := DefaultWatchInterval
	if cfg.WatchInterval != nil {
		watch = *cfg.WatchInterval
	}
	kv, err := sharedKV(env)
	if err != nil {
		return nil, err
	}
	p, err := New(ctx, Options{
		Name:            env.Name,
		Path:            cfg.Path,
		Config:          conf,
		FailOpen:        cfg.Fail == "open",
		Timeout:         cfg.Timeout,
		MemoryLimit:     int64(cfg.MemoryLimit),
		Instances:       cfg.Instances,
		QueueTimeout:    cfg.QueueTimeout,
		MaxRequestBody:  int64(cfg.MaxRequestBody),
		MaxResponseBody: int64(cfg.MaxResponseBody),
		CacheDir:        cacheDir,
		WatchInterval:   watch,
		Logger:          env.Logger,
		Registerer:      env.Registerer,
		KV:              kv,
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

var (
	kvMu       sync.Mutex
	kvProvider func(env *gateway.Env) (KV, error)
)

// SetKVProvider sets how wasm plugins get their KV store; call it before
// the gateway loads its config (from an init function). f is called once
// per plugin per config load; use env.Shared to keep one store (and its
// connections) across plugins and reloads. The default is a BackboneKV on
// the gateway's Redis (shared by every instance), or, without Redis, one
// MemoryKV per process; both are kept across reloads.
func SetKVProvider(f func(env *gateway.Env) (KV, error)) {
	kvMu.Lock()
	kvProvider = f
	kvMu.Unlock()
}

func sharedKV(env *gateway.Env) (KV, error) {
	kvMu.Lock()
	f := kvProvider
	kvMu.Unlock()
	if f != nil {
		return f(env)
	}
	v, err := env.Shared("wasm:kv:memory", func() (any, error) {
		return NewMemoryKV(MemoryKVOptions{}), nil
	})
	if err != nil {
		return nil, err
	}
	mem := v.(*MemoryKV)
	if !env.Config.Redis.Enabled() {
		return mem, nil
	}
	m, err := backbone.FromEnv(context.Background(), env)
	if err != nil {
		return nil, err
	}
	kv, err := env.Shared(fmt.Sprintf("wasm:kv:redis:%p", m), func() (any, error) {
		return NewBackboneKV(context.Background(), m, mem), nil
	})
	if err != nil {
		return nil, err
	}
	return kv.(KV), nil
}
