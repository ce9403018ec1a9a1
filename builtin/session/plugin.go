// Package session is the session plugin (type: session): it establishes
// who is calling, for everything after it in the chain.
//
// A request presents a session token in the session cookie or as
// "Authorization: Bearer <token>" (or a JWT from an identity provider, when
// configured). The plugin loads the session and puts the caller's
// gateway.Identity (user, role, scopes, patient, session id) on the request
// context; rate limits by role, cache partitions and policy plugins read it
// from there. A missing, unknown or expired session gets 401 (an
// OperationOutcome on FHIR routes, with WWW-Authenticate), unless the
// instance allows anonymous access.
//
// Sessions live in Redis (the backbone), so they survive gateway restarts
// and work on every instance; without Redis, or while it is down, new ones
// live in memory (see Config.OnRedisDown), and while it is down the
// sessions an instance validated are accepted from its local cache until
// their own timeouts (see Config.OutageSessions). Revocations made during
// an outage are replayed when Redis returns; a revoke-all is kept as a
// per-user marker that every instance checks. Tokens are 256 bits from crypto/rand;
// the store keys records by the token's SHA-256, so a dump of Redis holds
// no usable token. A session ends after its role's idle timeout without
// requests or its absolute timeout, whichever comes first; Redis expires
// the record by itself at that moment. Activity is written at most once per
// touch_interval, in the same round trip as the check.
//
// Endpoints (under Config.Mount, default /auth): POST /login, POST
// /logout, GET /session, POST /session (exchange a JWT for a session), GET
// /sessions, DELETE /sessions[?keep=current], DELETE /sessions/:id. On the
// admin listener: GET /admin/sessions/stats and DELETE
// /admin/users/:user/sessions.
package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/builtin/backbone"
	"github.com/omnigate/omnigate/builtin/ratelimit"
	"github.com/omnigate/omnigate/gateway"
)

func init() {
	gateway.RegisterPlugin("session", Defaults, New)
}

// Console receives the first-run passwords. Default os.Stderr.
var Console io.Writer = os.Stderr

// Plugin is one session plugin instance.
type Plugin struct {
	cfg      *Config
	logger   *slog.Logger
	store    *sessions
	users    *directory // nil when password logins are off
	jwt      *verifier  // nil without JWT
	throttle *ratelimit.Engine
	metrics  *metrics
	origins  map[string]bool
	done     chan struct{} // closed by Close: stops the directory watcher
	closing  sync.Once
}

var (
	_ gateway.Plugin         = (*Plugin)(nil)
	_ gateway.HealthReporter = (*Plugin)(nil)
	_ io.Closer              = (*Plugin)(nil)
)

// New builds the plugin: it opens (or, on first run, creates) the user
// directory, loads the JWKS, connects the session store to the Redis
// backbone and mounts the endpoints.
func New(ctx context.Context, cfg *Config, env *gateway.Env) (gateway.Plugin, error) {
	m, err := backbone.FromEnv(ctx, env)
	if err != nil {
		return nil, err
	}
	m.Declare("sessions", backbone.Durable)
	p := &Plugin{cfg: cfg, logger: env.Logger, metrics: newMetrics(env.Registerer), origins: map[string]bool{},
		done: make(chan struct{})}
	for _, o := range cfg.CSRF.TrustedOrigins {
		p.origins[strings.ToLower(o)] = true
	}
	if !cfg.Users.Disabled {
		create := cfg.Users.Create == nil || *cfg.Users.Create
		_, err := os.Stat(cfg.Users.File)
		switch {
		case errors.Is(err, os.ErrNotExist) && create:
			if err := createFirstRun(cfg.Users.File, cfg.roleNames(), cfg.Users.FirstRunPatient, Console); err != nil {
				return nil, fmt.Errorf("create user directory: %w", err)
			}
			env.Logger.Warn("created a user directory with one user per role; their passwords were printed to the console once",
				"file", cfg.Users.File)
		case err == nil && create:
			// A later start: the passwords were shown on the first one.
			fmt.Fprintf(Console, "\nOmniGate uses the user directory %s, made on an earlier run (its passwords were shown then).\n"+
				"Set a new password with: omnigate user add -file %s -username NAME\n\n", cfg.Users.File, cfg.Users.File)
		}
		if p.users, err = openDirectory(cfg.Users.File); err != nil {
			return nil, err
		}
	}
	if cfg.JWT != nil {
		if p.jwt, err = newVerifier(*cfg.JWT, cfg.roleNames(), cfg.now, env.Logger); err != nil {
			return nil, err
		}
	}
	// Instances in one gateway share one store (and so one memory store),
	// and keep it across reloads.
	key := fmt.Sprintf("session-store:%s:%s:%s:%d:%s", cfg.OnRedisDown, cfg.OutageSessions, cacheKey(cfg.LocalCache), cfg.MaxMemorySessions, m.Prefix())
	v, err := env.Shared(key, func() (any, error) {
		ttl := time.Duration(0)
		if cfg.LocalCache.Enabled {
			ttl = cfg.LocalCache.TTL
		}
		return &sharedSessions{newSessions(ctx, m, storeOptions{
			CacheTTL: ttl, CacheMax: cfg.LocalCache.MaxEntries, OnDown: cfg.OnRedisDown, Outage: cfg.OutageSessions,
			MaxMemory: cfg.MaxMemorySessions, Lifetime: cfg.longestAbsolute(), Clock: cfg.now, Logger: env.Logger,
		})}, nil
	})
	if err != nil {
		return nil, err
	}
	p.store = v.(*sharedSessions).sessions
	p.store.raiseLifetime(cfg.longestAbsolute())
	if p.throttle, err = ratelimit.NewEngine(ctx, m, ratelimit.EngineOptions{Name: "login", MaxKeys: 100000}); err != nil {
		return nil, err
	}
	p.metrics.observeSessions(p.store)
	// Session tokens (and JWTs this gateway accepts) never reach an
	// upstream: one that kept them could act as the user here.
	env.GatewayCredential(gateway.Credential{Cookie: cfg.Cookie.Name, Authorization: p.carriesCredential})
	if cfg.Mount != "off" {
		p.mount(env)
	}
	if p.users != nil {
		go p.watchUsers(cfg.Users.ReloadInterval)
	}
	return p, nil
}

func cacheKey(c LocalCacheConfig) string {
	if !c.Enabled {
		return "nocache"
	}
	return fmt.Sprintf("cache-%s-%d", c.TTL, c.MaxEntries)
}

// sharedSessions closes the store when no loaded config uses it.
type sharedSessions struct{ *sessions }

func (s *sharedSessions) Close() error {
	s.sessions.close()
	return nil
}

// Close releases the plugin's directory watcher, JWKS refresher and
// throttle.
func (p *Plugin) Close() error {
	p.closing.Do(func() { close(p.done) })
	if p.jwt != nil {
		p.jwt.close()
	}
	return p.throttle.Close()
}

// Health reports where sessions are stored.
func (p *Plugin) Health() gateway.Health {
	switch {
	case p.store.redis == nil:
		return gateway.Health{Status: gateway.StatusLoaded, Detail: "sessions in memory (no redis)"}
	case p.store.redisUp():
		return gateway.Health{Status: gateway.StatusUp, Detail: "sessions in redis"}
	}
	detail := "redis down: new sessions in memory; sessions only redis knows are rejected"
	if p.cfg.OutageSessions == OutageCached {
		detail = "redis down: new sessions in memory; sessions this instance validated are accepted from its local cache until their own timeouts"
	}
	return gateway.Health{Status: gateway.StatusDegraded, Detail: detail}
}

// ServeHTTP authenticates the request and passes it on with its identity.
func (p *Plugin) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if gateway.IdentityFrom(r.Context()) != nil {
		// Established already: an in-process request made as a user (cache
		// warming), or an authenticating plugin earlier in the chain.
		next.ServeHTTP(w, r)
		return
	}
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" &&
		(p.cfg.SkipPreflight == nil || *p.cfg.SkipPreflight) {
		next.ServeHTTP(w, r)
		return
	}
	id, cred, err := p.authenticate(r.Context(), r)
	switch {
	case err == nil:
		if cred.fromCookie && !p.csrfOK(r) {
			p.metrics.checks.WithLabelValues("csrf").Inc()
			p.csrfRefused(w, r)
			return
		}
		p.metrics.checks.WithLabelValues("valid").Inc()
		gateway.SetIdentity(r.Context(), id)
		next.ServeHTTP(w, r)
	case errors.Is(err, errStore):
		p.metrics.checks.WithLabelValues("error").Inc()
		p.logger.LogAttrs(r.Context(), slog.LevelError, "session check failed", slog.String("request_id", gateway.RequestID(r.Context())), slog.String("error", err.Error()))
		gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
	case p.cfg.Anonymous:
		p.metrics.checks.WithLabelValues("anonymous").Inc()
		next.ServeHTTP(w, r)
	default:
		p.unauthorized(w, r, err)
	}
}

var (
	errNoCredential = errors.New("no session: log in at POST /auth/login or send a bearer token")
	errBadSession   = errors.New("session expired or unknown")
	errStore        = errors.New("session store failed")
)

func (p *Plugin) unauthorized(w http.ResponseWriter, r *http.Request, err error) {
	result := "invalid"
	challenge := `Bearer realm="omnigate"`
	if errors.Is(err, errNoCredential) {
		result = "missing"
	} else {
		challenge += `, error="invalid_token"`
	}
	p.metrics.checks.WithLabelValues(result).Inc()
	w.Header().Set("WWW-Authenticate", challenge)
	gateway.Error(w, r, http.StatusUnauthorized, err.Error())
}

// authenticate returns the request's identity, or why there is none.
func (p *Plugin) authenticate(ctx context.Context, r *http.Request) (*gateway.Identity, credential, error) {
	cred, present, malformed := readCredential(r, p.cfg.Cookie.Name)
	switch {
	case !present:
		return nil, cred, errNoCredential
	case malformed:
		return nil, cred, errBadSession
	case cred.jwt:
		if p.jwt == nil || !p.jwtStateless() {
			return nil, cred, errors.New("bearer JWTs are not accepted here: exchange it at POST " + p.cfg.Mount + "/session")
		}
		id, _, err := p.jwt.verify(ctx, cred.value)
		if err != nil {
			return nil, cred, err
		}
		return id, cred, nil
	}
	rec, err := p.sessionOf(ctx, cred)
	if err != nil {
		return nil, cred, err
	}
	return identityOf(rec), cred, nil
}

// sessionOf loads the session of a session-token credential: errBadSession
// when there is no live one, errStore when the store failed.
func (p *Plugin) sessionOf(ctx context.Context, cred credential) (*Record, error) {
	rec, err := p.store.get(ctx, recordID(cred.value), p.cfg.TouchInterval)
	if errors.Is(err, ErrNotFound) {
		return nil, errBadSession
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errStore, err)
	}
	if !p.granted(rec) {
		return nil, errBadSession
	}
	return rec, nil
}

// carriesCredential reports whether an Authorization header value holds
// a credential of this gateway: a session token, or a JWT when JWTs are
// accepted (they authenticate here, or are exchanged for sessions).
func (p *Plugin) carriesCredential(value string) bool {
	tok, ok := parseBearer(value)
	return ok && (wellFormedToken(tok) || p.jwt != nil && looksLikeJWT(tok))
}

func (p *Plugin) jwtStateless() bool { return p.cfg.JWT.Stateless == nil || *p.cfg.JWT.Stateless }

func identityOf(r *Record) *gateway.Identity {
	return &gateway.Identity{UserID: r.UserID, Role: r.Role, Scopes: r.Scopes, PatientID: r.PatientID,
		FHIRUser: r.FHIRUser, SessionID: r.ID, Method: "session"}
}

func (p *Plugin) csrfRefused(w http.ResponseWriter, r *http.Request) {
	gateway.Error(w, r, http.StatusForbidden, "cross-site request refused: send the "+p.cfg.CSRF.Header+" header or a same-origin Origin")
}

// csrfOK checks a cookie-authenticated request (see CSRFConfig).
func (p *Plugin) csrfOK(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	if r.Header.Get(p.cfg.CSRF.Header) != "" {
		return true
	}
	origin := requestOrigin(r)
	if origin == "" || origin == "null" {
		return false
	}
	return p.origins[origin] || origin == ownOrigin(r)
}

// requestOrigin is the lowercased Origin of r or, without one (or with
// "null"), the origin of its Referer; "" when it has neither, "null" for
// an opaque origin without a Referer.
func requestOrigin(r *http.Request) string {
	origin := r.Header.Get("Origin")
	if origin == "" || origin == "null" {
		if ref := r.Header.Get("Referer"); ref != "" {
			scheme, rest, ok := strings.Cut(ref, "://")
			if !ok {
				return "null"
			}
			host, _, _ := strings.Cut(rest, "/")
			origin = scheme + "://" + host
		}
	}
	return strings.ToLower(origin)
}

// ownOrigin is the origin the request was sent to.
func ownOrigin(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		scheme = "https"
	}
	return scheme + "://" + strings.ToLower(r.Host)
}

// now is the plugin's clock.
func (p *Plugin) now() time.Time {
	if p.cfg.now != nil {
		return p.cfg.now()
	}
	return time.Now()
}

type metrics struct {
	checks *prometheus.CounterVec
	logins *prometheus.CounterVec
	active *prometheus.GaugeVec
}

// Metric names the plugin exports.
const (
	MetricChecks = "omnigate_session_checks_total"
	MetricLogins = "omnigate_session_logins_total"
	MetricActive = "omnigate_sessions_active"
)

func newMetrics(reg prometheus.Registerer) *metrics {
	return &metrics{
		checks: gateway.RegisterMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricChecks, Help: "Session checks by result (valid, missing, invalid, anonymous, csrf, error).",
		}, []string{"result"})),
		logins: gateway.RegisterMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricLogins, Help: "Logins by method and result (success, failure, throttled, cross_site, unavailable).",
		}, []string{"method", "result"})),
		active: gateway.RegisterMetric(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricActive, Help: "Live sessions by role, as counted by the store (sampled every 15s).",
		}, []string{"role"})),
	}
}

// observeSessions keeps the active-sessions gauge current.
func (m *metrics) observeSessions(s *sessions) {
	update := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		counts, err := s.count(ctx)
		if err != nil {
			return
		}
		m.active.Reset()
		for role, n := range counts {
			m.active.WithLabelValues(role).Set(float64(n))
		}
	}
	s.sampler.Do(func() {
		go func() {
			t := time.NewTicker(15 * time.Second)
			defer t.Stop()
			for {
				update()
				select {
				case <-t.C:
				case <-s.done:
					return
				}
			}
		}()
	})
}
