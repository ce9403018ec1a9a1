package authz

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/plural"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

func init() {
	gateway.RegisterPlugin("authz", Defaults, New)
}

// Plugin is one authz plugin instance.
type Plugin struct {
	name     string
	cfg      *Config
	logger   *slog.Logger
	now      func() time.Time
	routes   map[string]*routeInfo
	def      *routeInfo
	policies *policyCache
	ring     *accessRing
	metrics  *metrics
	bgRoles  map[string]bool
}

var (
	_ gateway.Plugin         = (*Plugin)(nil)
	_ gateway.HealthReporter = (*Plugin)(nil)
)

// routeInfo is how the plugin works on one route.
type routeInfo struct {
	name string
	// base is the FHIR base request paths are read under.
	base string
	// gateway is set when the plugin enforces compartments, constraints,
	// includes and bundle entries itself (upstream routes, and embedded
	// ones with enforcement.embedded: gateway); otherwise the embedded
	// server enforces them from the policy on the context.
	gateway bool
}

// New builds the plugin. It fails when cfg does not validate (see
// Config.Validate) or when a route using it is not under its FHIR base.
func New(ctx context.Context, cfg *Config, env *gateway.Env) (gateway.Plugin, error) {
	return newPlugin(cfg, env, time.Now)
}

// newPlugin is New on the clock now (the time break-glass accesses are
// listed with).
func newPlugin(cfg *Config, env *gateway.Env, now func() time.Time) (*Plugin, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("authz config: %w", err)
	}
	p := &Plugin{
		name: env.Name, cfg: cfg, logger: env.Logger, now: now,
		routes:   map[string]*routeInfo{},
		policies: newPolicyCache(cfg.PolicyCache),
		ring:     newAccessRing(cfg.BreakGlass.Recent),
		metrics:  newMetrics(env.Registerer, cfg),
		bgRoles:  map[string]bool{},
	}
	for _, r := range cfg.BreakGlass.Roles {
		p.bgRoles[r] = true
	}
	base := cfg.BasePath
	if base == "" {
		base = env.Config.FHIRBasePath()
	}
	// A route the plugin does not know (a harness outside a gateway) is
	// enforced by the plugin itself: the safe choice.
	p.def = &routeInfo{base: base, gateway: true}
	for _, rc := range env.Config.Routes {
		if !slices.Contains(rc.Plugins, env.Name) {
			continue
		}
		ri := &routeInfo{name: rc.Name, base: base, gateway: rc.Upstream != nil || cfg.Enforcement.Embedded == EnforceGateway}
		if b, ok := cfg.RouteBasePaths[rc.Name]; ok {
			ri.base = b
		}
		if !underBase(rc.Path, ri.base) {
			return nil, gateway.FieldErrorf("route_base_paths", "route %s (path %s) is not under the FHIR base %s: set route_base_paths.%s", rc.Name, rc.Path, ri.base, rc.Name)
		}
		p.routes[rc.Name] = ri
	}
	for name := range cfg.RouteBasePaths {
		if p.routes[name] == nil {
			return nil, gateway.FieldErrorf("route_base_paths."+name, "no route named %s uses this plugin", name)
		}
	}
	if err := p.mountAdmin(env); err != nil {
		return nil, err
	}
	return p, nil
}

// underBase reports whether requests to a route with pattern can be FHIR
// requests under base: the pattern's literal prefix is inside base, or
// base is inside it.
func underBase(pattern, base string) bool {
	lit := pattern
	if i := strings.IndexAny(lit, ":*"); i >= 0 {
		lit = lit[:i]
	}
	lit = strings.TrimSuffix(lit, "/")
	return hasPathPrefix(lit, base) || hasPathPrefix(base, lit) || lit == ""
}

func hasPathPrefix(p, prefix string) bool {
	return len(p) >= len(prefix) && p[:len(prefix)] == prefix && (len(p) == len(prefix) || p[len(prefix)] == '/' || prefix == "/")
}

// registry holds the authz instances of one config load, so that one of
// them serves the admin endpoint for all.
type registry struct {
	mu      sync.Mutex
	plugins []*Plugin
}

func (p *Plugin) mountAdmin(env *gateway.Env) error {
	v, err := env.Shared(fmt.Sprintf("authz-registry:%p", env.Config), func() (any, error) { return &registry{}, nil })
	if err != nil {
		return err
	}
	reg := v.(*registry)
	reg.mu.Lock()
	reg.plugins = append(reg.plugins, p)
	reg.mu.Unlock()
	// The first authz instance of the config serves the endpoint for all.
	for _, spec := range env.Config.Plugins {
		if spec.Type == env.Type {
			if spec.Name == env.Name {
				env.HandleAdmin(http.MethodGet, "/admin/authz/break-glass", http.HandlerFunc(reg.serveBreakGlass))
			}
			break
		}
	}
	return nil
}

// Health reports the plugin loaded with its roles and cached policies.
func (p *Plugin) Health() gateway.Health {
	return gateway.Health{Status: gateway.StatusLoaded,
		Detail: plural.Of(len(p.cfg.Roles), "role") + ", " + plural.Of(p.policies.len(), "policy", "policies") + " cached, " +
			plural.Of(p.ring.totalCount(), "break-glass access", "break-glass accesses")}
}

func (p *Plugin) routeFor(name string) *routeInfo {
	if ri, ok := p.routes[name]; ok {
		return ri
	}
	return p.def
}

// call is one request being decided.
type call struct {
	p     *Plugin
	w     http.ResponseWriter
	r     *http.Request
	next  http.Handler
	rt    *routeInfo
	route string
	rec   *access.Record
	id    *gateway.Identity
	pol   *access.Policy
	bg    string // the break-glass reason, "" when none was claimed

	interaction, typ string // decided, for the record and metrics
	label            string // interaction label for metrics
	entries          []access.EntryDecision
	done             bool
}

// ServeHTTP decides the request and passes it on, or answers 401, 403 (or,
// for what the gateway enforces itself, 404 and 412) with an
// OperationOutcome.
func (p *Plugin) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	ctx := r.Context()
	info, _ := gateway.RouteFrom(ctx)
	rt := p.routeFor(info.Name)
	// The claim never travels further, whoever sent it.
	bgValues := r.Header.Values(p.cfg.BreakGlass.Header)
	if len(bgValues) > 0 {
		bgValues = slices.Clone(bgValues)
		r.Header.Del(p.cfg.BreakGlass.Header)
	}
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		next.ServeHTTP(w, r) // CORS preflight: no data, no credentials
		return
	}
	if rt.gateway {
		// What goes on is what was decided: the decoded path (not an
		// encoding the upstream might read otherwise), and no method
		// override some servers honour.
		r.URL.RawPath = ""
		for _, h := range methodOverrides {
			r.Header.Del(h)
		}
	}
	id := gateway.IdentityFrom(ctx)
	req, ok := fhirreq.Parse(r.Method, r.URL.Path, rt.base)
	if ok && req.Interaction == fhirreq.Capabilities || !ok && isSMARTConfig(r, rt.base) {
		role := ""
		if id != nil {
			role = id.Role
		}
		access.RecordFrom(ctx).Set(access.RecordData{Decided: true, Allowed: true, Interaction: fhirreq.Capabilities})
		p.metrics.decision(resultAllow, role, fhirreq.Capabilities)
		next.ServeHTTP(w, r)
		return
	}
	c := &call{p: p, w: w, r: r, next: next, rt: rt, route: info.Name, rec: access.RecordFrom(ctx), id: id,
		interaction: req.Interaction, typ: req.Type, label: req.Interaction}
	if !ok {
		c.label = "unknown"
	}
	if id == nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="omnigate"`)
		c.refuse(http.StatusUnauthorized, "authentication required")
		return
	}
	if !ok {
		c.refuse(http.StatusForbidden, r.Method+" "+r.URL.Path+" is not a FHIR RESTful interaction")
		return
	}
	if rt.gateway && strings.Contains(r.URL.RawQuery, "_method") {
		if q, _ := url.ParseQuery(r.URL.RawQuery); q.Has("_method") {
			c.refuse(http.StatusForbidden, "_method overrides the interaction decided: not allowed here")
			return
		}
	}
	ip := p.policies.get(id, p.buildPolicy)
	c.pol = ip.pol
	if len(bgValues) > 0 && p.bgRoles[id.Role] {
		if len(bgValues) > 1 {
			c.fail(http.StatusBadRequest, "send one "+p.cfg.BreakGlass.Header+" header")
			return
		}
		reason, err := checkReason(bgValues[0], p.cfg.BreakGlass.MaxReason)
		if err != nil {
			c.fail(http.StatusBadRequest, err.Error())
			return
		}
		c.bg = reason
		c.pol = p.breakGlassPolicy(id, ip, reason)
	}
	if c.pol == nil {
		c.refuse(http.StatusForbidden, ip.refusal)
		return
	}
	if req.Interaction == fhirreq.Batch {
		c.serveBundle()
		return
	}
	c.serveOne(req)
}

// methodOverrides are headers some servers read as the request's method.
var methodOverrides = []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}

func isSMARTConfig(r *http.Request, base string) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		r.URL.Path == strings.TrimSuffix(base, "/")+"/.well-known/smart-configuration"
}

// serveOne decides a request that is not a batch or transaction.
func (c *call) serveOne(req fhirreq.Request) {
	r := c.r
	conditional := req.Interaction == fhirreq.Create && r.Header.Get("If-None-Exist") != "" ||
		req.ID == "" && (req.Interaction == fhirreq.Update || req.Interaction == fhirreq.Patch || req.Interaction == fhirreq.Delete)
	perm, typ, why := c.p.need(req, conditional)
	if why != "" {
		c.refuse(http.StatusForbidden, why)
		return
	}
	dec := c.pol.Decide(perm, typ)
	if !dec.Allowed {
		c.refuse(http.StatusForbidden, dec.Reason)
		return
	}
	if why := compartmentMismatch(req, dec); why != "" {
		c.refuse(http.StatusForbidden, why)
		return
	}
	var query url.Values
	if isSearch(req.Interaction) {
		q, err := c.searchParams()
		if err != nil {
			c.fail(statusOf(err), err.Error())
			return
		}
		if why := c.searchParamsReason(req.Type, q); why != "" {
			c.refuse(http.StatusForbidden, why)
			return
		}
		query = q
	}
	c.r = r.WithContext(access.WithPolicy(r.Context(), c.pol))
	if !c.rt.gateway {
		c.allow(dec.Compartment, "")
		c.next.ServeHTTP(c.w, c.r)
		return
	}
	c.enforceOne(req, dec, perm, query)
}

// need returns the permission an interaction needs and the type it needs
// it on ("" for every type), or why it cannot be allowed.
func (p *Plugin) need(req fhirreq.Request, conditional bool) (access.Perm, string, string) {
	if req.Interaction == fhirreq.Operation {
		oc, ok := p.cfg.Operations[req.Operation]
		if !ok {
			return 0, "", "operation $" + req.Operation + " is not allowed"
		}
		if req.Type == "" {
			if !oc.System {
				return 0, "", "operation $" + req.Operation + " cannot be invoked at the base"
			}
			return oc.perm, "", ""
		}
		if !slices.Contains(oc.Types, "*") && !slices.Contains(oc.Types, req.Type) {
			return 0, "", "operation $" + req.Operation + " cannot be invoked on " + req.Type
		}
		if oc.AllTypes {
			return oc.perm, "", ""
		}
		return oc.perm, req.Type, ""
	}
	perm, ok := access.PermOf(req.Interaction)
	if !ok {
		return 0, "", "interaction " + req.Interaction + " is not allowed here"
	}
	if conditional {
		perm |= access.Search
	}
	return perm, req.Type, ""
}

// compartmentMismatch refuses a compartment search (Patient/355/Observation)
// of another patient than the one a confined decision is for.
func compartmentMismatch(req fhirreq.Request, dec access.Decision) string {
	if req.CompartmentType == "Patient" && dec.Compartment != "" && req.CompartmentID != dec.Compartment {
		return "Patient/" + req.CompartmentID + " is not the patient in context"
	}
	return ""
}

func isSearch(interaction string) bool {
	return interaction == fhirreq.SearchType || interaction == fhirreq.SearchSystem
}

// searchParams returns the parameters of a search: the query string and,
// for POST _search, the form body (which is put back for the next
// handler).
func (c *call) searchParams() (url.Values, error) {
	q, err := url.ParseQuery(c.r.URL.RawQuery)
	if err != nil {
		return nil, httpErr(http.StatusBadRequest, "bad query string: "+err.Error())
	}
	if c.r.Method != http.MethodPost {
		return q, nil
	}
	body, err := c.readBody()
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(body)) > 0 {
		if mt, _, _ := mime.ParseMediaType(c.r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
			return nil, httpErr(http.StatusUnsupportedMediaType, "POST _search takes a form body (application/x-www-form-urlencoded)")
		}
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, httpErr(http.StatusBadRequest, "bad form body: "+err.Error())
		}
		for k, v := range form {
			q[k] = append(q[k], v...)
		}
	}
	return q, nil
}

// readBody reads the request body within the route's limit and puts it
// back for the next handler.
func (c *call) readBody() ([]byte, error) {
	if c.r.Body == nil || c.r.Body == http.NoBody {
		return nil, nil
	}
	b, err := gateway.ReadBody(c.r.Context(), c.r, -1)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, httpErr(http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds the limit of %d bytes", mbe.Limit))
		}
		return nil, httpErr(http.StatusBadRequest, "read request body: "+err.Error())
	}
	return b, nil
}

// searchParamsReason refuses reverse chains (_has) and chained parameters
// that would let a search test data the policy does not let its holder
// search freely: a _has on Observation, or subject.name on a Patient, is
// answered from resources the caller would otherwise not see. They need
// an unconfined, unconstrained search permission on every type they
// reach.
func (c *call) searchParamsReason(typ string, q url.Values) string {
	for name := range q {
		if strings.HasPrefix(name, "_has:") {
			parts := strings.Split(name, ":")
			for i := 0; i+3 < len(parts) && parts[i] == "_has"; i += 3 {
				if why := c.freeSearch(parts[i+1], name); why != "" {
					return why
				}
			}
			if len(parts) < 4 {
				return "malformed " + name
			}
			continue
		}
		code, rest, chained := strings.Cut(name, ".")
		if !chained {
			continue
		}
		if why := c.chainReason(typ, code, rest, name, 0); why != "" {
			return why
		}
	}
	return ""
}

func (c *call) chainReason(typ, code, rest, name string, depth int) string {
	if typ == "" {
		return "chained parameter " + name + " needs a resource type"
	}
	if depth > 4 {
		return "chained parameter " + name + " is too deep"
	}
	code, mod, _ := strings.Cut(code, ":")
	var targets []string
	if mod != "" && access.IsResourceType(mod) {
		targets = []string{mod}
	} else {
		ts, ok := access.ReferenceTargets(typ, code)
		if !ok {
			return name + ": " + code + " is not a reference parameter of " + typ
		}
		targets = ts
	}
	next, more, chained := strings.Cut(rest, ".")
	for _, t := range targets {
		if why := c.freeSearch(t, name); why != "" {
			return why
		}
		if chained {
			if why := c.chainReason(t, next, more, name, depth+1); why != "" {
				return why
			}
		}
	}
	return ""
}

// freeSearch reports why the policy does not let its holder search typ
// without confinement or constraint ("" when it does).
func (c *call) freeSearch(typ, name string) string {
	if !access.IsResourceType(typ) {
		return name + ": unknown resource type " + typ
	}
	d := c.pol.Decide(access.Search, typ)
	if !d.Allowed || d.Compartment != "" || d.Filters != nil {
		return name + " searches " + typ + " beyond what the scopes allow"
	}
	return ""
}

// allow records an allowed request.
func (c *call) allow(patient, reason string) {
	if c.bg != "" && reason == "" {
		reason = "break-glass access"
	}
	c.finish(true, reason, patient)
}

// refuse answers status (401, 403, 404) with reason and records the
// refusal.
func (c *call) refuse(status int, reason string) {
	c.finish(false, reason, "")
	gateway.Error(c.w, c.r, status, reason)
}

// fail answers an error that is not a policy decision (a bad request, an
// upstream that cannot be checked); the request is recorded as refused.
func (c *call) fail(status int, msg string) {
	c.finish(false, msg, "")
	gateway.Error(c.w, c.r, status, msg)
}

// finish records the decision once: the access Record, the metrics, and
// a break-glass access.
func (c *call) finish(allowed bool, reason, patient string) {
	if c.done {
		return
	}
	c.done = true
	d := access.RecordData{Decided: true, Allowed: allowed, Reason: reason, Interaction: c.interaction, Type: c.typ,
		Patient: patient, BreakGlass: c.bg, Entries: c.entries}
	c.rec.Set(d)
	result := resultDeny
	switch {
	case allowed && c.bg != "":
		result = resultBreakGlass
	case allowed:
		result = resultAllow
	}
	role := ""
	if c.id != nil {
		role = c.id.Role
	}
	c.p.metrics.decision(result, role, c.label)
	if c.bg != "" {
		c.p.recordBreakGlass(c, c.label, c.typ, allowed)
	}
}

// httpError is an error with the status to answer it with.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func httpErr(status int, msg string) error { return &httpError{status, msg} }

func statusOf(err error) int {
	var he *httpError
	if errors.As(err, &he) {
		return he.status
	}
	return http.StatusBadGateway
}
