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
	// FailOpen passes requests on when the plugin fails; the default
	// (false) answers them with 500.
	FailOpen bool
	// Timeout is the deadline of one call into the guest. Default 10ms.
	Timeout time.Duration
	// StartTimeout bounds starting an instance (the guest runtime's
	// initialization and omnigate_start). Default 10s.
	StartTimeout time.Duration
	// MemoryLimit caps an instance's linear memory. Default 64MiB. It is
	// rounded down to 64KiB pages.
	MemoryLimit int64
	// Instances bounds the pool; all are started by New. Default twice
	// GOMAXPROCS.
	Instances int
	// QueueTimeout bounds the wait for a free instance. Default 1s.
	QueueTimeout time.Duration
	// MaxRequestBody caps the request body the guest may read. Default
	// 1MiB; negative means the guest gets no request body.
	MaxRequestBody int64
	// MaxResponseBody caps the response body buffered for the response
	// phase. Default 4MiB; negative means no body is buffered.
	MaxResponseBody int64
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
}

// Plugin is a loaded WebAssembly policy plugin: a gateway.Plugin that runs
// the guest's request and response handlers. It is safe for concurrent use.
type Plugin struct {
	opts    Options
	log     *slog.Logger
	metrics *pluginMetrics

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
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 10 * time.Second
	}
	if opts.MemoryLimit <= 0 {
		opts.MemoryLimit = DefaultMemoryLimit
	}
	if opts.Instances <= 0 {
		opts.Instances = DefaultInstances()
	}
	if opts.QueueTimeout <= 0 {
		opts.QueueTimeout = DefaultQueueTimeout
	}
	if opts.MaxRequestBody == 0 {
		opts.MaxRequestBody = DefaultMaxRequestBody
	}
	if opts.MaxResponseBody == 0 {
		opts.MaxResponseBody = DefaultMaxResponseBody
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
	p := &Plugin{opts: opts, log: opts.Logger, stop: make(chan struct{})}
	p.metrics = newPluginMetrics(opts.Registerer, opts.Name)

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
	return nil
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
