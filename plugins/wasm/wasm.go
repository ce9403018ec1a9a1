// Package wasm runs WebAssembly policy plugins, "type: wasm" in the gateway
// config, on wazero.
//
// A plugin is a module that speaks OmniGate's ABI v1 (sdk/wasm/ABI.md),
// usually written in Go with the guest SDK (sdk/wasm) and built with
// "omnigate plugin build". The module is compiled once at load, through a
// compilation cache on disk; a bounded pool of pre-warmed instances serves
// requests, each instance used by one request at a time. Every call into
// the guest has a CPU budget, measured on its thread's CPU clock, and a
// wall-clock backstop; an instance that traps, exits, panics, runs out of
// memory or overruns its deadline is discarded and replaced, at a bounded
// rate, and the request gets the plugin's failure mode. After a run of
// failed requests a circuit breaker answers for the plugin without calling
// it, and lets one request probe it now and then. The linear memory of
// every instance is mapped outside the Go heap and unmapped when the
// instance closes; the pool's total is capped. The plugin's log lines are
// rate limited. The module has no filesystem,
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
//	    timeout: 10ms                # CPU budget of one call
//	    wall_timeout: 1s             # its wall-clock backstop
//	    pool_memory_limit: 512MiB    # instances × memory_limit must fit
//	    breaker_failures: 5          # consecutive failures that open the breaker
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
	// OperationOutcome on FHIR routes), and 503 with Retry-After while the
	// circuit breaker is open; "open" passes the request on as if the
	// plugin had allowed it. Default "closed".
	Fail string `yaml:"fail"`
	// Timeout is the CPU budget of one call into the guest, measured on
	// the CPU clock of the thread that runs it: time spent descheduled is
	// not charged. Default 10ms.
	Timeout time.Duration `yaml:"timeout"`
	// WallTimeout is the wall-clock backstop of one call, host calls
	// included. Default the larger of 1s and 10 × timeout.
	WallTimeout time.Duration `yaml:"wall_timeout"`
	// MemoryLimit caps the linear memory of one instance. Default 64MiB;
	// at least 4MiB (the Go runtime does not start in less).
	MemoryLimit gateway.ByteSize `yaml:"memory_limit"`
	// PoolMemoryLimit caps the linear memory of the whole pool: instances
	// × memory_limit must not exceed it. Default 512MiB.
	PoolMemoryLimit gateway.ByteSize `yaml:"pool_memory_limit"`
	// Instances bounds the pool; all are started at load. Default twice
	// GOMAXPROCS, at most pool_memory_limit / memory_limit.
	Instances int `yaml:"instances"`
	// QueueTimeout bounds the wait for a free instance when all are busy,
	// then the request gets the failure mode. Default 1s.
	QueueTimeout time.Duration `yaml:"queue_timeout"`
	// RestartRate bounds the instances started per second to replace
	// discarded ones. Default 10.
	RestartRate float64 `yaml:"restart_rate"`
	// RestartBurst is how many replacements may start at once. Default:
	// the pool's size.
	RestartBurst int `yaml:"restart_burst"`
	// BreakerFailures is how many consecutive failed requests open the
	// circuit breaker. Default 5; 0 turns the breaker off.
	BreakerFailures int `yaml:"breaker_failures"`
	// BreakerOpenFor is how long the breaker stays open before one request
	// probes the guest. Default 5s.
	BreakerOpenFor time.Duration `yaml:"breaker_open_for"`
	// MaxRequestBody caps the request body the guest may read. Default 1MiB.
	MaxRequestBody gateway.ByteSize `yaml:"max_request_body"`
	// MaxResponseBody caps the response body buffered for the response
	// phase, and a body the guest sets. Default 4MiB.
	MaxResponseBody gateway.ByteSize `yaml:"max_response_body"`
	// MaxReplyBody caps a local reply's body; a larger one fails the call.
	// Default 4MiB.
	MaxReplyBody gateway.ByteSize `yaml:"max_reply_body"`
	// LogRate bounds the plugin's log lines per second. Default 100.
	LogRate float64 `yaml:"log_rate"`
	// LogBurst is how many lines may be logged at once. Default 200.
	LogBurst int `yaml:"log_burst"`
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
	DefaultPoolMemoryLimit = 512 << 20
	DefaultQueueTimeout    = time.Second
	DefaultRestartRate     = 10
	DefaultBreakerFailures = 5
	DefaultBreakerOpenFor  = 5 * time.Second
	DefaultMaxRequestBody  = 1 << 20
	DefaultMaxResponseBody = 4 << 20
	DefaultMaxReplyBody    = 4 << 20
	DefaultLogRate         = 100
	DefaultLogBurst        = 200
	DefaultWatchInterval   = 2 * time.Second
)

// DefaultConfig returns a Config with its defaults set; the defaults that
// depend on other keys (wall_timeout, instances, restart_burst) are worked
// out when the plugin is built.
func DefaultConfig() *Config {
	watch := DefaultWatchInterval
	return &Config{
		Fail:            "closed",
		Timeout:         DefaultTimeout,
		MemoryLimit:     DefaultMemoryLimit,
		PoolMemoryLimit: DefaultPoolMemoryLimit,
		QueueTimeout:    DefaultQueueTimeout,
		RestartRate:     DefaultRestartRate,
		BreakerFailures: DefaultBreakerFailures,
		BreakerOpenFor:  DefaultBreakerOpenFor,
		MaxRequestBody:  DefaultMaxRequestBody,
		MaxResponseBody: DefaultMaxResponseBody,
		MaxReplyBody:    DefaultMaxReplyBody,
		LogRate:         DefaultLogRate,
		LogBurst:        DefaultLogBurst,
		WatchInterval:   &watch,
	}
}

// DefaultWallTimeout is the default wall-clock backstop of a call whose
// CPU budget is budget: the larger of 1s and 10 × budget. It is generous:
// it ends calls that wait for ever (a host call that blocks, a deadlock in
// the host), not calls that a busy machine or a slow host function delays.
func DefaultWallTimeout(budget time.Duration) time.Duration {
	return max(time.Second, 10*budget)
}

// DefaultInstances is the default pool size before the pool's memory cap:
// twice GOMAXPROCS.
func DefaultInstances() int { return 2 * runtime.GOMAXPROCS(0) }

// poolSize is the default pool size under the pool's memory cap.
func poolSize(memoryLimit, poolLimit int64) int {
	return max(1, min(DefaultInstances(), int(poolLimit/pageRound(memoryLimit))))
}

// pageRound rounds a memory limit down to 64KiB pages, as wazero applies
// it.
func pageRound(n int64) int64 { return max(n>>16, 1) << 16 }

// checkPoolMemory reports a pool whose instances cannot all reach the
// memory limit within the pool's cap.
func checkPoolMemory(instances int, memoryLimit, poolLimit int64) error {
	if memoryLimit > poolLimit {
		return fmt.Errorf("memory_limit %s exceeds pool_memory_limit %s", gateway.ByteSize(memoryLimit), gateway.ByteSize(poolLimit))
	}
	if total := int64(instances) * pageRound(memoryLimit); total > poolLimit {
		return fmt.Errorf("%d instances × memory_limit %s = %s exceeds pool_memory_limit %s: lower instances or memory_limit, or raise pool_memory_limit",
			instances, gateway.ByteSize(memoryLimit), gateway.ByteSize(total), gateway.ByteSize(poolLimit))
	}
	return nil
}

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
	if c.WallTimeout < 0 {
		errs = append(errs, gateway.FieldErrorf("wall_timeout", "must not be negative"))
	} else if c.WallTimeout > 0 && c.WallTimeout < c.Timeout {
		errs = append(errs, gateway.FieldErrorf("wall_timeout", "must be at least timeout (%s)", c.Timeout))
	}
	memOK := true
	if c.MemoryLimit < MinMemoryLimit {
		errs = append(errs, gateway.FieldErrorf("memory_limit", "must be at least 4MiB (the Go runtime does not start in less)"))
		memOK = false
	} else if c.MemoryLimit > 4<<30 {
		errs = append(errs, gateway.FieldErrorf("memory_limit", "must be at most 4GiB (wasm32)"))
		memOK = false
	}
	if c.PoolMemoryLimit <= 0 {
		errs = append(errs, gateway.FieldErrorf("pool_memory_limit", "must be positive"))
		memOK = false
	}
	if c.Instances < 0 || c.Instances > 1024 {
		errs = append(errs, gateway.FieldErrorf("instances", "must be between 1 and 1024"))
	} else if memOK {
		n := c.Instances
		if n == 0 {
			n = 1 // the default fits the cap; one instance must
		}
		if err := checkPoolMemory(n, int64(c.MemoryLimit), int64(c.PoolMemoryLimit)); err != nil {
			errs = append(errs, gateway.FieldErrorf("pool_memory_limit", "%v", err))
		}
	}
	if c.QueueTimeout <= 0 {
		errs = append(errs, gateway.FieldErrorf("queue_timeout", "must be positive"))
	}
	if !(c.RestartRate > 0) {
		errs = append(errs, gateway.FieldErrorf("restart_rate", "must be positive"))
	}
	if c.RestartBurst < 0 {
		errs = append(errs, gateway.FieldErrorf("restart_burst", "must not be negative"))
	}
	if c.BreakerFailures < 0 {
		errs = append(errs, gateway.FieldErrorf("breaker_failures", "must not be negative (0 turns the breaker off)"))
	}
	if c.BreakerOpenFor <= 0 {
		errs = append(errs, gateway.FieldErrorf("breaker_open_for", "must be positive"))
	}
	if c.MaxReplyBody <= 0 {
		errs = append(errs, gateway.FieldErrorf("max_reply_body", "must be positive"))
	}
	if !(c.LogRate > 0) {
		errs = append(errs, gateway.FieldErrorf("log_rate", "must be positive"))
	}
	if c.LogBurst < 1 {
		errs = append(errs, gateway.FieldErrorf("log_burst", "must be at least 1"))
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
	breakerFailures := cfg.BreakerFailures
	if breakerFailures == 0 {
		breakerFailures = -1 // off
	}
	p, err := New(ctx, Options{
		Name:            env.Name,
		Path:            cfg.Path,
		Config:          conf,
		FailOpen:        cfg.Fail == "open",
		Timeout:         cfg.Timeout,
		WallTimeout:     cfg.WallTimeout,
		MemoryLimit:     int64(cfg.MemoryLimit),
		PoolMemoryLimit: int64(cfg.PoolMemoryLimit),
		Instances:       cfg.Instances,
		QueueTimeout:    cfg.QueueTimeout,
		RestartRate:     cfg.RestartRate,
		RestartBurst:    cfg.RestartBurst,
		BreakerFailures: breakerFailures,
		BreakerOpenFor:  cfg.BreakerOpenFor,
		MaxRequestBody:  int64(cfg.MaxRequestBody),
		MaxResponseBody: int64(cfg.MaxResponseBody),
		MaxReplyBody:    int64(cfg.MaxReplyBody),
		LogRate:         cfg.LogRate,
		LogBurst:        cfg.LogBurst,
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
