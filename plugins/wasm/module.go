package wasm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"github.com/omnigate/omnigate/sdk/wasm/abi"
)

// module is one loaded generation of a plugin's code: its own wazero
// Runtime, the compiled module and the pool of instances. Requests hold a
// reference while they use it; a retired module closes when the last one
// is released.
type module struct {
	p      *Plugin
	hash   [32]byte
	rt     wazero.Runtime
	cm     wazero.CompiledModule
	phases int32
	pool   pool

	refs      atomic.Int64
	retired   atomic.Bool
	closeOnce sync.Once
}

var (
	cachesMu sync.Mutex
	caches   = map[string]wazero.CompilationCache{}
)

// compilationCache returns the process-wide cache for dir ("" for memory
// only), so that plugins and reloads share compiled code.
func compilationCache(dir string) (wazero.CompilationCache, error) {
	cachesMu.Lock()
	defer cachesMu.Unlock()
	if c, ok := caches[dir]; ok {
		return c, nil
	}
	var c wazero.CompilationCache
	if dir == "" {
		c = wazero.NewCompilationCache()
	} else {
		var err error
		if c, err = wazero.NewCompilationCacheWithDir(dir); err != nil {
			return nil, fmt.Errorf("compilation cache %s: %w", dir, err)
		}
	}
	caches[dir] = c
	return c, nil
}

// load compiles code in a new Runtime, checks its exports and starts the
// pool. On error nothing is left open.
func (p *Plugin) load(ctx context.Context, code []byte) (_ *module, err error) {
	cache, err := compilationCache(p.opts.CacheDir)
	if err != nil {
		// A cache folder that cannot be used costs time, not correctness.
		p.log.Warn("wasm compilation cache unavailable; compiling in memory only", "error", err)
		if cache, err = compilationCache(""); err != nil {
			return nil, err
		}
	}
	m := &module{p: p, hash: sha256.Sum256(code)}
	m.refs.Store(1) // the plugin's own, dropped by retire
	cfg := wazero.NewRuntimeConfig().
		WithCompilationCache(cache).
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(uint32(p.opts.MemoryLimit >> 16))
	m.rt = wazero.NewRuntimeWithConfig(ctx, cfg)
	defer func() {
		if err != nil {
			m.rt.Close(context.Background())
		}
	}()
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, m.rt); err != nil {
		return nil, fmt.Errorf("instantiate wasi: %w", err)
	}
	if err := instantiateHost(ctx, m.rt); err != nil {
		return nil, fmt.Errorf("instantiate host functions: %w", err)
	}
	t0 := time.Now()
	if m.cm, err = m.rt.CompileModule(ctx, code); err != nil {
		return nil, fmt.Errorf("compile %s: %w", p.moduleName(), err)
	}
	if err := checkModule(m.cm); err != nil {
		return nil, fmt.Errorf("%s: %w", p.moduleName(), err)
	}
	compiled := time.Since(t0)
	first, err := m.newInstance(ctx)
	if err != nil {
		return nil, err
	}
	m.phases = first.phases
	m.pool.init(m, p.opts.Instances)
	m.pool.add(first)
	for i := 1; i < p.opts.Instances; i++ {
		in, err := m.newInstance(ctx)
		if err != nil {
			m.pool.closeIdle()
			return nil, err
		}
		m.pool.add(in)
	}
	p.log.Info("wasm module loaded", "path", p.opts.Path, "sha256", fmt.Sprintf("%x", m.hash[:8]),
		"compile_ms", compiled.Milliseconds(), "start_ms", time.Since(t0).Milliseconds()-compiled.Milliseconds(),
		"instances", p.opts.Instances, "response_phase", m.phases&abi.PhaseResponse != 0)
	return m, nil
}

func (p *Plugin) moduleName() string {
	if p.opts.Path != "" {
		return p.opts.Path
	}
	return "module"
}

// checkModule reports what keeps a compiled module from speaking ABI v1:
// missing exports, wrong signatures, imports the host does not provide.
func checkModule(cm wazero.CompiledModule) error {
	exports := cm.ExportedFunctions()
	need := func(name string, results ...api.ValueType) error {
		def, ok := exports[name]
		if !ok {
			return fmt.Errorf("missing export %q: not an OmniGate ABI v1 plugin (build it with the OmniGate SDK)", name)
		}
		if len(def.ParamTypes()) != 0 || !equalTypes(def.ResultTypes(), results) {
			return fmt.Errorf("export %q has the wrong signature: want () -> i32", name)
		}
		return nil
	}
	if err := need(abi.ExportVersion, api.ValueTypeI32); err != nil {
		return err
	}
	if err := need(abi.ExportStart, api.ValueTypeI32); err != nil {
		return err
	}
	if err := need(abi.ExportOnRequest, api.ValueTypeI32); err != nil {
		return err
	}
	if _, ok := exports[abi.ExportOnResponse]; ok {
		if err := need(abi.ExportOnResponse, api.ValueTypeI32); err != nil {
			return err
		}
	}
	if _, ok := cm.ExportedMemories()[abi.ExportMemory]; !ok {
		return fmt.Errorf("missing export %q: the host passes values through the guest's memory", abi.ExportMemory)
	}
	for _, imp := range cm.ImportedFunctions() {
		mod, name, _ := imp.Import()
		switch mod {
		case abi.Module:
			if _, ok := hostFuncNames[name]; !ok {
				return fmt.Errorf("imports %s.%s, which ABI v1 does not have", mod, name)
			}
		case wasi_snapshot_preview1.ModuleName:
		default:
			return fmt.Errorf("imports %s.%s: only %q and %q imports are provided", mod, name, abi.Module, wasi_snapshot_preview1.ModuleName)
		}
	}
	return nil
}

func equalTypes(a, b []api.ValueType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// instance is one instantiated module, used by one call at a time. Its
// context carries the instance itself (for the host functions) and is
// cancelled by the call's watchdog (deadline) when a call overruns; wazero
// then stops the guest, and the instance is discarded.
type instance struct {
	m        *module
	mod      api.Module
	ctx      context.Context
	cancel   context.CancelFunc
	timer    *time.Timer // the watchdog of the running call: check
	deadline deadline
	onReq    api.Function
	onResp   api.Function
	stack    [1]uint64
	phases   int32

	ex         *exchange // the request being served, during a call
	lastErrLog string    // the last error the guest logged, for load errors
	stdout     *lineWriter
	stderr     *lineWriter
}

type instanceKey struct{}

// newInstance instantiates the compiled module (never compiling it again)
// and runs the guest's initialization and omnigate_start. Its linear
// memory is mapped outside the Go heap (mmapAllocator) and unmapped when
// it closes.
func (m *module) newInstance(ctx context.Context) (*instance, error) {
	p := m.p
	p.metrics.started.Inc()
	in := &instance{m: m}
	base, cancel := context.WithCancel(experimental.WithMemoryAllocator(context.Background(), mmapAllocator))
	in.ctx, in.cancel = context.WithValue(base, instanceKey{}, in), cancel
	in.timer = time.AfterFunc(time.Hour, in.check)
	in.timer.Stop()
	in.stdout = newLineWriter(p.log, p.logs, "stdout")
	in.stderr = newLineWriter(p.log, p.logs, "stderr")
	cfg := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions("_initialize").
		WithStdout(in.stdout).
		WithStderr(in.stderr).
		WithSysWalltime().
		WithSysNanotime().
		WithRandSource(rand.Reader)
	startTimer := time.AfterFunc(p.opts.StartTimeout, cancel)
	mod, err := m.rt.InstantiateModule(in.ctx, m.cm, cfg)
	fired := !startTimer.Stop()
	in.stdout.Flush()
	in.stderr.Flush()
	if err == nil && fired {
		mod.Close(context.Background())
		err = errDeadline
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("start instance: %w", describeCallError(err))
	}
	in.mod = mod
	fail := func(err error) (*instance, error) {
		in.close()
		return nil, err
	}
	ver, err := in.call(mod.ExportedFunction(abi.ExportVersion), p.opts.StartTimeout, p.opts.StartTimeout)
	if err != nil {
		return fail(fmt.Errorf("call %s: %w", abi.ExportVersion, describeCallError(err)))
	}
	if ver != abi.Version {
		return fail(fmt.Errorf("module speaks ABI version %d; this host speaks version %d", int32(ver), abi.Version))
	}
	phases, err := in.call(mod.ExportedFunction(abi.ExportStart), p.opts.StartTimeout, p.opts.StartTimeout)
	if err != nil {
		return fail(fmt.Errorf("call %s: %w", abi.ExportStart, describeCallError(err)))
	}
	if int32(phases) < 0 {
		msg := "no reason logged"
		if in.lastErrLog != "" {
			msg = in.lastErrLog
		}
		return fail(fmt.Errorf("plugin refused to start: %s", msg))
	}
	if phases&(abi.PhaseRequest|abi.PhaseResponse) == 0 {
		return fail(errors.New("plugin registered no request or response handler"))
	}
	in.onReq = mod.ExportedFunction(abi.ExportOnRequest)
	if phases&abi.PhaseResponse != 0 {
		if in.onResp = mod.ExportedFunction(abi.ExportOnResponse); in.onResp == nil {
			return fail(fmt.Errorf("plugin asks for the response phase but does not export %q", abi.ExportOnResponse))
		}
	}
	in.phases = int32(phases)
	if m.phases != 0 && in.phases != m.phases {
		return fail(fmt.Errorf("instance asks for phases %d, the module's first instance for %d", in.phases, m.phases))
	}
	return in, nil
}

func (in *instance) close() {
	in.timer.Stop()
	in.cancel()
	if in.mod != nil {
		in.mod.Close(context.Background())
	}
	in.stdout.Flush()
	in.stderr.Flush()
}

// failureKind classifies a failed call for metrics and logs.
func failureKind(err error) string {
	var exit *sys.ExitError
	switch {
	case errors.Is(err, errDeadline):
		return "deadline"
	case errors.As(err, &exit):
		return "exit"
	case errors.Is(err, errBadAction):
		return "abi"
	case errors.Is(err, errTooLarge):
		return "too_large"
	}
	return "trap"
}

var (
	errBadAction = errors.New("invalid action returned")
	errTooLarge  = errors.New("reply too large")
)

// describeCallError turns wazero's errors into short messages: an exit
// code from a Go guest is a panic or a fatal error (its message is in the
// log, from the guest's stderr).
func describeCallError(err error) error {
	var exit *sys.ExitError
	if errors.As(err, &exit) && !errors.Is(err, errDeadline) {
		switch exit.ExitCode() {
		case sys.ExitCodeDeadlineExceeded, sys.ExitCodeContextCanceled:
			return errDeadline
		case 2:
			return fmt.Errorf("guest exited with code 2 (a Go panic or fatal error such as out of memory or deadlock; see its stderr in the log): %w", err)
		}
		return fmt.Errorf("guest exited with code %d: %w", exit.ExitCode(), err)
	}
	// Trim wazero's wasm stack trace to its first line.
	if s := err.Error(); strings.Contains(s, "\nwasm stack trace:") {
		return errors.New(strings.TrimSpace(s[:strings.Index(s, "\nwasm stack trace:")]))
	}
	return err
}

// retire stops new requests from using m; it closes when the last request
// holding it is done.
func (m *module) retire() {
	if m.retired.Swap(true) {
		return
	}
	m.release()
}

func (m *module) release() {
	if m.refs.Add(-1) == 0 && m.retired.Load() {
		m.closeOnce.Do(m.close)
	}
}

func (m *module) close() {
	m.pool.closeIdle()
	m.rt.Close(context.Background())
}

// pool is a bounded set of instances. Idle ones wait in a channel. A
// discarded one is closed at once (its memory unmapped) and its slot
// refilled in the background at the plugin's restart rate, so that at most
// max instances exist at any time and a plugin that fails on every call
// starts at most restart_rate instances a second.
type pool struct {
	m       *module
	idle    chan *instance
	max     int32
	failing atomic.Int32 // replacements that failed to start, in a row

	mu      sync.Mutex
	live    int32       // instances open or starting
	closed  bool        // no more instances: the module is closing
	pending func() bool // stops the timer of the next refill
}

func (pl *pool) init(m *module, n int) {
	pl.m, pl.max, pl.idle = m, int32(n), make(chan *instance, n)
}

var errNoInstance = errors.New("no free instance within the queue timeout")

// get returns an idle instance, waiting up to the queue timeout.
func (pl *pool) get(ctx context.Context) (*instance, error) {
	select {
	case in := <-pl.idle:
		return in, nil
	default:
	}
	t := time.NewTimer(pl.m.p.opts.QueueTimeout)
	defer t.Stop()
	select {
	case in := <-pl.idle:
		return in, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, errNoInstance
	}
}

// add puts a started instance in the pool, counted.
func (pl *pool) add(in *instance) {
	pl.mu.Lock()
	pl.live++
	pl.mu.Unlock()
	pl.put(in)
}

func (pl *pool) put(in *instance) {
	in.ex = nil
	pl.mu.Lock()
	closed := pl.closed
	pl.mu.Unlock()
	if !closed {
		select {
		case pl.idle <- in:
			return
		default: // cannot happen while live counts slots; never block
		}
	}
	in.close()
	pl.mu.Lock()
	pl.live--
	pl.mu.Unlock()
}

// discard closes a failed instance and refills its slot.
func (pl *pool) discard(in *instance) {
	in.close()
	pl.m.p.metrics.discarded.Inc()
	pl.mu.Lock()
	pl.live--
	pl.mu.Unlock()
	pl.refill()
}

// refill starts instances in the free slots as the restart rate allows,
// each in its own goroutine, and sets a timer for the slots it cannot fill
// yet.
func (pl *pool) refill() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for !pl.closed && !pl.m.retired.Load() && pl.live < pl.max && pl.pending == nil {
		if wait := pl.m.p.restartWait(); wait > 0 {
			pl.pending = pl.m.p.opts.Clock.AfterFunc(wait, func() {
				pl.mu.Lock()
				pl.pending = nil
				pl.mu.Unlock()
				pl.refill()
			})
			return
		}
		pl.live++
		pl.m.refs.Add(1) // keep the module open while starting
		go pl.start()
	}
}

// start starts one instance in a slot refill reserved.
func (pl *pool) start() {
	defer pl.m.release()
	in, err := pl.m.newInstance(context.Background())
	if err != nil {
		pl.mu.Lock()
		pl.live--
		closed := pl.closed
		pl.mu.Unlock()
		if closed || pl.m.retired.Load() {
			return
		}
		pl.failing.Add(1)
		if pl.m.p.logs.allow() {
			pl.m.p.log.Error("wasm instance could not be restarted", "error", err)
		}
		pl.refill() // again, at the restart rate
		return
	}
	pl.failing.Store(0)
	pl.put(in)
}

// closeIdle closes the idle instances and stops refilling; instances in
// use are closed when they are put back.
func (pl *pool) closeIdle() {
	pl.mu.Lock()
	pl.closed = true
	if pl.pending != nil {
		pl.pending()
		pl.pending = nil
	}
	pl.mu.Unlock()
	for {
		select {
		case in := <-pl.idle:
			in.close()
			pl.mu.Lock()
			pl.live--
			pl.mu.Unlock()
		default:
			return
		}
	}
}
