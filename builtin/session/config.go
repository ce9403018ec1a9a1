package session

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

// Config configures the session plugin (type: session). Every field has a
// default; the zero config protects routes with password sessions from the
// user directory ./data/users.yaml.
type Config struct {
	// Cookie configures the session cookie.
	Cookie CookieConfig `yaml:"cookie"`
	// Mount is the path prefix of the login and session endpoints. Default
	// "/auth"; "off" mounts none (for a second instance of the plugin).
	Mount string `yaml:"mount"`
	// Anonymous lets requests without a valid session continue as
	// anonymous (no identity) instead of getting 401. Default false.
	Anonymous bool `yaml:"anonymous"`
	// Users is the user directory for password logins.
	Users UsersConfig `yaml:"users"`
	// Roles set timeouts and session limits per role. A role not listed
	// uses the entry "default". Defaults: physician and nurse 15m idle /
	// 12h absolute / 5 sessions, admin 10m / 8h / 3, patient 30m / 24h / 5,
	// default 15m / 12h / 5. Listing roles replaces these defaults.
	Roles map[string]RolePolicy `yaml:"roles"`
	// TouchInterval is how often a session's activity time is written:
	// at most once per interval, not on every request. Default 1m.
	TouchInterval time.Duration `yaml:"touch_interval"`
	// JWT accepts bearer JWTs from an identity provider. Default: off.
	JWT *JWTConfig `yaml:"jwt"`
	// LocalCache keeps validated sessions in process so most requests
	// cost no Redis round trip, and so that they can still be checked
	// while Redis is down; revocations reach every instance over Redis
	// pub/sub. On by default.
	LocalCache LocalCacheConfig `yaml:"local_cache"`
	// OnRedisDown is what logins do while Redis is down: memory (default;
	// sessions are written back when it returns) or deny (503).
	OnRedisDown string `yaml:"on_redis_down"`
	// OutageSessions is what happens to sessions only Redis knows while it
	// is down: cached (accept those this instance validated, from its
	// local cache, until they end by their own idle or absolute timeout as
	// last known) or reject (401). Default: cached when the local cache is
	// on (the default), reject when it is off. cached with the local cache
	// off is an error.
	OutageSessions string `yaml:"outage_sessions"`
	// LoginThrottle limits failed logins per username and per client IP.
	LoginThrottle ThrottleConfig `yaml:"login_throttle"`
	// CSRF guards cookie-authenticated unsafe requests.
	CSRF CSRFConfig `yaml:"csrf"`
	// SkipPreflight lets CORS preflight requests (OPTIONS with
	// Access-Control-Request-Method) through without a session, as
	// browsers send them without credentials. Default true.
	SkipPreflight *bool `yaml:"skip_preflight"`
	// MaxMemorySessions bounds the in-process store. Default 100000.
	MaxMemorySessions int `yaml:"max_memory_sessions"`

	// now replaces time.Now, and Redis TIME in the store's scripts, for
	// tests. Default nil: the real clocks.
	now func() time.Time
}

// CookieConfig is the session cookie. It is always HttpOnly.
type CookieConfig struct {
	// Name, default "omnigate_session".
	Name string `yaml:"name"`
	// Path, default "/".
	Path string `yaml:"path"`
	// Domain, default none (the host only).
	Domain string `yaml:"domain"`
	// SameSite is lax (default), strict or none.
	SameSite string `yaml:"same_site"`
	// Secure is auto (default: on, except for requests to a loopback
	// host), always or never.
	Secure string `yaml:"secure"`
}

// UsersConfig is the user directory.
type UsersConfig struct {
	// File is the YAML user directory. Default "./data/users.yaml". ""
	// with password logins off (JWT only) is allowed when Disabled is set.
	File string `yaml:"file"`
	// Create makes the file on first run when it is missing: one user per
	// role of Roles, named after the role, with random passwords printed
	// once to the console. Default true.
	Create *bool `yaml:"create"`
	// FirstRunPatient is the patient id given to the first-run patient
	// user. Default "example".
	FirstRunPatient string `yaml:"first_run_patient"`
	// Disabled turns password logins off.
	Disabled bool `yaml:"disabled"`
	// ReloadInterval is how often the file is checked for changes. A
	// change takes effect at once: a user disabled, removed or given a new
	// password loses every session, and a user whose role, scopes,
	// patient or FHIR user changed loses the sessions that carry the old
	// ones, on every instance (through Redis) and in every local cache.
	// Default 500ms.
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// RolePolicy are the session limits of one role.
type RolePolicy struct {
	// Idle ends a session after this long without a request.
	Idle time.Duration `yaml:"idle"`
	// Absolute ends a session this long after login, active or not.
	Absolute time.Duration `yaml:"absolute"`
	// MaxSessions caps a user's concurrent sessions; a new login evicts
	// the oldest. 0: no cap.
	MaxSessions int `yaml:"max_sessions"`
}

// LocalCacheConfig is the in-process session cache.
type LocalCacheConfig struct {
	// Enabled turns the cache on. Default true.
	Enabled bool `yaml:"enabled"`
	// TTL is the longest an entry is used without asking the store while
	// Redis is up; it bounds how late a revocation takes effect when its
	// broadcast is lost. Entries are kept past it, until their session
	// ends, for use while Redis is down. Default 5s.
	TTL time.Duration `yaml:"ttl"`
	// MaxEntries bounds the cache; when it is full, ended sessions are
	// dropped first, then the ones closest to their end. Default 100000.
	MaxEntries int `yaml:"max_entries"`
}

// ThrottleConfig limits failed logins.
type ThrottleConfig struct {
	// PerUser: failed logins per username. Default 5 per 15m.
	PerUser Limit `yaml:"per_user"`
	// PerIP: failed logins per client IP. Default 20 per 15m.
	PerIP Limit `yaml:"per_ip"`
}

// Limit is a number of events per window. Limit 0 disables it.
type Limit struct {
	Limit  int64         `yaml:"limit"`
	Window time.Duration `yaml:"window"`
}

// CSRFConfig guards unsafe requests (POST, PUT, PATCH, DELETE)
// authenticated by the cookie. Such a request must carry Header, or an
// Origin (or, without Origin, a Referer) of the same origin as the request
// or listed in TrustedOrigins. Bearer-authenticated requests are exempt:
// browsers do not attach those by themselves.
type CSRFConfig struct {
	// Header, default "X-Requested-With": a custom header that a
	// cross-site form cannot send.
	Header string `yaml:"header"`
	// TrustedOrigins are other origins allowed, e.g.
	// https://app.example.org.
	TrustedOrigins []string `yaml:"trusted_origins"`
}

// DefaultRoles are the role policies used when the config lists none.
func DefaultRoles() map[string]RolePolicy {
	return map[string]RolePolicy{
		"physician": {Idle: 15 * time.Minute, Absolute: 12 * time.Hour, MaxSessions: 5},
		"nurse":     {Idle: 15 * time.Minute, Absolute: 12 * time.Hour, MaxSessions: 5},
		"admin":     {Idle: 10 * time.Minute, Absolute: 8 * time.Hour, MaxSessions: 3},
		"patient":   {Idle: 30 * time.Minute, Absolute: 24 * time.Hour, MaxSessions: 5},
		"default":   {Idle: 15 * time.Minute, Absolute: 12 * time.Hour, MaxSessions: 5},
	}
}

// Defaults returns the config with every default set.
func Defaults() *Config {
	return &Config{
		Cookie:            CookieConfig{Name: "omnigate_session", Path: "/", SameSite: "lax", Secure: "auto"},
		Mount:             "/auth",
		Users:             UsersConfig{File: "./data/users.yaml", FirstRunPatient: "example", ReloadInterval: 500 * time.Millisecond},
		TouchInterval:     time.Minute,
		LocalCache:        LocalCacheConfig{Enabled: true, TTL: 5 * time.Second, MaxEntries: 100000},
		OnRedisDown:       DownMemory,
		LoginThrottle:     ThrottleConfig{PerUser: Limit{5, 15 * time.Minute}, PerIP: Limit{20, 15 * time.Minute}},
		CSRF:              CSRFConfig{Header: "X-Requested-With"},
		MaxMemorySessions: 100000,
	}
}

// Validate checks the config and fills in the role defaults and the
// outage_sessions default (cached with the local cache on, else reject).
func (c *Config) Validate() error {
	var errs []error
	fail := func(key, format string, args ...any) { errs = append(errs, gateway.FieldErrorf(key, format, args...)) }
	if len(c.Roles) == 0 {
		c.Roles = DefaultRoles()
	}
	if _, ok := c.Roles["default"]; !ok {
		c.Roles["default"] = DefaultRoles()["default"]
	}
	for name, p := range c.Roles {
		key := "roles." + name
		if p.Idle <= 0 {
			fail(key+".idle", "must be positive")
		}
		if p.Absolute <= 0 {
			fail(key+".absolute", "must be positive")
		}
		if p.Idle > p.Absolute {
			fail(key+".idle", "must not exceed absolute (%s)", p.Absolute)
		}
		if p.MaxSessions < 0 {
			fail(key+".max_sessions", "must not be negative")
		}
		if c.TouchInterval > 0 && p.Idle > 0 && p.Idle < c.TouchInterval {
			// Activity is written at most once per touch_interval: an
			// active session would end as if idle.
			fail(key+".idle", "must not be shorter than touch_interval (%s)", c.TouchInterval)
		}
	}
	if c.Cookie.Name == "" || strings.ContainsAny(c.Cookie.Name, " ;=,\t") {
		fail("cookie.name", "must be a cookie token")
	}
	if !slices.Contains([]string{"lax", "strict", "none"}, c.Cookie.SameSite) {
		fail("cookie.same_site", "must be lax, strict or none")
	}
	if !slices.Contains([]string{"auto", "always", "never"}, c.Cookie.Secure) {
		fail("cookie.secure", "must be auto, always or never")
	}
	if c.Cookie.SameSite == "none" && c.Cookie.Secure == "never" {
		fail("cookie.same_site", "none needs a secure cookie")
	}
	if c.Mount != "off" && (!strings.HasPrefix(c.Mount, "/") || strings.HasSuffix(c.Mount, "/") || strings.ContainsAny(c.Mount, ":*")) {
		fail("mount", "must be a path like /auth (or off)")
	}
	if !c.Users.Disabled && c.Users.File == "" {
		fail("users.file", "required unless users.disabled is set")
	}
	if c.Users.Disabled && c.JWT == nil {
		fail("users.disabled", "with password logins off, configure jwt")
	}
	if c.Users.ReloadInterval <= 0 {
		fail("users.reload_interval", "must be positive")
	}
	if c.TouchInterval <= 0 {
		fail("touch_interval", "must be positive")
	}
	if c.LocalCache.TTL <= 0 || c.LocalCache.MaxEntries <= 0 {
		fail("local_cache", "ttl and max_entries must be positive")
	}
	if c.OnRedisDown != DownMemory && c.OnRedisDown != DownDeny {
		fail("on_redis_down", "must be memory or deny (allow would let unauthenticated requests in)")
	}
	if c.OutageSessions == "" {
		c.OutageSessions = OutageReject
		if c.LocalCache.Enabled {
			c.OutageSessions = OutageCached
		}
	}
	if c.OutageSessions != OutageReject && c.OutageSessions != OutageCached {
		fail("outage_sessions", "must be reject or cached")
	}
	if c.OutageSessions == OutageCached && !c.LocalCache.Enabled {
		fail("outage_sessions", "cached needs local_cache.enabled")
	}
	for name, l := range map[string]Limit{"per_user": c.LoginThrottle.PerUser, "per_ip": c.LoginThrottle.PerIP} {
		if l.Limit < 0 || l.Limit > 0 && l.Window <= 0 {
			fail("login_throttle."+name, "limit must not be negative and window must be positive")
		}
	}
	if c.CSRF.Header == "" {
		fail("csrf.header", "required")
	}
	for i, o := range c.CSRF.TrustedOrigins {
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || u.Path != "" {
			fail(fmt.Sprintf("csrf.trusted_origins[%d]", i), "must be an origin like https://app.example.org")
		}
	}
	if c.MaxMemorySessions <= 0 {
		fail("max_memory_sessions", "must be positive")
	}
	if c.JWT != nil {
		c.JWT.setDefaults()
		errs = append(errs, c.JWT.validate()...)
	}
	return joinErrs(errs)
}

func joinErrs(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}

// policy returns the role's policy, or the default one.
func (c *Config) policy(role string) RolePolicy {
	if p, ok := c.Roles[role]; ok {
		return p
	}
	return c.Roles["default"]
}

// longestAbsolute is the longest absolute timeout of any role: no session
// lives longer.
func (c *Config) longestAbsolute() time.Duration {
	var d time.Duration
	for _, p := range c.Roles {
		d = max(d, p.Absolute)
	}
	return d
}

// roleNames lists the configured roles except "default", sorted.
func (c *Config) roleNames() []string {
	var out []string
	for r := range c.Roles {
		if r != "default" {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out
}
