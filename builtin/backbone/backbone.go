// Package backbone is the Redis connection manager that the builtin plugins
// share: one go-redis UniversalClient per Redis deployment (single node,
// Sentinel or Cluster), its health, failover to in-process state and
// reconnection, instance heartbeats, latency metrics and a pub/sub helper.
//
// A builtin gets the manager with FromEnv in its constructor and, for each
// of its atomic operations, calls Do: Do runs the operation against Redis
// while Redis is up and returns ErrDown (or ErrDisabled) at once otherwise,
// so the builtin answers from its memory implementation without waiting.
//
//	m, err := backbone.FromEnv(ctx, env) // ForCache for the response cache
//	m.Declare("sessions", backbone.Durable)
//	...
//	err = m.Do(ctx, op, func(ctx context.Context, c redis.UniversalClient) error {
//		res, err = script.Run(ctx, c, keys, args...).Int64Slice()
//		return err
//	})
//	if err != nil { // ErrDisabled, ErrDown or the failed call: use memory
//	}
//
// Health. A call that fails with a connection error or a timeout (not a
// Redis reply error such as WRONGTYPE) counts as a failure; after
// redis.failure_threshold consecutive failures (default 1) the manager marks
// Redis down, every Do returns ErrDown, listeners registered with OnChange
// are told, and a prober tries to reconnect with exponential backoff and
// jitter between redis.reconnect_min and redis.reconnect_max. The prober
// dials a fresh client each time (go-redis's own pool retries a broken
// dialer only once a second); when one answers PING it replaces the old
// client, the scripts given to Load are loaded, subscriptions are renewed,
// and listeners are told Redis is up. Each transition is logged once and
// counted (omnigate_redis_up, omnigate_redis_failovers_total).
//
// Timeouts. go-redis defaults to 5 s timeouts and retries; a gateway must
// lose milliseconds, not seconds, to a dead Redis, so the client is built
// with the config's short timeouts (default dial 200 ms, read and write
// 100 ms), no command retries and one dial attempt per command.
//
// Keys. Every key starts with redis.key_prefix (default "omnigate:",
// CACHE_KEY_PREFIX overrides it). Keys one script touches together must
// share a Cluster hash slot: build them with Key(tag, suffix), which puts
// the tag in braces.
package backbone

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/omnigate/omnigate/gateway"
)

// Errors Do returns without calling Redis.
var (
	// ErrDisabled means no Redis is configured.
	ErrDisabled = errors.New("redis is not configured")
	// ErrDown means Redis is configured but unreachable; the prober is
	// reconnecting.
	ErrDown = errors.New("redis is down")
)

// Options tune a Manager beyond the gateway's redis config.
type Options struct {
	// Logger receives one line per transition (down, up). Default
	// slog.Default().
	Logger *slog.Logger
	// Registerer receives the manager's metrics. Default: none (the
	// metrics are kept but not exported).
	Registerer prometheus.Registerer
	// Heartbeat is how often the instance announces itself in Redis; the
	// heartbeat also notices a dead Redis when no request does. An
	// instance is counted live for three heartbeats. Default 2s.
	Heartbeat time.Duration
	// InstanceID names the instance in heartbeats. Default: host name,
	// process id and a random suffix.
	InstanceID string
	// Name labels the manager's metrics and log lines. Default "redis".
	Name string
}

// Manager owns the Redis client of one Redis deployment. It is safe for
// concurrent use. The zero value is not usable: use New or FromEnv.
type Manager struct {
	cfg    gateway.RedisConfig
	opts   Options
	logger *slog.Logger
	mode   string // "single node 127.0.0.1:6379", for /ping

	client    atomic.Pointer[clientBox]
	up        atomic.Bool
	fails     atomic.Int32
	instances atomic.Int32
	downSince atomic.Int64 // unix nanoseconds
	misses    atomic.Int64 // reconnect attempts that failed

	mu        sync.Mutex
	listeners map[int]func(up bool)
	nextID    int
	scripts   []*redis.Script
	probing   bool
	nextProbe time.Time

	ps *pubsub

	uses     map[string]Use
	warned   []string
	settings atomic.Pointer[redisSettings]

	batchOnce sync.Once
	queue     chan *batchCall

	metrics   *metrics
	heartbeat *redis.Script
	hbOp      *Op
	closed    chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

type clientBox struct{ c redis.UniversalClient }

// New builds the manager for cfg. With no Redis configured it returns a
// manager whose Do always returns ErrDisabled. Otherwise it builds the
// client, pings it once (bounded by ctx and the dial and read timeouts) and
// starts the heartbeat; an unreachable Redis is not an error: the manager
// starts down and the prober reconnects. Errors are config problems (a bad
// URL, an unreadable TLS file).
func New(ctx context.Context, cfg gateway.RedisConfig, opts Options) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	quietOnce.Do(func() { redis.SetLogger(debugLogger{}) })
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 2 * time.Second
	}
	if opts.InstanceID == "" {
		opts.InstanceID = defaultInstanceID()
	}
	if opts.Name == "" {
		opts.Name = "redis"
	}
	m := &Manager{
		cfg:       cfg,
		opts:      opts,
		logger:    opts.Logger,
		listeners: map[int]func(bool){},
		closed:    make(chan struct{}),
		metrics:   newMetrics(opts.Registerer, opts.Name),
		heartbeat: redis.NewScript(heartbeatScript),
	}
	m.instances.Store(1)
	m.ps = newPubsub(m)
	if !cfg.Enabled() {
		m.mode = "disabled"
		return m, nil
	}
	c, mode, err := m.newClient()
	if err != nil {
		return nil, err
	}
	c.Close() // the config is valid; connect below
	m.mode = mode
	m.hbOp = m.Op("heartbeat")
	m.scripts = append(m.scripts, m.heartbeat)
	if err := m.connect(ctx); err != nil {
		m.metrics.up.Set(0)
		m.logger.Warn("redis unavailable at start; builtins use in-process state until it answers",
			"redis", m.mode, "error", err)
		m.downSince.Store(time.Now().UnixNano())
		m.mu.Lock()
		m.startProberLocked()
		m.mu.Unlock()
	}
	m.beat()
	m.wg.Add(1)
	go m.heartbeatLoop()
	return m, nil
}

// FromEnv returns the manager for the gateway config's redis section,
// shared by every plugin and kept across reloads while the redis section
// stays the same, and adds it to /ping as "redis". Call it from a plugin
// constructor, then Declare what the plugin keeps there.
func FromEnv(ctx context.Context, env *gateway.Env) (*Manager, error) {
	return fromEnv(ctx, env, "redis", env.Config.Redis)
}

// ForCache returns the manager for cache_redis when it is configured (as
// "redis-cache" on /ping), else the one of FromEnv.
func ForCache(ctx context.Context, env *gateway.Env) (*Manager, error) {
	if !env.Config.CacheRedis.Enabled() {
		return FromEnv(ctx, env)
	}
	return fromEnv(ctx, env, "redis-cache", env.Config.CacheRedis)
}

func fromEnv(ctx context.Context, env *gateway.Env, name string, cfg gateway.RedisConfig) (*Manager, error) {
	v, err := env.Shared("redis:"+fingerprint(cfg), func() (any, error) {
		return New(ctx, cfg, Options{
			Logger:     env.Logger.With(slog.String("component", name)),
			Registerer: env.Registerer,
			Name:       name,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("redis backbone: %w", err)
	}
	m := v.(*Manager)
	env.AddHealth(name, m.Health)
	return m, nil
}

func fingerprint(cfg gateway.RedisConfig) string {
	b, _ := json.Marshal(cfg)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func defaultInstanceID() string {
	host, _ := os.Hostname()
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Enabled reports whether a Redis deployment is configured.
func (m *Manager) Enabled() bool { return m.cfg.Enabled() }

// Up reports whether Redis is configured and answering.
func (m *Manager) Up() bool { return m.up.Load() }

// InstanceID is the name this instance heartbeats under.
func (m *Manager) InstanceID() string { return m.opts.InstanceID }

// Instances is the number of live gateway instances seen in the last
// heartbeat (this one included), at least 1. While Redis is down it keeps
// the last count seen, so builtins can divide a fleet-wide limit.
func (m *Manager) Instances() int { return int(m.instances.Load()) }

// Prefix is the key prefix every key starts with.
func (m *Manager) Prefix() string { return m.cfg.KeyPrefix }

// Key returns prefix + "{" + tag + "}" + suffix. Keys with the same tag
// hash to the same Redis Cluster slot, so one script may use them
// together. Braces in tag are escaped (see Tag).
func (m *Manager) Key(tag, suffix string) string {
	return m.cfg.KeyPrefix + "{" + Tag(tag) + "}" + suffix
}

// Tag makes s safe inside a hash tag and a key: '{', '}', '%', spaces and
// control characters are percent-encoded. Strings without them are
// returned as they are.
func Tag(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if needsEscape(s[i]) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; needsEscape(c) {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func needsEscape(c byte) bool {
	return c == '{' || c == '}' || c == '%' || c <= ' ' || c == 0x7f
}

// Client returns the current client, or nil when Redis is disabled or
// down. Prefer Do, which also keeps the health state and the latency
// histogram; a caller of Client must pass failures to Report.
func (m *Manager) Client() redis.UniversalClient {
	if !m.up.Load() {
		return nil
	}
	if b := m.client.Load(); b != nil {
		return b.c
	}
	return nil
}

// Op is a named kind of Redis call, the label of its latency histogram.
type Op struct {
	name string
	dur  prometheus.Observer
}

// Op returns the Op for name (for example "ratelimit", "session.touch").
// Create it once, in a constructor.
func (m *Manager) Op(name string) *Op {
	return &Op{name: name, dur: m.metrics.latency.WithLabelValues(name)}
}

// Do calls fn with the client when Redis is up, and records the call's
// latency under op and its outcome in the health state. Without calling fn
// it returns ErrDisabled when no Redis is configured and ErrDown while
// Redis is down. Otherwise it returns fn's error, which the caller answers
// from memory when it is not a reply error.
func (m *Manager) Do(ctx context.Context, op *Op, fn func(ctx context.Context, c redis.UniversalClient) error) error {
	if !m.cfg.Enabled() {
		return ErrDisabled
	}
	c := m.Client()
	if c == nil {
		return ErrDown
	}
	t0 := time.Now()
	err := fn(ctx, c)
	if errors.Is(err, redis.ErrClosed) {
		// The call raced with the swap to a new client, which closed the
		// one it had: make it once more on the current client, or answer
		// ErrDown so that the caller uses memory.
		if c2 := m.Client(); c2 == nil {
			err = ErrDown
		} else if c2 != c {
			err = fn(ctx, c2)
		}
	}
	if op != nil {
		op.dur.Observe(time.Since(t0).Seconds())
	}
	m.Report(ctx, err)
	return err
}

// Report records the outcome of a call made with the client from Client.
// Connection errors and timeouts count towards failure_threshold; a
// success resets the count; reply errors (redis.Nil, WRONGTYPE, …) and
// calls whose ctx ended are ignored.
func (m *Manager) Report(ctx context.Context, err error) {
	if err == nil {
		if m.fails.Load() != 0 {
			m.fails.Store(0)
		}
		return
	}
	if !IsOutage(ctx, err) {
		return
	}
	if int(m.fails.Add(1)) >= m.cfg.FailureThreshold {
		m.markDown(err)
	}
}

// IsOutage reports whether err from a call made with ctx means Redis is
// unreachable or unable to serve (as opposed to a reply error, or a caller
// that gave up).
func IsOutage(ctx context.Context, err error) bool {
	switch {
	case err == nil, errors.Is(err, redis.Nil), errors.Is(err, redis.TxFailedErr),
		errors.Is(err, redis.ErrClosed), ctx != nil && ctx.Err() != nil:
		// redis.ErrClosed: a call raced with the swap to a new client.
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"} {
			if redis.HasErrorPrefix(err, p) {
				return true
			}
		}
		return false
	}
	return true
}

// OnChange registers fn to be called, from its own goroutine, with true
// when Redis comes back and false when it goes down. Builtins use it to
// drop local caches that pub/sub messages may have missed. It returns a
// function that removes fn.
func (m *Manager) OnChange(fn func(up bool)) (remove func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id := m.nextID
	m.nextID++
	m.listeners[id] = fn
	return func() {
		m.mu.Lock()
		delete(m.listeners, id)
		m.mu.Unlock()
	}
}

// Load registers scripts to be loaded into Redis's script cache now (when
// Redis is up) and after every reconnect, so EVALSHA finds them; a NOSCRIPT
// reply is handled by redis.Script.Run anyway.
func (m *Manager) Load(ctx context.Context, scripts ...*redis.Script) {
	m.mu.Lock()
	m.scripts = append(m.scripts, scripts...)
	m.mu.Unlock()
	if c := m.Client(); c != nil {
		for _, s := range scripts {
			m.Report(ctx, s.Load(ctx, c).Err())
		}
	}
}

// Health is the manager's state for /ping: disabled, up or down (not
// required: builtins keep serving from memory).
func (m *Manager) Health() gateway.Health {
	if !m.cfg.Enabled() {
		return gateway.Health{Status: gateway.StatusDisabled, Detail: "no redis configured; builtins use in-process state"}
	}
	if m.up.Load() {
		return gateway.Health{Status: gateway.StatusUp,
			Detail: fmt.Sprintf("%s; %d live instances", m.mode, m.Instances()), Warnings: m.Warnings()}
	}
	since := time.Unix(0, m.downSince.Load()).UTC().Format(time.RFC3339)
	m.mu.Lock()
	next := time.Until(m.nextProbe).Round(time.Millisecond)
	m.mu.Unlock()
	return gateway.Health{Status: gateway.StatusDown,
		Detail: fmt.Sprintf("%s unreachable since %s; builtins on in-process state; next reconnect attempt in %s", m.mode, since, max(next, 0))}
}

// Close stops the prober and the heartbeat, removes the instance's
// heartbeat and closes the client.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		close(m.closed)
		m.wg.Wait()
		m.ps.close()
		if b := m.client.Load(); b != nil {
			if m.up.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), m.cfg.DialTimeout+m.cfg.WriteTimeout)
				b.c.ZRem(ctx, m.instancesKey(), m.opts.InstanceID)
				cancel()
			}
			b.c.Close()
		}
		m.up.Store(false)
	})
	return nil
}

var _ io.Closer = (*Manager)(nil)

var quietOnce sync.Once

// debugLogger sends go-redis's own log lines (one per failed dial while
// Redis is down) to the default logger at debug level: the manager logs
// each transition once instead.
type debugLogger struct{}

func (debugLogger) Printf(ctx context.Context, format string, v ...any) {
	slog.Default().Debug(fmt.Sprintf(format, v...), "component", "go-redis")
}

// newClient builds a client from the config; mode describes it.
func (m *Manager) newClient() (redis.UniversalClient, string, error) {
	cfg := &m.cfg
	tlsConf, err := cfg.TLS.ClientTLS()
	if err != nil {
		return nil, "", fmt.Errorf("redis tls: %w", err)
	}
	// No retries, one dial attempt: the manager fails over instead.
	const maxRetries, dialRetries = -1, 1
	noMaint := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	switch {
	case cfg.URL != "":
		opt, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, "", fmt.Errorf("redis url: %w", err)
		}
		if cfg.Username != "" {
			opt.Username = cfg.Username
		}
		if cfg.Password != "" {
			opt.Password = cfg.Password
		}
		if cfg.DB != 0 {
			opt.DB = cfg.DB
		}
		if tlsConf != nil {
			if opt.TLSConfig != nil && tlsConf.ServerName == "" {
				tlsConf.ServerName = opt.TLSConfig.ServerName
			}
			opt.TLSConfig = tlsConf
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = cfg.DialTimeout, cfg.ReadTimeout, cfg.WriteTimeout
		opt.PoolSize, opt.PoolTimeout = cfg.PoolSize, cfg.DialTimeout+cfg.ReadTimeout
		opt.MaxRetries, opt.DialerRetries = maxRetries, dialRetries
		opt.ContextTimeoutEnabled = true
		opt.MaintNotificationsConfig = noMaint
		mode := "single node " + opt.Addr
		if opt.Network == "unix" {
			mode = "unix socket " + opt.Addr
		}
		return redis.NewClient(opt), mode, nil
	case cfg.Sentinel != nil:
		s := cfg.Sentinel
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: s.MasterName, SentinelAddrs: s.Addrs,
			SentinelUsername: s.Username, SentinelPassword: s.Password,
			Username: cfg.Username, Password: cfg.Password, DB: cfg.DB,
			TLSConfig:   tlsConf,
			DialTimeout: cfg.DialTimeout, ReadTimeout: cfg.ReadTimeout, WriteTimeout: cfg.WriteTimeout,
			PoolSize: cfg.PoolSize, PoolTimeout: cfg.DialTimeout + cfg.ReadTimeout,
			MaxRetries: maxRetries, DialerRetries: dialRetries,
			ContextTimeoutEnabled: true,
		}), fmt.Sprintf("sentinel master %q", s.MasterName), nil
	case cfg.Cluster != nil:
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:    cfg.Cluster.Addrs,
			Username: cfg.Username, Password: cfg.Password,
			TLSConfig:   tlsConf,
			DialTimeout: cfg.DialTimeout, ReadTimeout: cfg.ReadTimeout, WriteTimeout: cfg.WriteTimeout,
			PoolSize: cfg.PoolSize, PoolTimeout: cfg.DialTimeout + cfg.ReadTimeout,
			MaxRetries: maxRetries, DialerRetries: dialRetries,
			ContextTimeoutEnabled:    true,
			MaintNotificationsConfig: noMaint,
		}), fmt.Sprintf("cluster of %d seed nodes", len(cfg.Cluster.Addrs)), nil
	}
	return nil, "", ErrDisabled
}
