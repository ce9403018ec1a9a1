package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/builtin/backbone"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

func init() {
	gateway.RegisterPlugin("ratelimit", Defaults, New)
}

// Limiter is the ratelimit plugin.
type Limiter struct {
	name    string
	cfg     *Config
	engine  *Engine
	m       *backbone.Manager
	keys    keyer
	routes  map[string]*routePolicy
	generic *routePolicy // template for routes not in the config
	others  sync.Map     // route name -> *routePolicy built from generic

	headers, legacy bool

	decisions *prometheus.CounterVec
	counters  sync.Map // statKey -> *stat
	top       *bounded[topEntry]
	admin     *adminRegistry
	cfgID     *gateway.Config
	fhirBase  string // where batches and transactions are posted
	closeOnce sync.Once
}

var (
	_ gateway.Plugin         = (*Limiter)(nil)
	_ gateway.HealthReporter = (*Limiter)(nil)
)

// routePolicy is what applies on one route: its counter scope, its limit
// per role and its cost.
type routePolicy struct {
	scope string
	def   *resolved
	roles map[string]*resolved
	cost  Cost
}

// resolved is one limit with its header values computed once.
type resolved struct {
	label  string // role name, or "default"
	pol    Policy
	policy string // RateLimit-Policy value
	limit  string // X-RateLimit-Limit value
	burst  string // the burst item's name
}

func newResolved(label string, l Limit) *resolved {
	p := l.policy()
	r := &resolved{label: label, pol: p, limit: strconv.FormatInt(p.Limit, 10), burst: label + "-burst"}
	r.policy = fmt.Sprintf("%q;q=%d;w=%d", label, p.Limit, ceilSeconds(p.Window))
	if p.Burst > 0 {
		r.policy += fmt.Sprintf(", %q;q=%d;w=%d", r.burst, p.Burst, ceilSeconds(p.BurstWindow))
	}
	return r
}

// MetricDecisions counts decisions.
const MetricDecisions = "omnigate_ratelimit_decisions_total"

// New builds the plugin: resolves the limits of every route that uses it,
// connects the engine to the Redis backbone and mounts the admin
// endpoints.
func New(ctx context.Context, cfg *Config, env *gateway.Env) (gateway.Plugin, error) {
	m, err := backbone.FromEnv(ctx, env)
	if err != nil {
		return nil, err
	}
	m.Declare("rate limits", backbone.Durable)
	l := &Limiter{
		name: env.Name, cfg: cfg, m: m,
		keys:     keyer{by: cfg.Key, header: cfg.Header, trusted: cfg.trusted, ipv6Prefix: cfg.IPv6Prefix},
		routes:   map[string]*routePolicy{},
		headers:  cfg.Headers == nil || *cfg.Headers,
		legacy:   cfg.LegacyHeaders == nil || *cfg.LegacyHeaders,
		top:      newBounded(max(cfg.MaxKeys/100, 64), func(e *topEntry) int64 { return e.n.Load() }),
		cfgID:    env.Config,
		fhirBase: strings.TrimSuffix(env.Config.FHIRBasePath(), "/"),
	}
	for name := range cfg.Routes {
		if !slices.ContainsFunc(env.Config.Routes, func(r gateway.RouteConfig) bool { return r.Name == name }) {
			return nil, fmt.Errorf("routes.%s: no route is named %q", name, name)
		}
	}
	l.generic = l.resolveRoute("", RouteLimits{})
	for _, rc := range env.Config.Routes {
		if slices.Contains(rc.Plugins, env.Name) {
			l.routes[rc.Name] = l.resolveRoute(rc.Name, cfg.Routes[rc.Name])
		}
	}
	local := cfg.LocalCache == nil || *cfg.LocalCache
	l.engine, err = NewEngine(ctx, m, EngineOptions{
		Name: env.Name, Precision: cfg.Precision, CountRejected: cfg.CountRejected,
		Block: BlockPolicy{After: cfg.Block.After, Within: cfg.Block.Within, Duration: cfg.Block.Duration,
			Max: cfg.Block.MaxDuration, Forget: cfg.Block.ForgetAfter},
		OnRedisDown: cfg.OnRedisDown, LocalCache: local, MaxKeys: cfg.MaxKeys,
	})
	if err != nil {
		return nil, err
	}
	l.decisions = gateway.RegisterMetric(env.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricDecisions,
		Help: "Rate-limit decisions, by plugin, route, role, result (allowed, limited, blocked, unavailable, bypassed) and source (redis, memory, cache, none).",
	}, []string{"plugin", "route", "role", "result", "source"}))
	l.admin = mountAdmin(env, l)
	return l, nil
}

func (l *Limiter) resolveRoute(name string, rl RouteLimits) *routePolicy {
	cfg := l.cfg
	rp := &routePolicy{scope: name, roles: map[string]*resolved{}, cost: cfg.Cost}
	if rl.Group != "" {
		rp.scope = "group:" + rl.Group
	}
	if rl.Cost != nil {
		rp.cost = *rl.Cost
	}
	def := cfg.Default
	if rl.Default != nil {
		def = inherit(*rl.Default, cfg.Default)
	}
	rp.def = newResolved("default", def)
	for _, role := range roleNames(cfg.Roles, rl.Roles) {
		rp.roles[role] = newResolved(role, roleLimit(cfg, rl, def, role))
	}
	return rp
}

// costOf is what request r uses. On FHIR routes a batch or transaction
// posted to the base costs the sum of its entries' costs (each as the
// request it stands for), so wrapping requests in a Bundle saves nothing;
// the body is read for it and handed on unchanged.
func (l *Limiter) costOf(r *http.Request, rp *routePolicy, fhir bool) int64 {
	if fhir && r.Method == http.MethodPost && strings.TrimSuffix(r.URL.Path, "/") == l.fhirBase {
		if c, ok := rp.bundleCost(r); ok {
			return c
		}
	}
	return rp.cost.of(r.Method, fhir && isFHIRSearch(r.Method, r.URL.Path))
}

// of is the cost of one request with the given method, a FHIR search or
// not.
func (c *Cost) of(method string, search bool) int64 {
	if search && c.Search > 0 {
		return c.Search
	}
	if n, ok := c.Methods[method]; ok {
		return n
	}
	return c.Default
}

// bundleCost reads r's body and, when it is a batch or transaction,
// returns the sum of its entries' costs (at least the cost of the POST).
// The body is put back for the handler, with the read error if any.
func (rp *routePolicy) bundleCost(r *http.Request) (int64, bool) {
	body, err := gateway.ReadBody(r.Context(), r, -1)
	if err != nil {
		return 0, false
	}
	b, err := fhirreq.ParseBundle(body, "")
	if err != nil {
		return 0, false
	}
	var sum int64
	for i := range b.Entries {
		e := &b.Entries[i]
		search := e.Interaction == fhirreq.SearchType || e.Interaction == fhirreq.SearchSystem
		sum += rp.cost.of(strings.ToUpper(e.Method), search)
	}
	return max(sum, rp.cost.of(http.MethodPost, false)), true
}

// ServeHTTP counts the request and answers 429 when it is over a limit or
// its client is blocked; otherwise it adds the rate-limit headers and
// calls next.
func (l *Limiter) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	ctx := r.Context()
	info, _ := gateway.RouteFrom(ctx)
	rp := l.routes[info.Name]
	if rp == nil {
		rp = l.routeFor(info.Name)
	}
	id := gateway.IdentityFrom(ctx)
	role := l.cfg.AnonymousRole
	if id != nil {
		role = id.Role
	}
	res := rp.def
	if rr, ok := rp.roles[role]; ok {
		res = rr
	}
	client := l.keys.key(r, id)
	d, err := l.engine.Decide(ctx, client, rp.scope, res.pol, l.costOf(r, rp, info.FHIR))
	if err != nil {
		if errors.Is(err, ErrRedisDown) && l.cfg.OnRedisDown == DownAllow {
			l.count(info.Name, res.label, "bypassed", "none", "")
			next.ServeHTTP(w, r)
			return
		}
		// deny, or a failure the engine could not answer from memory.
		l.count(info.Name, res.label, "unavailable", "none", "")
		w.Header().Set("Retry-After", "1")
		gateway.Error(w, r, http.StatusServiceUnavailable, "rate limit state unavailable; retry shortly")
		return
	}
	result := d.Result.String()
	l.count(info.Name, res.label, result, d.Source, client)
	l.setHeaders(w.Header(), res, &d)
	if d.Result == Allowed {
		next.ServeHTTP(w, r)
		return
	}
	secs := ceilSeconds(d.RetryAfter)
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	msg := "rate limit exceeded; retry after " + strconv.FormatInt(secs, 10) + " s"
	if d.Result == Blocked {
		msg = "too many requests over the rate limit; blocked for " + strconv.FormatInt(secs, 10) + " s"
	}
	gateway.Error(w, r, http.StatusTooManyRequests, msg)
}

// routeFor builds (once) the policy of a route the limiter was not
// configured for, scoped to the route's own name.
func (l *Limiter) routeFor(name string) *routePolicy {
	if v, ok := l.others.Load(name); ok {
		return v.(*routePolicy)
	}
	rp := *l.generic
	rp.scope = name
	v, _ := l.others.LoadOrStore(name, &rp)
	return v.(*routePolicy)
}

func (l *Limiter) setHeaders(h http.Header, res *resolved, d *Decision) {
	remaining, reset := d.Remaining, d.Reset
	if d.Result != Allowed {
		remaining = 0
		reset = max(reset, d.RetryAfter)
	}
	if l.headers {
		h.Set("RateLimit-Policy", res.policy)
		v := strconv.Quote(res.label) + ";r=" + strconv.FormatInt(remaining, 10) + ";t=" + strconv.FormatInt(ceilSeconds(reset), 10)
		if d.BurstLimit > 0 {
			br := d.BurstRemaining
			if d.Result != Allowed {
				br = min(br, remaining)
			}
			v += ", " + strconv.Quote(res.burst) + ";r=" + strconv.FormatInt(br, 10) + ";t=" + strconv.FormatInt(ceilSeconds(d.BurstReset), 10)
		}
		h.Set("RateLimit", v)
	}
	if l.legacy {
		h.Set("X-RateLimit-Limit", res.limit)
		h.Set("X-RateLimit-Remaining", strconv.FormatInt(remaining, 10))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(reset).Add(time.Second-1).Unix(), 10))
	}
}

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// statKey identifies one decision counter.
type statKey struct{ route, role, result, source string }

type stat struct {
	n    atomic.Int64
	prom prometheus.Counter
}

type topEntry struct {
	n atomic.Int64
}

func (l *Limiter) count(route, role, result, source, client string) {
	k := statKey{route, role, result, source}
	v, ok := l.counters.Load(k)
	if !ok {
		v, _ = l.counters.LoadOrStore(k, &stat{prom: l.decisions.WithLabelValues(l.name, route, role, result, source)})
	}
	s := v.(*stat)
	s.n.Add(1)
	s.prom.Inc()
	if result == "limited" || result == "blocked" {
		l.top.with(client, func() *topEntry { return &topEntry{} }, func(e *topEntry) bool {
			e.n.Add(1)
			return false
		})
	}
}

// Health reports where decisions are made.
func (l *Limiter) Health() gateway.Health {
	switch {
	case !l.m.Enabled():
		return gateway.Health{Status: gateway.StatusUp, Detail: "in-process state (no redis configured)"}
	case l.m.Up():
		return gateway.Health{Status: gateway.StatusUp, Detail: "on redis"}
	case l.cfg.OnRedisDown == DownMemory:
		return gateway.Health{Status: gateway.StatusDegraded, Detail: fmt.Sprintf(
			"redis down: in-process state, limits divided by %d live instances", l.m.Instances())}
	case l.cfg.OnRedisDown == DownAllow:
		return gateway.Health{Status: gateway.StatusDegraded, Detail: "redis down: requests are not limited"}
	}
	return gateway.Health{Status: gateway.StatusDown, Detail: "redis down: requests are refused (on_redis_down: deny)"}
}

// Close releases the engine and the admin endpoints.
func (l *Limiter) Close() error {
	l.closeOnce.Do(func() {
		l.admin.remove(l)
		l.engine.Close()
	})
	return nil
}
