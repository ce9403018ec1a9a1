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
	m.pool.live.Store(1)
	m.pool.put(first)
	for i := 1; i < p.opts.Instances; i++ {
		in, err := m.newInstance(ctx)
		if err != nil {
			m.pool.closeIdle()
			return nil, err
		}
		m.pool.live.Add(1)
		m.pool.put(in)
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
// cancelled by a reused timer when a call overruns the deadline; wazero
// then stops the guest, and the instance is discarded.
type instance struct {
	m      *module
	mod    api.Module
	ctx    context.Context
	cancel context.CancelFunc
	timer  *time.Timer
	onReq  api.Function
	onResp api.Function
	stack  [1]uint64
	phases int32

	// remain is what is left of the running call's deadline when its
	// clock last started, at since; pause and resume take the time spent
	// in heavy host functions out of it.
	remain time.Duration
	since  time.Time
	paused bool

	ex         *exchange // the request being served, during a call
	lastErrLog string    // the last error the guest logged, for load errors
	stdout     *lineWriter
	stderr     *lineWriter
}

type instanceKey struct{}

// errDeadline marks a call cut at the deadline.
var errDeadline = errors.New("deadline exceeded")

func (m *module) newInstance(ctx context.Context) (*instance, error) {
	p := m.p
	in := &instance{m: m}
	base, cancel := context.WithCancel(context.Background())
	in.ctx, in.cancel = context.WithValue(base, instanceKey{}, in), cancel
	in.timer = time.AfterFunc(p.opts.StartTimeout, cancel)
	in.stdout = newLineWriter(p.log, "stdout")
	in.stderr = newLineWriter(p.log, "stderr")
	cfg := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions("_initialize").
		WithStdout(in.stdout).
		WithStderr(in.stderr).
		WithSysWalltime().
		WithSysNanotime().
		WithRandSource(rand.Reader)
	mod, err := m.rt.InstantiateModule(in.ctx, m.cm, cfg)
	fired := !in.timer.Stop()
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
	ver, err := in.call(mod.ExportedFunction(abi.ExportVersion), p.opts.StartTimeout)
	if err != nil {
		return fail(fmt.Errorf("call %s: %w", abi.ExportVersion, describeCallError(err)))
	}
	if ver != abi.Version {
		return fail(fmt.Errorf("module speaks ABI version %d; this host speaks version %d", int32(ver), abi.Version))
	}
	phases, err := in.call(mod.ExportedFunction(abi.ExportStart), p.opts.StartTimeout)
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

// call runs fn with the given deadline and returns its i32 result. After an
// error the instance must be discarded.
func (in *instance) call(fn api.Function, deadline time.Duration) (uint32, error) {
	in.remain, in.since = deadline, time.Now()
	in.timer.Reset(deadline)
	err := fn.CallWithStack(in.ctx, in.stack[:])
	if !in.timer.Stop() {
		if err == nil {
			err = errDeadline
		}
		return 0, fmt.Errorf("%w: %w", errDeadline, err)
	}
	if err != nil {
		return 0, err
	}
	return uint32(in.stack[0]), nil
}

// pause stops the deadline's clock while the host works for the guest
// (JSON rewriting, KV round trips): the deadline bounds the guest's own
// time, and host work preempted on a saturated CPU would otherwise eat it.
// It costs two timer operations per heavy host call.
func (in *instance) pause() {
	if in.timer.Stop() {
		in.paused = true
		in.remain -= time.Since(in.since)
	}
}

// resume restarts the deadline's clock with what is left of the budget.
func (in *instance) resume() {
	if in.paused {
		in.paused = false
		in.since = time.Now()
		in.timer.Reset(max(in.remain, 0))
	}
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
	}
	return "trap"
}

var errBadAction = errors.New("invalid action returned")

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

// pool is a bounded set of instances. Idle ones wait in a channel; a
// discarded one is replaced in the background.
type pool struct {
	m       *module
	idle    chan *instance
	live    atomic.Int32
	max     int32
	failing atomic.Int32 // replacements that failed to start
	closed  atomic.Bool
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
	// Below the bound (replacements that failed to start): start one here.
	for n := pl.live.Load(); n < pl.max; n = pl.live.Load() {
		if pl.live.CompareAndSwap(n, n+1) {
			in, err := pl.m.newInstance(ctx)
			if err != nil {
				pl.live.Add(-1)
				pl.failing.Add(1)
				return nil, err
			}
			pl.failing.Store(0)
			return in, nil
		}
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

func (pl *pool) put(in *instance) {
	in.ex = nil
	if pl.closed.Load() {
		in.close()
		pl.live.Add(-1)
		return
	}
	select {
	case pl.idle <- in:
	default: // cannot happen while live counts slots; never block
		in.close()
		pl.live.Add(-1)
	}
}

// discard closes a failed instance and starts a replacement in its slot
// of the pool; when the replacement fails, the slot is freed and get
// starts an instance in it later.
func (pl *pool) discard(in *instance) {
	in.close()
	pl.m.p.metrics.discarded.Inc()
	if pl.closed.Load() {
		pl.live.Add(-1)
		return
	}
	pl.m.refs.Add(1) // keep the module open while replacing
	go func() {
		defer pl.m.release()
		if pl.closed.Load() || pl.m.retired.Load() {
			pl.live.Add(-1)
			return
		}
		n, err := pl.m.newInstance(context.Background())
		if err != nil {
			pl.live.Add(-1)
			pl.failing.Add(1)
			pl.m.p.log.Error("wasm instance could not be restarted", "error", err)
			return
		}
		pl.failing.Store(0)
		pl.put(n)
	}()
}

// closeIdle closes the idle instances; instances in use are closed when
// they are put back.
func (pl *pool) closeIdle() {
	pl.closed.Store(true)
	for {
		select {
		case in := <-pl.idle:
			in.close()
			pl.live.Add(-1)
		default:
			return
		}
	}
}
