package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/omnigate/omnigate/gateway/internal/confyaml"
)

// Config is the whole gateway configuration, the contents of omnigate.yaml.
// Use Load or Parse to read one; they apply defaults, environment overrides
// and validation. The zero value is not useful.
type Config struct {
	// Listen is the address of the public listener. Default ":8080";
	// OMNIGATE_LISTEN overrides it.
	Listen string `yaml:"listen"`
	// Admin is the admin listener (health, metrics, admin endpoints).
	Admin AdminConfig `yaml:"admin"`
	// Server holds HTTP server limits and timeouts.
	Server ServerConfig `yaml:"server"`
	// Log configures the process log and the access log.
	Log LogConfig `yaml:"log"`
	// Redis is the shared state backbone. Empty means in-process state only.
	Redis RedisConfig `yaml:"redis"`
	// CacheRedis, when set, keeps the response cache on a Redis of its own
	// (one that may evict: allkeys-lru), apart from sessions and rate
	// limits, which need a non-evicting, persistent one. Same keys as
	// Redis. CACHE_REDIS_URL overrides its url. Default: the cache uses
	// Redis.
	CacheRedis RedisConfig `yaml:"cache_redis"`
	// PluginsNode holds the named plugin instances, decoded into Plugins.
	PluginsNode yaml.Node `yaml:"plugins"`
	// Routes are matched most specific first: static paths before
	// parameters before catch-alls, longer prefixes before shorter ones.
	Routes []RouteConfig `yaml:"routes"`
	// FHIR configures the embedded FHIR server (see the fhir handler's
	// own documentation for its keys).
	FHIR yaml.Node `yaml:"fhir"`

	// Plugins are the named plugin instances in file order.
	Plugins []PluginSpec `yaml:"-"`

	// File is the name the config was read from ("embedded" for the
	// built-in default).
	File string `yaml:"-"`

	dec        *confyaml.Decoder
	fhirConfig any
}

// AdminConfig configures the admin listener. In YAML it may be written as a
// plain address ("admin: 127.0.0.1:9090") or as a mapping.
type AdminConfig struct {
	// Listen is the admin address. Default "127.0.0.1:9090"; OMNIGATE_ADMIN
	// overrides it. "off" disables the admin listener.
	Listen string `yaml:"listen"`
	// Token, when set, is required as "Authorization: Bearer <token>" on every
	// admin endpoint except /healthz and /readyz; at least 32 bytes.
	// OMNIGATE_ADMIN_TOKEN overrides it. Required when Listen is not a loopback address, unless
	// Insecure is set.
	Token string `yaml:"token"`
	// TokenFile reads the token from a file (trailing newline trimmed).
	TokenFile string `yaml:"token_file"`
	// Insecure allows a non-loopback admin listener without a token.
	Insecure bool `yaml:"insecure"`
	// Pprof mounts /debug/pprof/. Default true.
	Pprof *bool `yaml:"pprof"`
}

// UnmarshalText lets the admin listener be given as a bare address.
func (a *AdminConfig) UnmarshalText(text []byte) error {
	a.Listen = string(text)
	return nil
}

// ServerConfig holds limits and timeouts of the public listener.
type ServerConfig struct {
	// ReadHeaderTimeout bounds reading request headers. Default 10s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// ReadTimeout bounds reading a whole request. Default 60s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds writing a response. Default 0 (none), so that long
	// streamed upstream responses are not cut; per-route timeouts bound work.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout closes idle keep-alive connections. Default 120s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxHeaderBytes caps request headers (the request line and header
	// fields); larger ones get 431. Default 64KiB.
	MaxHeaderBytes ByteSize `yaml:"max_header_bytes"`
	// MaxBody caps request bodies; larger ones get 413. Default 16MiB.
	// Routes may set their own.
	MaxBody ByteSize `yaml:"max_body"`
	// BodyBudget bounds the memory of all bodies buffered at once, over
	// every request: request bodies read into memory by plugins and the
	// FHIR server, responses captured by plugins (the cache). A request
	// whose body does not fit gets 503 with Retry-After (an
	// OperationOutcome on FHIR routes); a response that does not fit is
	// passed on without being captured (not cached). Bodies streamed to an
	// upstream are not counted. Default 256MiB; 0 turns it off. Must be at
	// least every route's max_body.
	BodyBudget ByteSize `yaml:"body_budget"`
	// MaxConnections caps open client connections; further ones wait to
	// be accepted until one closes. Default 4096; 0 means no cap. Changes
	// take effect on restart.
	MaxConnections int `yaml:"max_connections"`
	// MaxInFlight caps requests being served at once; further ones get 503
	// with Retry-After at once (an OperationOutcome under the FHIR base).
	// Default 1024; 0 means no cap.
	MaxInFlight int `yaml:"max_in_flight"`
	// ShutdownTimeout bounds the drain of in-flight requests on SIGTERM,
	// SIGINT or after a reload. Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// ShutdownDelay keeps serving (with /readyz answering 503) this long
	// before the listener closes, so load balancers stop sending first.
	// Default 0.
	ShutdownDelay time.Duration `yaml:"shutdown_delay"`
	// CompressMinSize is the smallest response body that is gzip-compressed
	// on routes with compression on. Default 1KiB.
	CompressMinSize ByteSize `yaml:"compress_min_size"`
	// TrustedProxies are addresses or CIDRs of proxies (load balancers) in
	// front of the gateway whose X-Forwarded-For is believed when finding
	// the client's address (ClientIP). Default none: the connection's
	// address is the client's.
	TrustedProxies []string `yaml:"trusted_proxies"`

	trusted []netip.Prefix
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is json or text. Default json.
	Format string `yaml:"format"`
	// AccessLog writes one line per request. Default true.
	AccessLog *bool `yaml:"access_log"`
	// AccessLogFile sends access log lines to a file (appended) instead of
	// the process log's stderr.
	AccessLogFile string `yaml:"access_log_file"`
	// AccessLogBuffer batches access log lines into writes of up to this
	// size, flushed at least every AccessLogFlush and on shutdown; a crash
	// loses at most that window. 0 writes every line at once. Default 32KiB.
	AccessLogBuffer ByteSize `yaml:"access_log_buffer"`
	// AccessLogFlush is the longest a buffered line waits. Default 250ms.
	AccessLogFlush time.Duration `yaml:"access_log_flush"`
}

// RedisConfig describes the Redis deployment shared by the gateway
// instances. Exactly one of URL, Sentinel or Cluster may be set; none means
// no Redis (in-process state).
type RedisConfig struct {
	// URL of a single node: redis://[user:password@]host:port[/db] or
	// rediss:// for TLS. REDIS_URL overrides it (and any sentinel or cluster
	// setting).
	URL string `yaml:"url"`
	// Sentinel selects a Sentinel-managed primary.
	Sentinel *SentinelConfig `yaml:"sentinel"`
	// Cluster lists seed addresses of a Redis Cluster.
	Cluster *ClusterConfig `yaml:"cluster"`
	// Username and Password authenticate (AUTH); they override those in URL.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// DB selects a logical database (single node and Sentinel). Default 0.
	DB int `yaml:"db"`
	// TLS enables TLS for sentinel and cluster modes (rediss:// enables it
	// for URL mode).
	TLS *TLSConfig `yaml:"tls"`
	// KeyPrefix prefixes every key the gateway writes. Default "omnigate:";
	// CACHE_KEY_PREFIX overrides it.
	KeyPrefix string `yaml:"key_prefix"`
	// PoolSize is the connection pool size per node. Default 10 per CPU.
	PoolSize int `yaml:"pool_size"`
	// DialTimeout bounds connecting. Default 200ms.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// ReadTimeout bounds a reply. Default 100ms.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds a write. Default 100ms.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// FailureThreshold is how many consecutive failed calls mark Redis down.
	// Default 1.
	FailureThreshold int `yaml:"failure_threshold"`
	// ReconnectMin and ReconnectMax bound the prober's exponential backoff
	// (with jitter) while Redis is down. Defaults 100ms and 5s.
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	ReconnectMax time.Duration `yaml:"reconnect_max"`
}

// SentinelConfig selects a primary through Redis Sentinel.
type SentinelConfig struct {
	// MasterName is the name the sentinels monitor. Required.
	MasterName string `yaml:"master_name"`
	// Addrs are sentinel host:port addresses. Required.
	Addrs []string `yaml:"addrs"`
	// Username and Password authenticate to the sentinels themselves.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// ClusterConfig lists Redis Cluster seed nodes.
type ClusterConfig struct {
	// Addrs are host:port addresses of some cluster nodes. Required.
	Addrs []string `yaml:"addrs"`
}

// TLSConfig configures client TLS.
type TLSConfig struct {
	// CAFile is a PEM bundle of CAs to trust instead of the system pool.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate for mutual TLS.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the server certificate.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify disables certificate checks. For tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Enabled reports whether a Redis deployment is configured.
func (c *RedisConfig) Enabled() bool {
	return c.URL != "" || c.Sentinel != nil || c.Cluster != nil
}

// PluginSpec is one named plugin instance: its type and its own config,
// which the type decodes.
type PluginSpec struct {
	Name string
	Type string
	// Node holds the instance's keys other than "type".
	Node *yaml.Node
	// Config is the decoded, validated config struct of the type.
	Config any
	key    string
}

// RouteConfig is one route: a path pattern, methods, a plugin chain and a
// terminal handler (the embedded FHIR server or an upstream).
type RouteConfig struct {
	// Name labels the route in metrics and logs. Default: the path.
	Name string `yaml:"name"`
	// Path is an httprouter pattern: /static, /users/:id, /files/*rest.
	// For fhir routes it defaults to the FHIR base path and everything
	// below it.
	Path string `yaml:"path"`
	// Methods the route answers. Default: all.
	Methods []string `yaml:"methods"`
	// Plugins are the names of plugin instances, run in this order.
	Plugins []string `yaml:"plugins"`
	// FHIR makes the embedded FHIR server the terminal handler.
	FHIR bool `yaml:"fhir"`
	// Upstream makes a reverse proxy the terminal handler. It may be given
	// as a bare URL.
	Upstream *UpstreamConfig `yaml:"upstream"`
	// FHIRErrors answers gateway errors (404, 413, 502, plugin failures) as
	// OperationOutcome resources. Default: true when FHIR is set.
	FHIRErrors *bool `yaml:"fhir_errors"`
	// Compress gzip-compresses responses when the client accepts it, except
	// already-compressed content types. Default true.
	Compress *bool `yaml:"compress"`
	// MaxBody caps request bodies on this route. Default server.max_body.
	MaxBody ByteSize `yaml:"max_body"`
}

// UpstreamConfig configures the reverse proxy to an upstream server.
type UpstreamConfig struct {
	// URL of the upstream, http or https; its path is prefixed to the
	// request path. Required.
	URL string `yaml:"url"`
	// StripPrefix is removed from the request path before forwarding.
	StripPrefix string `yaml:"strip_prefix"`
	// PreserveHost forwards the client's Host header instead of the
	// upstream's host.
	PreserveHost bool `yaml:"preserve_host"`
	// DialTimeout bounds connecting. Default 5s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// ResponseHeaderTimeout bounds waiting for response headers (then 504).
	// Default 60s.
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout"`
	// Timeout bounds the whole exchange (then 504). Default 0 (none).
	Timeout time.Duration `yaml:"timeout"`
	// MaxIdleConnsPerHost is the keep-alive pool size. Default 256.
	MaxIdleConnsPerHost int `yaml:"max_idle_conns_per_host"`
	// IdleConnTimeout closes idle upstream connections. Default 90s.
	IdleConnTimeout time.Duration `yaml:"idle_conn_timeout"`
	// FlushInterval flushes streamed bodies periodically; -1 flushes after
	// every write. Default 0: responses of unknown length and event streams
	// are flushed at once, others are buffered by the transport.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// TLS configures TLS to an https upstream.
	TLS *TLSConfig `yaml:"tls"`
	// Identity sends the caller's identity to this upstream as a signed
	// header (see IdentityHeaderConfig). Default: none. The gateway's own
	// credentials (session cookie, session bearer token) are never
	// forwarded, with or without it.
	Identity *IdentityHeaderConfig `yaml:"identity"`

	target *url.URL
}

// UnmarshalText lets an upstream be given as a bare URL.
func (u *UpstreamConfig) UnmarshalText(text []byte) error {
	u.URL = string(text)
	return nil
}

// IsFHIR reports whether gateway errors on the route are OperationOutcomes.
func (r *RouteConfig) IsFHIR() bool {
	if r.FHIRErrors != nil {
		return *r.FHIRErrors
	}
	return r.FHIR
}

// DefaultConfig returns a Config with every default set and no routes.
func DefaultConfig() *Config {
	return &Config{
		Listen: ":8080",
		Admin:  AdminConfig{Listen: "127.0.0.1:9090"},
		Server: ServerConfig{
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       60 * time.Second,
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    64 << 10,
			MaxBody:           16 << 20,
			BodyBudget:        256 << 20,
			MaxConnections:    4096,
			MaxInFlight:       1024,
			ShutdownTimeout:   30 * time.Second,
			CompressMinSize:   1 << 10,
		},
		Log:        LogConfig{Level: "info", Format: "json", AccessLogBuffer: 32 << 10, AccessLogFlush: 250 * time.Millisecond},
		Redis:      defaultRedis(),
		CacheRedis: defaultRedis(),
		File:       "embedded",
	}
}

func defaultRedis() RedisConfig {
	return RedisConfig{
		KeyPrefix:        "omnigate:",
		DialTimeout:      200 * time.Millisecond,
		ReadTimeout:      100 * time.Millisecond,
		WriteTimeout:     100 * time.Millisecond,
		FailureThreshold: 1,
		ReconnectMin:     100 * time.Millisecond,
		ReconnectMax:     5 * time.Second,
	}
}

// MinAdminTokenBytes is the shortest admin token accepted.
const MinAdminTokenBytes = 32

// Environment variables that override config settings.
const (
	EnvRedisURL       = "REDIS_URL"
	EnvCacheRedisURL  = "CACHE_REDIS_URL"
	EnvCacheKeyPrefix = "CACHE_KEY_PREFIX"
	EnvListen         = "OMNIGATE_LISTEN"
	EnvAdmin          = "OMNIGATE_ADMIN"
	EnvAdminToken     = "OMNIGATE_ADMIN_TOKEN"
)

// Load reads, decodes and validates a config file, applying the process
// environment (see Parse).
func Load(file string) (*Config, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(file, data, os.LookupEnv)
}

// Parse decodes and validates config data read from file. Unknown keys,
// values of the wrong kind and failed checks are reported together, each
// naming the file, line and key. lookupEnv (os.LookupEnv, or nil for none)
// supplies the overriding environment variables: REDIS_URL,
// CACHE_KEY_PREFIX, OMNIGATE_LISTEN, OMNIGATE_ADMIN, OMNIGATE_ADMIN_TOKEN.
func Parse(file string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	cfg := DefaultConfig()
	cfg.File = file
	cfg.dec = confyaml.NewDecoder(file)
	root, err := confyaml.Parse(file, data)
	if err != nil {
		return nil, err
	}
	if root != nil {
		cfg.dec.Decode(root, cfg, "")
	}
	if lookupEnv != nil {
		cfg.applyEnv(lookupEnv)
	}
	cfg.decodePlugins()
	cfg.validate()
	if err := cfg.dec.Err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (c *Config) applyEnv(lookup func(string) (string, bool)) {
	if v, ok := lookup(EnvRedisURL); ok && v != "" {
		c.Redis.URL, c.Redis.Sentinel, c.Redis.Cluster = v, nil, nil
		c.dec.Positions["redis.url"] = confyaml.Pos{}
	}
	if v, ok := lookup(EnvCacheRedisURL); ok && v != "" {
		c.CacheRedis.URL, c.CacheRedis.Sentinel, c.CacheRedis.Cluster = v, nil, nil
		c.dec.Positions["cache_redis.url"] = confyaml.Pos{}
	}
	if v, ok := lookup(EnvCacheKeyPrefix); ok && v != "" {
		c.Redis.KeyPrefix = v
		c.CacheRedis.KeyPrefix = v
	}
	if v, ok := lookup(EnvListen); ok && v != "" {
		c.Listen = v
	}
	if v, ok := lookup(EnvAdmin); ok && v != "" {
		c.Admin.Listen = v
	}
	if v, ok := lookup(EnvAdminToken); ok && v != "" {
		c.Admin.Token = v
	}
}

// Errorf reports a problem with key (a dotted path such as
// "routes[0].upstream") at the line where key was written.
func (c *Config) Errorf(key, format string, args ...any) error {
	return c.decoder().AtKey(key, fmt.Errorf(format, args...))
}

func (c *Config) decoder() *confyaml.Decoder {
	if c.dec == nil {
		c.dec = confyaml.NewDecoder(c.File)
	}
	return c.dec
}

func (c *Config) fail(key, format string, args ...any) {
	d := c.decoder()
	d.Add(d.AtKey(key, fmt.Errorf(format, args...)))
}

var pluginNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

func (c *Config) decodePlugins() {
	n := &c.PluginsNode
	if n.Kind == 0 || n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.MappingNode {
		c.dec.Errorf(n, "plugins", "expected a mapping of plugin names to plugin configs")
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := "plugins." + k.Value
		c.dec.Positions[key] = confyaml.Pos{Line: k.Line, Column: k.Column}
		if !pluginNameRE.MatchString(k.Value) {
			c.dec.Errorf(k, key, "plugin names are 1-64 letters, digits, '_', '.' or '-'")
			continue
		}
		if slices.ContainsFunc(c.Plugins, func(p PluginSpec) bool { return p.Name == k.Value }) {
			c.dec.Errorf(k, key, "duplicate plugin name")
			continue
		}
		if v.Kind != yaml.MappingNode {
			c.dec.Errorf(v, key, "expected a mapping with a type key")
			continue
		}
		spec := PluginSpec{Name: k.Value, key: key}
		rest := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: v.Line, Column: v.Column}
		for j := 0; j+1 < len(v.Content); j += 2 {
			if v.Content[j].Value == "type" {
				spec.Type = v.Content[j+1].Value
				c.dec.Positions[key+".type"] = confyaml.Pos{Line: v.Content[j].Line, Column: v.Content[j].Column}
				continue
			}
			rest.Content = append(rest.Content, v.Content[j], v.Content[j+1])
		}
		spec.Node = rest
		pt, ok := lookupPluginType(spec.Type)
		switch {
		case spec.Type == "":
			c.dec.Errorf(v, key+".type", "missing plugin type (known types: %s)", strings.Join(PluginTypes(), ", "))
		case !ok:
			c.dec.Errorf(nil, key+".type", "unknown plugin type %q (known types: %s)", spec.Type, strings.Join(PluginTypes(), ", "))
		default:
			spec.Config = pt.decode(c, rest, key)
		}
		c.Plugins = append(c.Plugins, spec)
	}
}

var validMethods = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodPatch, http.MethodDelete, http.MethodOptions,
}

func (c *Config) validate() {
	c.checkAddr("listen", c.Listen)
	if c.Admin.Listen != "off" {
		c.checkAddr("admin", c.Admin.Listen)
	}
	tokenKey := "admin.token"
	if c.Admin.TokenFile != "" {
		b, err := os.ReadFile(c.Admin.TokenFile)
		if err != nil {
			c.fail("admin.token_file", "%v", err)
		} else if c.Admin.Token == "" {
			c.Admin.Token = strings.TrimSpace(string(b))
			tokenKey = "admin.token_file"
		}
	}
	if c.Admin.Token != "" && len(c.Admin.Token) < MinAdminTokenBytes {
		c.fail(tokenKey, "the admin token must be at least %d bytes (it guards every admin endpoint; make one with: head -c 32 /dev/urandom | base64)", MinAdminTokenBytes)
	}
	if c.Admin.Listen != "off" && c.Admin.Token == "" && !c.Admin.Insecure && !isLoopback(c.Admin.Listen) {
		c.fail("admin", "admin listener %q is not on loopback: set admin.token (or OMNIGATE_ADMIN_TOKEN), or admin.insecure: true", c.Admin.Listen)
	}
	s := &c.Server
	for key, d := range map[string]time.Duration{
		"server.read_header_timeout": s.ReadHeaderTimeout, "server.read_timeout": s.ReadTimeout,
		"server.write_timeout": s.WriteTimeout, "server.idle_timeout": s.IdleTimeout,
		"server.shutdown_timeout": s.ShutdownTimeout, "server.shutdown_delay": s.ShutdownDelay,
	} {
		if d < 0 {
			c.fail(key, "must not be negative")
		}
	}
	for i, tp := range s.TrustedProxies {
		p, err := ParsePrefix(tp)
		if err != nil {
			c.fail(fmt.Sprintf("server.trusted_proxies[%d]", i), "%v", err)
			continue
		}
		s.trusted = append(s.trusted, p)
	}
	if s.MaxBody <= 0 {
		c.fail("server.max_body", "must be positive")
	}
	if s.MaxHeaderBytes <= 0 {
		c.fail("server.max_header_bytes", "must be positive")
	}
	if s.BodyBudget < 0 {
		c.fail("server.body_budget", "must not be negative (0 turns it off)")
	} else if s.BodyBudget > 0 && s.BodyBudget < s.MaxBody {
		c.fail("server.body_budget", "%s is less than server.max_body (%s): no body of the largest size allowed would fit; raise it, or 0 turns it off",
			s.BodyBudget, s.MaxBody)
	}
	if s.MaxConnections < 0 {
		c.fail("server.max_connections", "must not be negative (0 means no cap)")
	}
	if s.MaxInFlight < 0 {
		c.fail("server.max_in_flight", "must not be negative (0 means no cap)")
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		c.fail("log.level", "must be debug, info, warn or error, not %q", c.Log.Level)
	}
	if c.Log.AccessLogBuffer < 0 {
		c.fail("log.access_log_buffer", "must not be negative")
	}
	if c.Log.AccessLogFlush <= 0 {
		c.fail("log.access_log_flush", "must be positive")
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		c.fail("log.format", "must be json or text, not %q", c.Log.Format)
	}
	c.validateRedis("redis", &c.Redis)
	c.validateRedis("cache_redis", &c.CacheRedis)
	c.validateFHIR()
	c.validateRoutes()
}

func (c *Config) checkAddr(key, addr string) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		c.fail(key, "invalid address %q: want host:port or :port", addr)
		return
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		c.fail(key, "invalid port in %q", addr)
	}
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *Config) validateRedis(key string, r *RedisConfig) {
	modes := 0
	if r.URL != "" {
		modes++
		u, err := url.Parse(r.URL)
		switch {
		case err != nil:
			c.fail(key+".url", "invalid URL: %v", errors.Unwrap(err))
		case u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix":
			c.fail(key+".url", "scheme must be redis, rediss or unix, not %q", u.Scheme)
		case u.Scheme != "unix" && u.Host == "":
			c.fail(key+".url", "missing host in %q", redactURL(r.URL))
		}
	}
	if r.Sentinel != nil {
		modes++
		if r.Sentinel.MasterName == "" {
			c.fail(key+".sentinel.master_name", "required")
		}
		if len(r.Sentinel.Addrs) == 0 {
			c.fail(key+".sentinel.addrs", "at least one sentinel address is required")
		}
		for i, a := range r.Sentinel.Addrs {
			c.checkAddr(fmt.Sprintf("%s.sentinel.addrs[%d]", key, i), a)
		}
	}
	if r.Cluster != nil {
		modes++
		if len(r.Cluster.Addrs) == 0 {
			c.fail(key+".cluster.addrs", "at least one cluster address is required")
		}
		for i, a := range r.Cluster.Addrs {
			c.checkAddr(fmt.Sprintf("%s.cluster.addrs[%d]", key, i), a)
		}
		if r.DB != 0 {
			c.fail(key+".db", "Redis Cluster has only database 0")
		}
	}
	if modes > 1 {
		c.fail(key, "set only one of url, sentinel and cluster")
	}
	for k, d := range map[string]time.Duration{
		key + ".dial_timeout": r.DialTimeout, key + ".read_timeout": r.ReadTimeout,
		key + ".write_timeout": r.WriteTimeout, key + ".reconnect_min": r.ReconnectMin,
		key + ".reconnect_max": r.ReconnectMax,
	} {
		if d <= 0 {
			c.fail(k, "must be positive")
		}
	}
	if r.ReconnectMax < r.ReconnectMin {
		c.fail(key+".reconnect_max", "must not be less than reconnect_min")
	}
	if r.PoolSize < 0 {
		c.fail(key+".pool_size", "must not be negative")
	}
	if r.FailureThreshold < 1 {
		c.fail(key+".failure_threshold", "must be at least 1")
	}
	if r.DB < 0 {
		c.fail(key+".db", "must not be negative")
	}
}

// redactURL hides the password in a URL for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func (c *Config) validateFHIR() {
	h := registeredHandler()
	if h == nil {
		if c.FHIR.Kind != 0 && !(c.FHIR.Kind == yaml.ScalarNode && c.FHIR.Tag == "!!null") {
			c.fail("fhir", "this build has no embedded FHIR server")
		}
		return
	}
	node := &c.FHIR
	if node.Kind == 0 {
		node = nil
	}
	c.fhirConfig = h.decode(c, node, "fhir")
}

// FHIRBasePath is the path under which the embedded FHIR server answers.
// Default "/fhir/R4".
func (c *Config) FHIRBasePath() string {
	if b, ok := c.fhirConfig.(interface{ BasePath() string }); ok {
		return b.BasePath()
	}
	return "/fhir/R4"
}

// FHIRBaseURL is the absolute base URL the embedded FHIR server builds its
// links from (fhir.base_url), or "" when it builds them from each request's
// Host header and scheme: responses then depend on the Host, and a cache
// must key on it.
func (c *Config) FHIRBaseURL() string {
	if b, ok := c.fhirConfig.(interface{ PublicBaseURL() string }); ok {
		return b.PublicBaseURL()
	}
	return ""
}

func (c *Config) validateRoutes() {
	if _, wrongKind := c.dec.Positions["routes"]; len(c.Routes) == 0 && !wrongKind {
		c.fail("routes", "at least one route is required")
	}
	names := map[string]int{}
	for i := range c.Routes {
		rc := &c.Routes[i]
		key := fmt.Sprintf("routes[%d]", i)
		terminals := 0
		if rc.FHIR {
			terminals++
			if rc.Path == "" {
				rc.Path = c.FHIRBasePath() + "/*path"
			}
		}
		if rc.Upstream != nil {
			terminals++
			c.validateUpstream(key+".upstream", rc.Upstream)
			if rc.Upstream.Identity != nil {
				c.validateIdentity(key+".upstream.identity", rc.Upstream.Identity, rc)
			}
		}
		if terminals != 1 {
			c.fail(key, "a route needs exactly one terminal: fhir: true or upstream: URL")
		}
		if rc.Path == "" {
			c.fail(key+".path", "required")
		} else if !strings.HasPrefix(rc.Path, "/") {
			c.fail(key+".path", "must begin with '/'")
		}
		if rc.Name == "" {
			rc.Name = rc.Path
		}
		if j, dup := names[rc.Name]; dup {
			c.fail(key+".name", "route name %q is also used by routes[%d]", rc.Name, j)
		}
		names[rc.Name] = i
		for j, m := range rc.Methods {
			up := strings.ToUpper(m)
			if !slices.Contains(validMethods[:], up) {
				c.fail(fmt.Sprintf("%s.methods[%d]", key, j), "unknown method %q", m)
			}
			rc.Methods[j] = up
		}
		if len(rc.Methods) == 0 {
			rc.Methods = slices.Clone(validMethods[:])
		}
		seen := map[string]bool{}
		for j, p := range rc.Plugins {
			pkey := fmt.Sprintf("%s.plugins[%d]", key, j)
			if !slices.ContainsFunc(c.Plugins, func(s PluginSpec) bool { return s.Name == p }) {
				c.fail(pkey, "no plugin named %q is defined under plugins", p)
			}
			if seen[p] {
				c.fail(pkey, "plugin %q appears twice in the chain", p)
			}
			seen[p] = true
		}
		if rc.MaxBody < 0 {
			c.fail(key+".max_body", "must not be negative")
		}
		if rc.MaxBody == 0 {
			rc.MaxBody = c.Server.MaxBody
		}
		if b := c.Server.BodyBudget; b > 0 && rc.MaxBody > b {
			c.fail(key+".max_body", "%s is more than server.body_budget (%s): no body of the largest size allowed would fit", rc.MaxBody, b)
		}
	}
	if len(c.Routes) > 0 && c.dec.Err() == nil {
		if _, err := newRouter(configRouteSpecs(c, nil)); err != nil {
			c.dec.Add(err)
		}
	}
}

func (c *Config) validateIdentity(key string, id *IdentityHeaderConfig, rc *RouteConfig) {
	if id.Header == "" {
		id.Header = DefaultIdentityHeader
	}
	if id.TTL == 0 {
		id.TTL = time.Minute
	}
	if id.Audience == "" {
		id.Audience = rc.Name
		if id.Audience == "" {
			id.Audience = rc.Path
		}
	}
	if id.TTL < time.Second {
		c.fail(key+".ttl", "must be at least 1s")
	}
	if strings.ContainsAny(id.Header, " :\t\r\n") {
		c.fail(key+".header", "must be a header name")
	}
	switch {
	case id.Key != "" && id.KeyFile != "":
		c.fail(key+".key_file", "set only one of key and key_file")
	case id.KeyFile != "":
		b, err := os.ReadFile(id.KeyFile)
		if err != nil {
			c.fail(key+".key_file", "%v", err)
			return
		}
		id.key = []byte(strings.TrimSpace(string(b)))
		if len(id.key) < 32 {
			c.fail(key+".key_file", "the key must be at least 32 bytes")
		}
	case id.Key != "":
		id.key = []byte(id.Key)
		if len(id.key) < 32 {
			c.fail(key+".key", "must be at least 32 bytes")
		}
	default:
		c.fail(key, "key_file (or key) is required: the HMAC-SHA256 key upstreams verify the identity with")
	}
}

func (c *Config) validateUpstream(key string, u *UpstreamConfig) {
	if u.URL == "" {
		c.fail(key+".url", "required")
		return
	}
	t, err := url.Parse(u.URL)
	if err != nil || (t.Scheme != "http" && t.Scheme != "https") || t.Host == "" {
		c.fail(key, "invalid upstream URL %q: want http://host[:port][/path] or https://…", u.URL)
		return
	}
	u.target = t
	if u.StripPrefix != "" && !strings.HasPrefix(u.StripPrefix, "/") {
		c.fail(key+".strip_prefix", "must begin with '/'")
	}
	if u.DialTimeout == 0 {
		u.DialTimeout = 5 * time.Second
	}
	if u.ResponseHeaderTimeout == 0 {
		u.ResponseHeaderTimeout = 60 * time.Second
	}
	if u.MaxIdleConnsPerHost == 0 {
		u.MaxIdleConnsPerHost = 256
	}
	if u.IdleConnTimeout == 0 {
		u.IdleConnTimeout = 90 * time.Second
	}
	if u.DialTimeout < 0 || u.ResponseHeaderTimeout < 0 || u.Timeout < 0 || u.IdleConnTimeout < 0 || u.MaxIdleConnsPerHost < 0 {
		c.fail(key, "timeouts and pool sizes must not be negative")
	}
}
