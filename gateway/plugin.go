package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

// Plugin is one link of a route's chain. It may answer the request itself
// (and not call next), change the request before calling next, or change
// the response that next writes. A plugin is built once per config load and
// serves many requests concurrently.
//
// A plugin that holds resources also implements io.Closer; Close is called
// after the last request that used it has finished (on shutdown, in reverse
// order of construction, or after a reload swapped it out).
type Plugin interface {
	ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler)
}

// PluginFunc adapts a function to the Plugin interface.
type PluginFunc func(w http.ResponseWriter, r *http.Request, next http.Handler)

// ServeHTTP calls f(w, r, next).
func (f PluginFunc) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	f(w, r, next)
}

// Validator is implemented by plugin config structs that check themselves
// after decoding. Validate runs at load and in "omnigate config check",
// never per request. Return FieldError values (or errors.Join of them) to
// point at the offending key.
type Validator interface {
	Validate() error
}

// FieldError blames a key of a plugin's config, relative to the plugin
// (e.g. "limits.nurse.window"), so the error names the line it was on.
type FieldError struct {
	Key string
	Err error
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// FieldErrorf returns a *FieldError for key.
func FieldErrorf(key, format string, args ...any) error {
	return &FieldError{Key: key, Err: fmt.Errorf(format, args...)}
}

// Health is the state of one component, as /ping reports it.
type Health struct {
	// Status is up, down, degraded, disabled or loaded.
	Status string `json:"status"`
	// Required components make /ping answer 503 while they are down.
	Required bool `json:"required,omitempty"`
	// Detail explains the status in a few words.
	Detail string `json:"detail,omitempty"`
	// Warnings are problems that do not stop the component but need an
	// operator (a Redis that may evict or lose sessions).
	Warnings []string `json:"warnings,omitempty"`
}

// Health statuses.
const (
	StatusUp       = "up"
	StatusDown     = "down"
	StatusDegraded = "degraded"
	StatusDisabled = "disabled"
	StatusLoaded   = "loaded"
)

// HealthReporter is implemented by plugins whose health can change after
// load (a plugin process that died, a Wasm module that fails).
type HealthReporter interface {
	Health() Health
}

// Env is what a plugin's constructor gets besides its own config.
type Env struct {
	// Name is the plugin instance's name in the config.
	Name string
	// Type is the plugin's type.
	Type string
	// Logger logs with plugin=<name>.
	Logger *slog.Logger
	// Config is the whole, validated gateway config. Do not modify it.
	Config *Config
	// Registerer registers the plugin's metrics. Use RegisterMetric so that
	// a reload reuses the collectors of the previous load.
	Registerer prometheus.Registerer

	rt *runtime
}

// HandleAdmin mounts an endpoint on the admin listener (for example
// "GET /admin/ratelimit/stats"). Paths are httprouter patterns.
func (e *Env) HandleAdmin(method, path string, h http.Handler) {
	e.rt.adminRoutes = append(e.rt.adminRoutes, mountedRoute{method, path, h, e.Name})
}

// Handle mounts an endpoint on the public listener, outside any route's
// chain (for example "POST /auth/login"). It gets request ids, the access
// log, metrics and panic isolation, like routes do; path parameters are
// available through httprouter.ParamsFromContext.
func (e *Env) Handle(method, path string, h http.Handler) {
	e.rt.publicRoutes = append(e.rt.publicRoutes, mountedRoute{method, path, h, e.Name})
}

// OnStart registers fn to run, in its own goroutine, once this config load
// serves: after New for the first config, after the swap on a reload. h
// is the gateway's public handler, for requests made in process (use
// SetIdentity on their context to make them as a user). ctx ends when the
// load is retired or the gateway shuts down.
func (e *Env) OnStart(fn func(ctx context.Context, h http.Handler)) {
	e.rt.onStart = append(e.rt.onStart, fn)
}

// Handler returns the gateway's public handler, for requests made in
// process (see OnStart). It serves whichever config load is current.
func (e *Env) Handler() http.Handler { return e.rt.srv }

// FHIRHandler returns the embedded FHIR server for requests a plugin makes
// in process, outside every route: no plugin runs on them (no session, no
// access control, no audit, no cache), and they are neither logged nor
// counted as requests. The audit plugin writes its AuditEvents through it.
//
// From when the plugin's own config load serves until that load has closed,
// it serves with that load's FHIR server, so a plugin may use it until its
// Close returns (the FHIR server is closed after the plugins); otherwise
// (while the load is being built, after it closed) with that of whichever
// load is current. It answers 503 with an OperationOutcome when that load
// has no route with "fhir: true", and before the first config load serves
// (so not from a constructor of the first load). A request keeps the load
// it uses open until it finishes.
func (e *Env) FHIRHandler() http.Handler { return inProcessFHIR{e.rt} }

// inProcessFHIR is the handler FHIRHandler returns.
type inProcessFHIR struct{ own *runtime }

func (h inProcessFHIR) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s, rt := h.own.srv, h.own
	if !rt.started.Load() || rt.closed.Load() {
		rt = s.cur.Load()
	}
	if rt == nil || rt.fhir == nil {
		writeError(w, http.StatusServiceUnavailable, "no embedded FHIR server is serving", true)
		return
	}
	rt.inflight.Add(1)
	defer rt.release()
	defer func() {
		// A panic here would end the plugin's goroutine, and the process.
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				return
			}
			s.metrics.panics.WithLabelValues("fhir").Inc()
			s.logger.Error("panic recovered in an in-process FHIR request", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			writeError(w, http.StatusInternalServerError, "internal error", true)
		}
	}()
	rt.fhir.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), inProcessKey{}, true)))
}

type inProcessKey struct{}

// InProcess reports whether the request on ctx was made in process by a
// plugin through Env.FHIRHandler, outside every route (no client can make
// one). The embedded FHIR server trusts the shape of what such requests
// write: it skips their schema validation.
func InProcess(ctx context.Context) bool {
	v, _ := ctx.Value(inProcessKey{}).(bool)
	return v
}

// AddHealth adds a component to /ping. check is called on every /ping.
func (e *Env) AddHealth(name string, check func() Health) {
	e.rt.health = append(e.rt.health, healthCheck{name, check})
}

// Shared returns the object stored under key, calling create the first
// time. All plugins of a config load share it, and a reload that asks for
// the same key gets the same object, so connections and stores survive
// reloads; put whatever config the object depends on into the key. An
// object that implements io.Closer is closed when no loaded config uses it
// any more, after the plugins of that load.
func (e *Env) Shared(key string, create func() (any, error)) (any, error) {
	s, rt := e.rt.srv, e.rt
	s.sharedMu.Lock()
	defer s.sharedMu.Unlock()
	if ent, ok := s.shared[key]; ok {
		if !slices.Contains(rt.sharedKeys, key) {
			ent.refs++
			rt.sharedKeys = append(rt.sharedKeys, key)
		}
		return ent.v, nil
	}
	v, err := create()
	if err != nil {
		return nil, err
	}
	s.shared[key] = &sharedEntry{v: v, refs: 1}
	rt.sharedKeys = append(rt.sharedKeys, key)
	return v, nil
}

// RegisterMetric registers c with reg and returns it, or returns the
// collector already registered under the same description (after a
// reload). It panics on a conflicting description, a programming error.
func RegisterMetric[T prometheus.Collector](reg prometheus.Registerer, c T) T {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing
			}
		}
		panic(fmt.Sprintf("gateway: register metric: %v", err))
	}
	return c
}

type mountedRoute struct {
	method, path string
	h            http.Handler
	plugin       string
}

type healthCheck struct {
	name  string
	check func() Health
}

type pluginType struct {
	name      string
	newConfig func() any
	build     func(ctx context.Context, cfg any, env *Env) (Plugin, error)
}

var (
	registryMu  sync.RWMutex
	pluginTypes = map[string]*pluginType{}
	fhirHandler *handlerType
)

// RegisterPlugin adds a plugin type. defaults returns the type's config
// struct with its defaults set; the instance's keys are decoded onto it
// strictly (unknown keys are errors), then Validate runs if *C implements
// Validator, then build constructs the plugin: all dialing, compiling and
// precomputation happens there, never per request. RegisterPlugin panics if
// the name is taken; call it from an init function.
func RegisterPlugin[C any](name string, defaults func() *C, build func(ctx context.Context, cfg *C, env *Env) (Plugin, error)) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := pluginTypes[name]; dup {
		panic("gateway: plugin type registered twice: " + name)
	}
	pluginTypes[name] = &pluginType{
		name:      name,
		newConfig: func() any { return defaults() },
		build: func(ctx context.Context, cfg any, env *Env) (Plugin, error) {
			return build(ctx, cfg.(*C), env)
		},
	}
}

// PluginTypes lists the registered plugin types, sorted.
func PluginTypes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(pluginTypes))
	for n := range pluginTypes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// PluginConfig returns a new config of the plugin type name with its
// defaults set (a pointer to the struct its keys decode onto), for tools
// that document or check config files; false when no such type is
// registered.
func PluginConfig(name string) (any, bool) {
	pt, ok := lookupPluginType(name)
	if !ok {
		return nil, false
	}
	return pt.newConfig(), true
}

func lookupPluginType(name string) (*pluginType, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	pt, ok := pluginTypes[name]
	return pt, ok
}

func (pt *pluginType) decode(c *Config, node *yaml.Node, key string) any {
	return decodeModule(c, pt.newConfig(), node, key)
}

// decodeModule decodes node onto cfg and runs its Validate, recording
// errors on c.
func decodeModule(c *Config, cfg any, node *yaml.Node, key string) any {
	before := c.dec.Count()
	if node != nil {
		c.dec.Decode(node, cfg, key)
	}
	if c.dec.Count() > before {
		// Validating a half-decoded config would only add noise.
		return cfg
	}
	if v, ok := cfg.(Validator); ok {
		if err := v.Validate(); err != nil {
			for _, e := range flattenErrors(err) {
				var fe *FieldError
				if errors.As(e, &fe) {
					c.dec.Add(c.Errorf(key+"."+fe.Key, "%v", fe.Err))
				} else {
					c.dec.Add(c.Errorf(key, "%v", e))
				}
			}
		}
	}
	return cfg
}

func flattenErrors(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flattenErrors(e)...)
		}
		return out
	}
	return []error{err}
}

type handlerType struct {
	newConfig func() any
	build     func(ctx context.Context, cfg any, env *Env) (http.Handler, error)
}

func (h *handlerType) decode(c *Config, node *yaml.Node, key string) any {
	return decodeModule(c, h.newConfig(), node, key)
}

// RegisterFHIRHandler installs the embedded FHIR server, the terminal of
// routes with "fhir: true". The top-level "fhir" key of the config is
// decoded onto defaults() like a plugin's config; if *C has a method
// BasePath() string, it sets where fhir routes are mounted. The handler is
// built once per config load when a route uses it; if it implements
// io.Closer it is closed after the plugins.
func RegisterFHIRHandler[C any](defaults func() *C, build func(ctx context.Context, cfg *C, env *Env) (http.Handler, error)) {
	registryMu.Lock()
	defer registryMu.Unlock()
	fhirHandler = &handlerType{
		newConfig: func() any { return defaults() },
		build: func(ctx context.Context, cfg any, env *Env) (http.Handler, error) {
			return build(ctx, cfg.(*C), env)
		},
	}
}

func registeredHandler() *handlerType {
	registryMu.RLock()
	defer registryMu.RUnlock()
	return fhirHandler
}
