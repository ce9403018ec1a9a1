package wasm

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/gateway"
)

// Options configure a Plugin built with New. Zero values take the defaults
// stated per field.
type Options struct {
	// Name names the plugin in logs, metrics and KV keys. Required.
	Name string
	// Path is the .wasm file. Either Path or Module is required.
	Path string
	// Module is the module's bytes, used when Path is "". A module given as
	// bytes is not watched.
	Module []byte
	// Config is given to the guest, once per instance, as its config
	// (JSON by convention). Default: "null".
	Config []byte
	// FailOpen passes requests on when the plugin fails, and while its
	// circuit breaker is open; the default (false) answers them with 500,
	// and with 503 and Retry-After while the breaker is open.
	FailOpen bool
	// Timeout is the CPU budget of one call into the guest: the CPU time
	// of the thread that runs the call, so that time the call spends
	// descheduled on a busy machine is not charged. The host's own work in
	// the JSON helpers, the interactions property and KV calls is not
	// charged either. A call over budget is stopped within about a tenth
	// of it (at most 1ms) more. Where threads have no CPU clock (other
	// systems than Linux) it is wall-clock time. Default 10ms.
	Timeout time.Duration
	// WallTimeout is the wall-clock backstop of one call, whatever it
	// waits on (a host call that blocks, a machine that never schedules
	// it): past it the call is stopped. Default DefaultWallTimeout(Timeout):
	// the larger of 1s and 10 × Timeout.
	WallTimeout time.Duration
	// StartTimeout bounds starting an instance (the guest runtime's
	// initialization and omnigate_start), in wall-clock time. Default 10s.
	StartTimeout time.Duration
	// MemoryLimit caps an instance's linear memory. Default 64MiB. It is
	// rounded down to 64KiB pages.
	MemoryLimit int64
	// PoolMemoryLimit caps the linear memory of the whole pool: Instances
	// × MemoryLimit must not exceed it, or New fails. Default 512MiB.
	PoolMemoryLimit int64
	// Instances bounds the pool; all are started by New. Default twice
	// GOMAXPROCS, at most PoolMemoryLimit / MemoryLimit.
	Instances int
	// QueueTimeout bounds the wait for a free instance. Default 1s.
	QueueTimeout time.Duration
	// RestartRate bounds how many instances are started per second to
	// replace discarded ones (a token bucket of RestartBurst), so that a
	// plugin that fails on every call does not spend the machine on
	// starting instances. Default 10.
	RestartRate float64
	// RestartBurst is how many replacements may start at once. Default
	// Instances.
	RestartBurst int
	// BreakerFailures is how many consecutive failed requests open the
	// plugin's circuit breaker: requests then get the failure mode at once,
	// without a call into the guest, for BreakerOpenFor; then one request
	// probes the guest, and its success closes the breaker. Failures are
	// traps, exits, deadlines, ABI errors and oversized replies; a busy
	// pool or a client that went away are not. Default 5; negative: no
	// breaker.
	BreakerFailures int
	// BreakerOpenFor is how long the breaker stays open before a probe.
	// Default 5s.
	BreakerOpenFor time.Duration
	// MaxRequestBody caps the request body the guest may read. Default
	// 1MiB; negative means the guest gets no request body.
	MaxRequestBody int64
	// MaxResponseBody caps the response body buffered for the response
	// phase, and a body the guest sets. Default 4MiB; negative means no
	// body is buffered.
	MaxResponseBody int64
	// MaxReplyBody caps the body of a local reply; a guest that sends a
	// larger one fails its call. Default 4MiB.
	MaxReplyBody int64
	// LogRate bounds the plugin's log lines per second (the guest's stdout,
	// stderr and log calls, and the host's records of its failures), with
	// a burst of LogBurst; the lines dropped are counted in one record
	// logged later. Default 100.
	LogRate float64
	// LogBurst is how many lines may be logged at once. Default 200.
	LogBurst int
	// CacheDir holds compiled modules on disk. Default: none (compiled
	// modules are still shared in memory by the plugins of a process).
	// "off" is the same as "".
	CacheDir string
	// WatchInterval is how often Path is checked for changes. Default 0:
	// not watched.
	WatchInterval time.Duration
	// Logger receives the plugin's log records and the guest's stdout and
	// stderr. Default: slog.Default() with plugin=Name.
	Logger *slog.Logger
	// Registerer receives the plugin's metrics. Default: none.
	Registerer prometheus.Registerer
	// KV is the store behind the kv_* functions. Default: a new MemoryKV.
	KV KV
	// Now is the clock of the now host function. Default time.Now.
	Now func() time.Time
	// Clock is the clock of the circuit breaker, the restart rate and the
	// log rate. Default the system's.
	Clock Clock
}

// Plugin is a loaded WebAssembly policy plugin: a gateway.Plugin that runs
// the guest's request and response handlers. It is safe for concurrent use.
type Plugin struct {
	opts    Options
	log     *slog.Logger
	logs    *logLimiter
	metrics *pluginMetrics
	breaker *breaker

	restartMu sync.Mutex
	restarts  bucket // replacements of discarded instances

	cur     atomic.Pointer[module]
	reload  sync.Mutex
	lastErr atomic.Pointer[string]

	stop    chan struct{}
	stopped sync.WaitGroup
	closed  atomic.Bool
}

var (
	_ gateway.Plugin         = (*Plugin)(nil)
	_ gateway.HealthReporter = (*Plugin)(nil)
)

// New loads the module named by opts, checks that it speaks ABI v1, starts
// its pool of instances and, with a WatchInterval, watches the file. The
// error names what failed: reading, compiling, a missing export, the ABI
// version, the guest rejecting its config.
func New(ctx context.Context, opts Options) (*Plugin, error) {
	if opts.Name == "" {
		return nil, errors.New("wasm: Options.Name is required")
	}
	if opts.Path == "" && opts.Module == nil {
		return nil, errors.New("wasm: Options.Path or Options.Module is required")
	}
	if opts.Config == nil {
		opts.Config = []byte("null")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.WallTimeout <= 0 {
		opts.WallTimeout = DefaultWallTimeout(opts.Timeout)
	}
	if opts.WallTimeout < opts.Timeout {
		return nil, fmt.Errorf("wasm: wall timeout %s is below the CPU budget %s", opts.WallTimeout, opts.Timeout)
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 10 * time.Second
	}
	if opts.MemoryLimit <= 0 {
		opts.MemoryLimit = DefaultMemoryLimit
	}
	if opts.PoolMemoryLimit <= 0 {
		opts.PoolMemoryLimit = DefaultPoolMemoryLimit
	}
	if opts.Instances <= 0 {
		opts.Instances = poolSize(opts.MemoryLimit, opts.PoolMemoryLimit)
	}
	if err := checkPoolMemory(opts.Instances, opts.MemoryLimit, opts.PoolMemoryLimit); err != nil {
		return nil, fmt.Errorf("wasm: %w", err)
	}
	if opts.QueueTimeout <= 0 {
		opts.QueueTimeout = DefaultQueueTimeout
	}
	if opts.RestartRate <= 0 {
		opts.RestartRate = DefaultRestartRate
	}
	if opts.RestartBurst <= 0 {
		opts.RestartBurst = opts.Instances
	}
	if opts.BreakerFailures == 0 {
		opts.BreakerFailures = DefaultBreakerFailures
	}
	if opts.BreakerOpenFor <= 0 {
		opts.BreakerOpenFor = DefaultBreakerOpenFor
	}
	if opts.MaxRequestBody == 0 {
		opts.MaxRequestBody = DefaultMaxRequestBody
	}
	if opts.MaxResponseBody == 0 {
		opts.MaxResponseBody = DefaultMaxResponseBody
	}
	if opts.MaxReplyBody <= 0 {
		opts.MaxReplyBody = DefaultMaxReplyBody
	}
	if opts.LogRate <= 0 {
		opts.LogRate = DefaultLogRate
	}
	if opts.LogBurst <= 0 {
		opts.LogBurst = DefaultLogBurst
	}
	if opts.CacheDir == "off" {
		opts.CacheDir = ""
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default().With(slog.String("plugin", opts.Name))
	}
	if opts.KV == nil {
		opts.KV = NewMemoryKV(MemoryKVOptions{})
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	p := &Plugin{opts: opts, log: opts.Logger, stop: make(chan struct{})}
	p.metrics = newPluginMetrics(opts.Registerer, opts.Name)
	p.logs = newLogLimiter(opts.Logger, opts.Clock, opts.LogRate, opts.LogBurst, p.metrics.dropped)
	p.restarts = newBucket(opts.RestartRate, opts.RestartBurst, opts.Clock.Now())
	p.breaker = &breaker{threshold: max(opts.BreakerFailures, 0), openFor: opts.BreakerOpenFor, clock: opts.Clock,
		onChange: p.breakerChanged}

	code, stamp, err := p.readModule()
	if err != nil {
		return nil, err
	}
	m, err := p.load(ctx, code)
	if err != nil {
		return nil, err
	}
	p.cur.Store(m)
	p.metrics.instances.Set(float64(opts.Instances))
	if opts.Path != "" && opts.WatchInterval > 0 {
		p.stopped.Add(1)
		go p.watch(stamp, m.hash)
	}
	return p, nil
}

// fileStamp is what the watcher compares: size and modification time.
type fileStamp struct {
	size  int64
	mtime time.Time
}

func (p *Plugin) readModule() ([]byte, fileStamp, error) {
	if p.opts.Path == "" {
		return p.opts.Module, fileStamp{}, nil
	}
	f, err := os.Open(p.opts.Path)
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("read module: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("read module: %w", err)
	}
	code := make([]byte, st.Size())
	if _, err := f.ReadAt(code, 0); err != nil {
		return nil, fileStamp{}, fmt.Errorf("read module %s: %w", p.opts.Path, err)
	}
	return code, fileStamp{st.Size(), st.ModTime()}, nil
}

// watch polls the module file and reloads it when its size or
// modification time changes and its contents differ.
func (p *Plugin) watch(stamp fileStamp, hash [32]byte) {
	defer p.stopped.Done()
	t := time.NewTicker(p.opts.WatchInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		st, err := os.Stat(p.opts.Path)
		if err != nil || (st.Size() == stamp.size && st.ModTime().Equal(stamp.mtime)) {
			continue
		}
		code, ns, err := p.readModule()
		if err != nil {
			continue // being replaced; try again on the next tick
		}
		stamp = ns
		h := sha256.Sum256(code)
		if h == hash {
			continue
		}
		hash = h
		if err := p.swap(context.Background(), code); err != nil {
			p.log.Error("wasm module reload failed; the previous module keeps serving", "path", p.opts.Path, "error", err)
		}
	}
}

// Reload reads the module file again and, when it loads, swaps it in: new
// requests use the new pool at once, calls in flight finish on the old
// one, which is closed after them. When the module fails to load, the error
// is returned and the old one keeps serving.
func (p *Plugin) Reload(ctx context.Context) error {
	code, _, err := p.readModule()
	if err != nil {
		p.metrics.reloads.WithLabelValues("failure").Inc()
		return err
	}
	return p.swap(ctx, code)
}

func (p *Plugin) swap(ctx context.Context, code []byte) error {
	p.reload.Lock()
	defer p.reload.Unlock()
	if p.closed.Load() {
		return errors.New("wasm: plugin closed")
	}
	m, err := p.load(ctx, code)
	if err != nil {
		p.metrics.reloads.WithLabelValues("failure").Inc()
		msg := err.Error()
		p.lastErr.Store(&msg)
		return err
	}
	old := p.cur.Swap(m)
	old.retire()
	p.breaker.reset() // new code: judge it afresh
	p.lastErr.Store(nil)
	p.metrics.reloads.WithLabelValues("success").Inc()
	p.log.Info("wasm module reloaded", "path", p.opts.Path, "sha256", fmt.Sprintf("%x", m.hash[:8]))
	return nil
}

// Health reports the module's state for /ping: up while the pool serves,
// degraded after a failed reload (the old module serving) or while
// instances keep failing.
func (p *Plugin) Health() gateway.Health {
	if p.closed.Load() {
		return gateway.Health{Status: gateway.StatusDown, Detail: "closed"}
	}
	m := p.cur.Load()
	detail := fmt.Sprintf("sha256 %x, %d instances", m.hash[:8], p.opts.Instances)
	if e := p.lastErr.Load(); e != nil {
		return gateway.Health{Status: gateway.StatusDegraded, Detail: "reload failed, previous module serving: " + *e}
	}
	if state, until := p.breaker.snapshot(); state != breakerClosed {
		what := "open until " + until.UTC().Format(time.RFC3339)
		if state == breakerHalfOpen {
			what = "half-open, probing"
		}
		return gateway.Health{Status: gateway.StatusDegraded, Detail: fmt.Sprintf("%s; circuit breaker %s after %d consecutive failed requests", detail, what, p.opts.BreakerFailures)}
	}
	if n := m.pool.failing.Load(); n > 0 {
		return gateway.Health{Status: gateway.StatusDegraded, Detail: fmt.Sprintf("%s; %d instances could not be restarted", detail, n)}
	}
	return gateway.Health{Status: gateway.StatusUp, Detail: detail}
}

// Close stops watching, waits for calls in flight and closes the module.
func (p *Plugin) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	close(p.stop)
	p.stopped.Wait()
	p.reload.Lock()
	defer p.reload.Unlock()
	p.cur.Load().retire()
	p.logs.flush()
	return nil
}

// breakerChanged logs and exports a change of the breaker's state.
func (p *Plugin) breakerChanged(state, failures int) {
	p.metrics.breaker.Set(float64(state))
	switch state {
	case breakerOpen:
		p.log.Error("wasm plugin circuit breaker open: requests get the failure mode without calling the plugin",
			"consecutive_failures", failures, "open_for", p.opts.BreakerOpenFor.String())
	case breakerHalfOpen:
		p.log.Info("wasm plugin circuit breaker half-open: one request probes the plugin")
	case breakerClosed:
		p.log.Info("wasm plugin circuit breaker closed")
	}
}

// restartWait takes a token for starting a replacement instance, or
// reports how long until one is available.
func (p *Plugin) restartWait() time.Duration {
	p.restartMu.Lock()
	defer p.restartMu.Unlock()
	return p.restarts.take(p.opts.Clock.Now())
}

// acquire returns the current module with a reference held.
func (p *Plugin) acquire() *module {
	for {
		m := p.cur.Load()
		m.refs.Add(1)
		if !m.retired.Load() {
			return m
		}
		m.release()
		if p.closed.Load() {
			return nil
		}
	}
}
