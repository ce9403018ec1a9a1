package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"

	"github.com/omnigate/omnigate/gateway/console"
)

// Options configure a Server beyond its Config.
type Options struct {
	// Logger is the process logger. Default: built from Config.Log,
	// writing to LogOutput. When Logger is set, access log lines go to it
	// too, unbuffered (tests and embedding programs use this).
	Logger *slog.Logger
	// LogOutput receives the process log and, unless log.access_log_file is
	// set, the access log. Default os.Stderr.
	LogOutput io.Writer
	// Registry receives the gateway's and the plugins' metrics and is
	// served on /metrics. Default: NewRegistry().
	Registry *prometheus.Registry
	// Version is reported by /ping.
	Version string
}

// Server is a running gateway: a public listener whose routes run plugin
// chains in front of terminal handlers, and an admin listener. Its config
// can be replaced while it serves (Reload).
type Server struct {
	opts        Options
	logger      *slog.Logger
	accessLog   *slog.Logger // when Options.Logger is given
	accessLines *accessLog   // otherwise: the fast line encoder
	logCloser   []io.Closer
	reg         *prometheus.Registry
	described   *describingRegisterer
	metrics     *metrics
	started     time.Time
	after       func(time.Duration) <-chan time.Time // the shutdown delay's clock; tests replace it
	cur         atomic.Pointer[runtime]
	draining    atomic.Bool
	// budget is the body budget every request draws on (server.body_budget).
	budget bodyBudget
	trim   trimmer
	// public counts requests in flight on the public listener
	// (server.max_in_flight).
	public atomic.Int64

	reloadMu sync.Mutex
	stopped  bool           // Shutdown retired the last runtime; under reloadMu
	closing  sync.WaitGroup // retired runtimes still closing

	sharedMu sync.Mutex
	shared   map[string]*sharedEntry

	httpSrv, adminSrv *http.Server
	ln, adminLn       net.Listener
	serveErr          chan error

	// sampler keeps the recent samples of the metrics the console charts;
	// it runs while the admin listener serves (stopSampler ends it).
	sampler     *console.Sampler
	stopSampler context.CancelFunc
	console     *console.Console
}

type sharedEntry struct {
	v    any
	refs int
}

// runtime is everything built from one config: plugins, handlers, routes.
// Requests hold a reference while they run, so a reload can close the old
// runtime once its last request has finished.
type runtime struct {
	cfg           *Config
	srv           *Server
	router        *router
	admin         *httprouter.Router
	plugins       []namedPlugin
	closers       []io.Closer
	health        []healthCheck
	adminRoutes   []mountedRoute
	publicRoutes  []mountedRoute
	sharedKeys    []string
	credentials   []Credential // the gateway's own credentials, never proxied
	onStart       []func(ctx context.Context, h http.Handler)
	cancel        context.CancelFunc
	unmatched     *route
	unmatchedFHIR *route
	fhirBase      string
	// fhir is the embedded FHIR server, nil when no route uses it; written
	// by build before the runtime is published, read by Env.FHIRHandler.
	fhir http.Handler

	inflight atomic.Int64
	retired  atomic.Bool
	// started is set once the runtime serves, closed once it has closed
	// (Env.FHIRHandler).
	started, closed atomic.Bool
	idleOnce        sync.Once
	idle            chan struct{}
}

// New builds a server from cfg: every plugin is constructed and every route
// linked; nothing listens until Start. The error names the config file,
// line and key of what failed.
func New(ctx context.Context, cfg *Config, opts Options) (*Server, error) {
	if opts.Registry == nil {
		opts.Registry = NewRegistry()
	}
	s := &Server{
		opts:     opts,
		reg:      opts.Registry,
		started:  time.Now(),
		after:    time.After,
		shared:   map[string]*sharedEntry{},
		serveErr: make(chan error, 2),
	}
	if err := s.setupLogs(cfg); err != nil {
		return nil, err
	}
	s.described = &describingRegisterer{reg: s.reg, names: map[string]bool{}}
	s.metrics = newMetrics(s.described)
	s.described.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: MetricBodyBudget, Help: "Bytes of buffered request and response bodies held against server.body_budget.",
	}, func() float64 { return float64(s.budget.used.Load()) }))
	s.budget.limit.Store(int64(cfg.Server.BodyBudget))
	s.budget.wait = budgetWait
	var err error
	if s.sampler, err = console.NewSampler(console.SamplerOptions{Gatherer: s.reg}); err != nil {
		s.closeLogs()
		return nil, err
	}
	if s.console, err = console.New(console.Options{Overview: s.consoleOverview, Gatherer: s.reg,
		TokenRequired: func() bool { return s.Config().Admin.Token != "" }}); err != nil {
		s.closeLogs()
		return nil, err
	}
	rt, err := s.build(ctx, cfg)
	if err != nil {
		s.closeLogs()
		return nil, err
	}
	s.cur.Store(rt)
	s.runOnStart(rt)
	s.metrics.reloadTime.SetToCurrentTime()
	return s, nil
}

// setupLogs builds the process logger and the access logger.
func (s *Server) setupLogs(cfg *Config) error {
	if s.opts.Logger != nil {
		s.logger, s.accessLog = s.opts.Logger, s.opts.Logger
		return nil
	}
	out := s.opts.LogOutput
	if out == nil {
		out = os.Stderr
	}
	s.logger = NewLogger(cfg.Log, out)
	access := out
	if cfg.Log.AccessLogFile != "" {
		f, err := os.OpenFile(cfg.Log.AccessLogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return cfg.Errorf("log.access_log_file", "%v", err)
		}
		s.logCloser = append(s.logCloser, f)
		access = f
	}
	if cfg.Log.AccessLogBuffer > 0 {
		lb := newLineBuffer(access, int(cfg.Log.AccessLogBuffer), cfg.Log.AccessLogFlush)
		s.logCloser = append([]io.Closer{lb}, s.logCloser...)
		access = lb
	}
	s.accessLines = newAccessLog(access, cfg.Log.Format)
	return nil
}

func (s *Server) closeLogs() {
	for _, c := range s.logCloser {
		c.Close()
	}
	s.logCloser = nil
}

// Config returns the config being served.
func (s *Server) Config() *Config { return s.cur.Load().cfg }

// Logger returns the process logger.
func (s *Server) Logger() *slog.Logger { return s.logger }

func (s *Server) build(ctx context.Context, cfg *Config) (_ *runtime, err error) {
	rt := &runtime{cfg: cfg, srv: s, idle: make(chan struct{}), fhirBase: cfg.FHIRBasePath()}
	defer func() {
		if err != nil {
			rt.close()
		}
	}()
	byName := map[string]Plugin{}
	for _, spec := range cfg.Plugins {
		pt, ok := lookupPluginType(spec.Type)
		if !ok {
			return nil, cfg.Errorf(spec.key+".type", "unknown plugin type %q", spec.Type)
		}
		p, err := pt.build(ctx, spec.Config, s.env(rt, spec.Name, spec.Type))
		if err != nil {
			return nil, cfg.Errorf(spec.key, "%v", err)
		}
		rt.plugins = append(rt.plugins, namedPlugin{spec.Name, p})
		byName[spec.Name] = p
		if c, ok := p.(io.Closer); ok {
			rt.closers = append(rt.closers, c)
		}
	}

	var fhir http.Handler
	for i := range cfg.Routes {
		if !cfg.Routes[i].FHIR || fhir != nil {
			continue
		}
		h := registeredHandler()
		if h == nil {
			return nil, cfg.Errorf(fmt.Sprintf("routes[%d].fhir", i), "this build has no embedded FHIR server")
		}
		fhir, err = h.build(ctx, cfg.fhirConfig, s.env(rt, "fhir", "fhir"))
		if err != nil {
			return nil, cfg.Errorf("fhir", "%v", err)
		}
		if c, ok := fhir.(io.Closer); ok {
			// First in the list, so closed last: after the plugins,
			// which may still write to it as they close.
			rt.closers = append([]io.Closer{c}, rt.closers...)
		}
	}
	rt.fhir = fhir

	handles := make([]httprouter.Handle, len(cfg.Routes))
	for i := range cfg.Routes {
		rc := &cfg.Routes[i]
		term := &terminal{name: "fhir", h: fhir, srv: s}
		if rc.Upstream != nil {
			up, err := newUpstream(s, rt, rc.Name, rc.Upstream)
			if err != nil {
				return nil, cfg.Errorf(fmt.Sprintf("routes[%d].upstream", i), "%v", err)
			}
			rt.closers = append(rt.closers, up)
			term = &terminal{name: "upstream", h: up, srv: s, streams: true}
		}
		chain := make([]namedPlugin, len(rc.Plugins))
		for j, name := range rc.Plugins {
			chain[j] = namedPlugin{name, byName[name]}
		}
		compress := rc.Compress == nil || *rc.Compress
		r, err := s.newRoute(cfg, RouteInfo{Name: rc.Name, Pattern: rc.Path, FHIR: rc.IsFHIR()},
			s.buildChain(chain, term), int64(rc.MaxBody), compress)
		if err != nil {
			return nil, err
		}
		handles[i] = r.handle
	}
	specs := configRouteSpecs(cfg, handles)
	for _, m := range rt.publicRoutes {
		r, err := s.newRoute(cfg, RouteInfo{Name: "plugin:" + m.plugin, Pattern: m.path},
			&terminal{name: m.plugin, h: m.h, srv: s}, int64(cfg.Server.MaxBody), true)
		if err != nil {
			return nil, err
		}
		key := "plugins." + m.plugin
		specs = append(specs, routeSpec{
			path: m.path, methods: []string{m.method}, handle: r.handleWithParams,
			errorf: func(format string, args ...any) error {
				return cfg.Errorf(key, "endpoint "+m.method+" "+m.path+": "+format, args...)
			},
			desc: "plugin " + m.plugin,
		})
	}
	if rt.router, err = newRouter(specs); err != nil {
		return nil, err
	}
	rt.admin = httprouter.New()
	rt.admin.HandleMethodNotAllowed = true
	rt.admin.NotFound = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no admin endpoint "+r.URL.Path, false)
	})
	for _, m := range rt.adminRoutes {
		if err := tryLayer(nil, []routeEntry{{method: m.method, path: m.path, handle: func(http.ResponseWriter, *http.Request, httprouter.Params) {}}}); err != nil {
			return nil, cfg.Errorf("plugins."+m.plugin, "admin endpoint %s %s: %v", m.method, m.path, err)
		}
		if h, _, _ := rt.admin.Lookup(m.method, m.path); h != nil {
			return nil, cfg.Errorf("plugins."+m.plugin, "admin endpoint %s %s is mounted twice", m.method, m.path)
		}
		rt.admin.Handler(m.method, m.path, m.h)
	}
	unmatched := func(fhir bool) (*route, error) {
		return s.newRoute(cfg, RouteInfo{Name: "unmatched", FHIR: fhir}, http.HandlerFunc(rt.notFound), int64(cfg.Server.MaxBody), false)
	}
	if rt.unmatched, err = unmatched(false); err != nil {
		return nil, err
	}
	if rt.unmatchedFHIR, err = unmatched(true); err != nil {
		return nil, err
	}
	return rt, nil
}

func (s *Server) newRoute(cfg *Config, info RouteInfo, h http.Handler, maxBody int64, compress bool) (*route, error) {
	if compress {
		var err error
		if h, err = compressHandler(h, int(cfg.Server.CompressMinSize)); err != nil {
			return nil, cfg.Errorf("server.compress_min_size", "%v", err)
		}
	}
	return &route{
		info: info, srv: s, handler: h, maxBody: maxBody,
		duration:  s.metrics.duration.WithLabelValues(info.Name),
		accessLog: cfg.Log.AccessLog == nil || *cfg.Log.AccessLog,
		trusted:   cfg.Server.trusted,
	}, nil
}

func (r *route) handle(w http.ResponseWriter, req *http.Request, _ httprouter.Params) {
	r.ServeHTTP(w, req)
}

// handleWithParams puts the path parameters on the context, where
// httprouter.ParamsFromContext finds them (endpoints plugins mount).
func (r *route) handleWithParams(w http.ResponseWriter, req *http.Request, ps httprouter.Params) {
	if len(ps) > 0 {
		req = req.WithContext(context.WithValue(req.Context(), httprouter.ParamsKey, ps))
	}
	r.ServeHTTP(w, req)
}

func (s *Server) env(rt *runtime, name, typ string) *Env {
	return &Env{
		Name: name, Type: typ,
		Logger:     s.logger.With(slog.String("plugin", name)),
		Config:     rt.cfg,
		Registerer: s.described,
		rt:         rt,
	}
}

// notFound answers requests no route matched: 405 with Allow when the path
// exists for other methods, 404 otherwise.
func (rt *runtime) notFound(w http.ResponseWriter, r *http.Request) {
	if _, _, allow := rt.router.lookup(r.Method, r.URL.Path); len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		Error(w, r, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed here")
		return
	}
	Error(w, r, http.StatusNotFound, "no route for "+r.URL.Path)
}

// ServeHTTP serves a request on the public listener, and the requests
// plugins make in process (Env.Handler). Once Shutdown has closed the
// plugins, it answers 503 at once.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p, changed := cleanPath(r.URL.Path); changed {
		r.URL.Path, r.URL.RawPath = p, ""
	}
	rt := s.acquire()
	if rt == nil {
		s.unavailable(w, hasPathPrefix(r.URL.Path, s.cur.Load().fhirBase))
		return
	}
	defer rt.release()
	if h, ps, _ := rt.router.lookup(r.Method, r.URL.Path); h != nil {
		h(w, r, ps)
		return
	}
	if hasPathPrefix(r.URL.Path, rt.fhirBase) {
		rt.unmatchedFHIR.ServeHTTP(w, r)
		return
	}
	rt.unmatched.ServeHTTP(w, r)
}

// publicHandler serves the public listener: Server.ServeHTTP within
// server.max_in_flight.
type publicHandler struct{ s *Server }

func (h publicHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := h.s
	n := s.public.Add(1)
	defer s.public.Add(-1)
	if lim := s.cur.Load().cfg.Server.MaxInFlight; lim > 0 && n > int64(lim) {
		s.metrics.rejected.WithLabelValues("in_flight").Inc()
		w.Header().Set("Retry-After", budgetRetryAfter)
		writeError(w, http.StatusServiceUnavailable, "the gateway is serving as many requests as it may; retry later",
			hasPathPrefix(r.URL.Path, s.cur.Load().fhirBase))
		return
	}
	s.ServeHTTP(w, r)
}

func hasPathPrefix(p, prefix string) bool {
	return len(p) >= len(prefix) && p[:len(prefix)] == prefix && (len(p) == len(prefix) || p[len(prefix)] == '/')
}

// acquire returns the runtime serving now with a reference held, or nil
// once Shutdown has retired the last one: there is no runtime to wait for
// then, and the caller answers at once (see unavailable).
func (s *Server) acquire() *runtime {
	for {
		rt := s.cur.Load()
		rt.inflight.Add(1)
		if !rt.retired.Load() {
			return rt
		}
		rt.release()
		if s.cur.Load() == rt {
			// Retired and not swapped out: only Shutdown does that.
			return nil
		}
		// Swapped out by a reload meanwhile: use the new one.
	}
}

// shutdownRetryAfter is the Retry-After of the answers given after
// Shutdown: another instance, or this one restarted, serves soon.
const shutdownRetryAfter = "1"

// unavailable answers a request that arrives after Shutdown has retired the
// last runtime: 503 with Retry-After, as an OperationOutcome when fhir.
func (s *Server) unavailable(w http.ResponseWriter, fhir bool) {
	w.Header().Set("Retry-After", shutdownRetryAfter)
	writeError(w, http.StatusServiceUnavailable, "the gateway is shutting down", fhir)
}

func (rt *runtime) release() {
	if rt.inflight.Add(-1) == 0 && rt.retired.Load() {
		rt.idleOnce.Do(func() { close(rt.idle) })
	}
}

// runOnStart runs the OnStart callbacks of a runtime that now serves.
func (s *Server) runOnStart(rt *runtime) {
	ctx, cancel := context.WithCancel(context.Background())
	rt.cancel = cancel
	rt.started.Store(true)
	for _, fn := range rt.onStart {
		go fn(ctx, s)
	}
}

// retire stops new requests from using rt and closes it once its in-flight
// requests finish, or after the shutdown timeout.
func (s *Server) retire(rt *runtime) {
	rt.retired.Store(true)
	if rt.inflight.Load() == 0 {
		rt.idleOnce.Do(func() { close(rt.idle) })
	}
	s.closing.Add(1)
	go func() {
		defer s.closing.Done()
		t := time.NewTimer(rt.cfg.Server.ShutdownTimeout)
		defer t.Stop()
		select {
		case <-rt.idle:
		case <-t.C:
			s.logger.Warn("closing the previous config with requests still in flight", "in_flight", rt.inflight.Load())
		}
		rt.close()
	}()
}

// close closes the runtime's plugins and handlers in reverse order of
// construction, then releases its shared objects.
func (rt *runtime) close() {
	if rt.cancel != nil {
		rt.cancel()
	}
	for i := len(rt.closers) - 1; i >= 0; i-- {
		if err := rt.closers[i].Close(); err != nil {
			rt.srv.logger.Warn("close failed", "error", err)
		}
	}
	rt.closers = nil
	rt.closed.Store(true)
	rt.srv.releaseShared(rt)
}

func (s *Server) releaseShared(rt *runtime) {
	s.sharedMu.Lock()
	var toClose []io.Closer
	for i := len(rt.sharedKeys) - 1; i >= 0; i-- {
		k := rt.sharedKeys[i]
		e := s.shared[k]
		if e.refs--; e.refs == 0 {
			delete(s.shared, k)
			if c, ok := e.v.(io.Closer); ok {
				toClose = append(toClose, c)
			}
		}
	}
	rt.sharedKeys = nil
	s.sharedMu.Unlock()
	for _, c := range toClose {
		if err := c.Close(); err != nil {
			s.logger.Warn("close failed", "error", err)
		}
	}
}

// Reload builds cfg and swaps it in atomically: new requests use the new
// routes and plugins at once; requests in flight finish on the old ones,
// which are then closed. If cfg fails to build, the error is returned and
// the old config keeps serving. Listen addresses are not changed by a
// reload. Once Shutdown has begun closing the plugins, Reload refuses.
func (s *Server) Reload(ctx context.Context, cfg *Config) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.stopped {
		s.metrics.reloads.WithLabelValues("failure").Inc()
		return errors.New("gateway: shut down; not reloading")
	}
	rt, err := s.build(ctx, cfg)
	if err != nil {
		s.metrics.reloads.WithLabelValues("failure").Inc()
		return err
	}
	s.budget.limit.Store(int64(cfg.Server.BodyBudget))
	old := s.cur.Swap(rt)
	s.runOnStart(rt)
	if cfg.Listen != old.cfg.Listen || cfg.Admin.Listen != old.cfg.Admin.Listen {
		s.logger.Warn("listen addresses change only on restart", "listen", old.cfg.Listen, "admin", old.cfg.Admin.Listen)
	}
	if cfg.Server.MaxConnections != old.cfg.Server.MaxConnections {
		s.logger.Warn("server.max_connections changes only on restart", "max_connections", old.cfg.Server.MaxConnections)
	}
	s.retire(old)
	s.metrics.reloads.WithLabelValues("success").Inc()
	s.metrics.reloadTime.SetToCurrentTime()
	s.logger.Info("config reloaded", "file", cfg.File, "routes", len(cfg.Routes), "plugins", len(cfg.Plugins))
	return nil
}

// ReloadFrom loads a config with load and reloads it; a config that fails
// to load or build is counted as a failed reload and the old one keeps
// serving.
func (s *Server) ReloadFrom(ctx context.Context, load func() (*Config, error)) error {
	cfg, err := load()
	if err != nil {
		s.metrics.reloads.WithLabelValues("failure").Inc()
		return err
	}
	return s.Reload(ctx, cfg)
}

// Start binds the public and admin listeners and serves in the background.
func (s *Server) Start() error {
	cfg := s.Config()
	errLog := slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if n := cfg.Server.MaxConnections; n > 0 {
		ln = netutil.LimitListener(ln, n)
	}
	s.ln = ln
	s.httpSrv = &http.Server{
		Handler:           publicHandler{s},
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		ReadTimeout:       cfg.Server.ReadTimeout,
		WriteTimeout:      cfg.Server.WriteTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    int(cfg.Server.MaxHeaderBytes),
		ErrorLog:          errLog,
	}
	if cfg.Admin.Listen != "off" {
		aln, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen admin: %w", err)
		}
		s.adminLn = aln
		s.adminSrv = &http.Server{
			Handler:           s.AdminHandler(),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       cfg.Server.IdleTimeout,
			ErrorLog:          errLog,
		}
		go s.serve(s.adminSrv, aln)
		ctx, cancel := context.WithCancel(context.Background())
		s.stopSampler = cancel
		go s.sampler.Run(ctx)
	}
	go s.serve(s.httpSrv, ln)
	s.logger.Info("serving", "listen", ln.Addr().String(), "admin", s.AdminAddr(), "routes", len(cfg.Routes))
	return nil
}

func (s *Server) serve(srv *http.Server, ln net.Listener) {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.serveErr <- err
	}
}

// Err reports a listener that failed while serving.
func (s *Server) Err() <-chan error { return s.serveErr }

// Addr is the bound public address ("" before Start).
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// AdminAddr is the bound admin address ("" before Start or when off).
func (s *Server) AdminAddr() string {
	if s.adminLn == nil {
		return ""
	}
	return s.adminLn.Addr().String()
}

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool { return s.draining.Load() }

// Shutdown drains the server: /readyz turns 503, the public listener keeps
// serving for server.shutdown_delay, then stops accepting; in-flight
// requests get up to server.shutdown_timeout (or until ctx ends) to finish;
// then plugins are closed in reverse order and the admin listener stops.
// From then on every request, on the admin listener or made in process by
// a plugin, is answered at once with 503 and Retry-After.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.draining.Swap(true) {
		return errors.New("gateway: already shutting down")
	}
	cfg := s.Config()
	s.logger.Info("draining", "delay", cfg.Server.ShutdownDelay, "timeout", cfg.Server.ShutdownTimeout)
	if d := cfg.Server.ShutdownDelay; d > 0 {
		select {
		case <-s.after(d):
		case <-ctx.Done():
		}
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.Server.ShutdownTimeout)
	defer cancel()
	var err error
	if s.httpSrv != nil {
		if err = s.httpSrv.Shutdown(dctx); err != nil {
			s.logger.Warn("drain deadline passed; closing remaining connections", "error", err)
			s.httpSrv.Close()
		}
	}
	s.reloadMu.Lock()
	s.stopped = true // no reload swaps a runtime in after this one
	s.retire(s.cur.Load())
	s.reloadMu.Unlock()
	s.closing.Wait()
	if s.adminSrv != nil {
		s.adminSrv.Shutdown(dctx)
	}
	if s.stopSampler != nil {
		s.stopSampler()
	}
	s.closeLogs() // the access log's last lines before the last word
	s.logger.Info("stopped")
	return err
}
