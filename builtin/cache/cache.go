// Package cache is the response cache plugin (type: cache): GET and HEAD
// responses kept in Redis for every gateway instance, optionally in an
// in-process L1 in front of it, and in memory without Redis or while it is
// down.
//
// Safety first. A key is the SHA-256 of the normalized path, the sorted
// query, the format asked for (Accept or _format), configured Vary headers
// and a partition: by default the caller's user id together with their
// role, patient and scopes, so that no entry is ever served to another
// identity. Requests that carry credentials but have no identity bypass
// the cache. Responses with Set-Cookie, no-store, a Content-Encoding, a
// non-200 status (404 optional) or a body over max_body are not stored;
// private ones only in the user partition.
//
// Invalidation. Each entry records the versions of the tags it depends on
// (the resource Type/id, searches over its type, the patient compartment,
// "all"), read in the same round trip as the entry. Every successful write
// through the gateway — POST, PUT, PATCH, DELETE, and each entry of a batch
// or transaction Bundle — increments the versions of the tags it affects
// in Redis, so every instance sees the write on its next read, and
// broadcasts them over Redis pub/sub so every instance drops its L1
// entries. Versions are read before the handler runs, so a response made
// while a write happens is stored already stale and never served.
//
// Redis outages. While Redis is down each instance caches in its own
// memory (on_redis_down: memory) and hears of no other instance's writes,
// so an entry is served from memory only until it is outage_max_age old
// (default 5s): that bounds how long an instance serves a response after
// a write through another. When Redis returns, an instance that saw
// writes makes every entry in Redis stale.
//
// Concurrent misses of one key make one call to the handler per instance
// (the others wait for it, each only as long as its own request lasts);
// stale-if-error serves an expired entry when the handler fails;
// If-None-Match and If-Modified-Since are answered 304 from the entry.
// Responses carry X-Cache (HIT, MISS, STALE, BYPASS) and Age.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/omnigate/omnigate/builtin/backbone"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

func init() {
	gateway.RegisterPlugin("cache", Defaults, New)
}

// Cache is one cache plugin instance.
type Cache struct {
	cfg      *Config
	logger   *slog.Logger
	m        *backbone.Manager
	redis    *redisTier // nil without Redis
	mem      *memTier
	l1       *l1 // nil when off
	fhirBase string
	clock    clock
	flights  flights
	metrics  *metrics
	stats    sync.Map // route -> *routeStats
	dirty    atomic.Bool
	opPub    *backbone.Op
	hot      *hotRecorder // nil unless warm.hot_file is set
	// hostRoutes are the routes whose responses may hold links built from
	// the Host header: their keys include it.
	hostRoutes map[string]bool
	handler    http.Handler // the gateway's, for warming
	warming    warmStatus   // for /admin/cache/stats

	// outageRefetches counts reads during Redis outages whose entry in
	// memory was older than outage_max_age.
	outageRefetches atomic.Int64

	unsub, unwatch func()
}

var (
	_ gateway.Plugin         = (*Cache)(nil)
	_ gateway.HealthReporter = (*Cache)(nil)
	_ io.Closer              = (*Cache)(nil)
)

// invalidation channel: payload is the tags, newline-separated.
const invalidateChannel = "cache:invalidate"

// New builds the cache on the Redis backbone (or memory without Redis).
// It fails when cfg does not validate (see Config.Validate) or the
// backbone cannot be built (a bad Redis config).
func New(ctx context.Context, cfg *Config, env *gateway.Env) (gateway.Plugin, error) {
	c, err := newCache(ctx, cfg, env, systemClock{})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// newCache is New on the clock clk.
func newCache(ctx context.Context, cfg *Config, env *gateway.Env, clk clock) (*Cache, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cache config: %w", err)
	}
	m, err := backbone.ForCache(ctx, env)
	if err != nil {
		return nil, err
	}
	m.Declare("cache", backbone.Cache)
	c := &Cache{cfg: cfg, logger: env.Logger, m: m, fhirBase: env.Config.FHIRBasePath(), clock: clk,
		metrics: newMetrics(env.Registerer), hostRoutes: map[string]bool{}}
	// The embedded FHIR server without fhir.base_url builds its links
	// from the Host header, and an upstream with preserve_host sees the
	// client's Host: responses on those routes are keyed on the origin the
	// request was sent to, so a client sending another Host cannot plant
	// links in what others get.
	hostLinks := env.Config.FHIRBaseURL() == ""
	for _, rc := range env.Config.Routes {
		if rc.Upstream != nil && rc.Upstream.PreserveHost || rc.Upstream == nil && rc.FHIR && hostLinks {
			c.hostRoutes[rc.Name] = true
		}
	}
	longest := max(cfg.TTL, cfg.PatientTTL)
	for _, d := range cfg.TypeTTLs {
		longest = max(longest, d)
	}
	for _, d := range cfg.RouteTTLs {
		longest = max(longest, d)
	}
	versionTTL := 2 * (longest + cfg.StaleIfError)
	c.mem = newMemTier(int64(cfg.MaxMemory), versionTTL, clk.Now, func() { c.metrics.evictions.WithLabelValues("memory").Inc() })
	if m.Enabled() {
		c.redis = newRedisTier(m, versionTTL)
		c.opPub = m.Op("cache.publish")
		if cfg.L1.Enabled {
			c.l1 = newL1(int64(cfg.L1.MaxBytes), cfg.L1.TTL, clk.Now, func() { c.metrics.evictions.WithLabelValues("l1").Inc() })
		}
		c.unsub = m.Subscribe(invalidateChannel, func(payload string) {
			if c.l1 != nil {
				c.l1.drop(strings.Split(payload, "\n"))
			}
		})
		c.unwatch = m.OnChange(c.redisChanged)
	}
	if cfg.Warm.HotFile != "" {
		c.hot = &hotRecorder{seen: map[string]*hotEntry{}}
	}
	c.handler = env.Handler()
	if cfg.Warm.OnStart {
		env.OnStart(func(ctx context.Context, h http.Handler) { c.warm(ctx, h, c.warmList()) })
	}
	env.HandleAdmin(http.MethodGet, "/admin/cache/stats", http.HandlerFunc(c.adminStats))
	env.HandleAdmin(http.MethodPost, "/admin/cache/purge", http.HandlerFunc(c.adminPurge))
	env.HandleAdmin(http.MethodPost, "/admin/cache/warm", http.HandlerFunc(c.adminWarm))
	return c, nil
}

// hostKeyed reports whether the key of a request on route includes the
// origin it was sent to.
func (c *Cache) hostKeyed(route string) bool { return c.hostRoutes[route] }

// Close records the hot keys (with warm.hot_file) and ends the
// subscriptions.
func (c *Cache) Close() error {
	if c.hot != nil {
		if err := c.saveHot(); err != nil {
			c.logger.Warn("cache: hot keys not saved", "error", err)
		}
	}
	if c.unsub != nil {
		c.unsub()
	}
	if c.unwatch != nil {
		c.unwatch()
	}
	return nil
}

// now is the time on the cache's clock.
func (c *Cache) now() time.Time { return c.clock.Now() }

// Health reports where entries are kept.
func (c *Cache) Health() gateway.Health {
	switch {
	case c.redis == nil:
		return gateway.Health{Status: gateway.StatusLoaded, Detail: "entries in memory (no redis)"}
	case c.m.Up():
		return gateway.Health{Status: gateway.StatusUp, Detail: "entries in redis"}
	}
	if c.cfg.OnRedisDown == "bypass" {
		return gateway.Health{Status: gateway.StatusDegraded, Detail: "redis down: not caching until it returns (on_redis_down: bypass)"}
	}
	return gateway.Health{Status: gateway.StatusDegraded,
		Detail: "redis down: caching in memory, entries at most " + c.cfg.OutageMaxAge.String() + " old (outage_max_age)"}
}

// redisChanged: after an outage in which this instance saw writes, every
// entry in Redis may predate one of them, so all are made stale.
func (c *Cache) redisChanged(up bool) {
	if c.l1 != nil {
		c.l1.drop([]string{tagAll})
	}
	if !up {
		return
	}
	if c.dirty.Swap(false) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.redis.bump(ctx, []string{tagAll}); err != nil {
			c.dirty.Store(true)
			return
		}
		// Instances back on Redis before this one may hold entries from
		// before its writes in their L1: they drop them.
		c.m.Publish(ctx, c.opPub, invalidateChannel, tagAll)
		c.logger.Info("cache entries made stale after a redis outage with writes")
	}
	c.mem.clear()
}

// uncachedTypes are never cached: AuditEvents are written in process by
// the audit plugin, where the cache does not see the writes, and a read of
// the audit trail must show the latest accesses.
var uncachedTypes = map[string]bool{"AuditEvent": true}

// store returns the tier to use now, or nil to bypass.
func (c *Cache) store() tier {
	if c.redis == nil {
		return c.mem
	}
	if c.m.Up() {
		return c.redis
	}
	if c.cfg.OnRedisDown == "memory" {
		return c.mem
	}
	return nil
}

// ServeHTTP answers reads from the cache and invalidates on writes.
func (c *Cache) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	info, _ := gateway.RouteFrom(r.Context())
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		c.serveRead(w, r, next, info)
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		c.serveWrite(w, r, next, info)
	default:
		next.ServeHTTP(w, r)
	}
}

// partitionOf returns the request's partition, or "" to bypass.
func (c *Cache) partitionOf(r *http.Request, route string) string {
	mode := c.cfg.partition(route)
	if mode == PartitionPublic {
		return "public"
	}
	id := gateway.IdentityFrom(r.Context())
	if id == nil {
		if r.Header.Get("Authorization") != "" || r.Header.Get("Cookie") != "" {
			return "" // credentials nobody checked: never share
		}
		return "anonymous"
	}
	scopes := slices.Clone(id.Scopes)
	slices.Sort(scopes)
	who := "role:" + id.Role
	if mode == PartitionUser {
		who = "user:" + id.UserID + "\x00" + who
	}
	return who + "\x00patient:" + id.PatientID + "\x00scopes:" + strings.Join(scopes, " ")
}

func cacheControl(h string) map[string]string {
	out := map[string]string{}
	for _, part := range strings.Split(h, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		if k != "" {
			out[strings.ToLower(k)] = strings.Trim(v, `"`)
		}
	}
	return out
}

func (c *Cache) serveRead(w http.ResponseWriter, r *http.Request, next http.Handler, info gateway.RouteInfo) {
	st := c.routeStats(info.Name)
	reqCC := cacheControl(r.Header.Get("Cache-Control"))
	_, noStore := reqCC["no-store"]
	part := c.partitionOf(r, info.Name)
	tr := c.store()
	if noStore || part == "" || tr == nil {
		c.bypass(w, r, next, st)
		return
	}
	_, noCache := reqCC["no-cache"]
	noCache = noCache || r.Header.Get("Pragma") == "no-cache"

	vals, qerr := url.ParseQuery(r.URL.RawQuery) // once, for the tags and the key
	var tags []string
	ttl := c.cfg.TTL
	if info.FHIR {
		var typ string
		var patient bool
		tags, typ, patient = readTags(r.URL.Path, vals, c.fhirBase)
		if uncachedTypes[typ] {
			c.bypass(w, r, next, st)
			return
		}
		if patient {
			ttl = c.cfg.PatientTTL
		}
		if d, ok := c.cfg.TypeTTLs[typ]; ok {
			ttl = d
		}
	} else {
		tags = []string{tagAll, prefixRoute + info.Name}
	}
	if d, ok := c.cfg.RouteTTLs[info.Name]; ok {
		ttl = d
	}
	host := ""
	if c.hostKeyed(info.Name) {
		host = requestOrigin(r)
	}
	key := keyOf(r, vals, qerr, part, c.cfg.Vary, host)
	now := c.now()
	if c.hot != nil && !isWarming(r.Context()) {
		c.hot.record(key, r, gateway.IdentityFrom(r.Context()))
	}

	if !noCache && c.l1 != nil && tr == c.redis {
		if e := c.l1.get(key); e != nil && e.fresh(now) {
			c.hit(w, r, e, "HIT", st, now)
			return
		}
	}
	e, versions, err := tr.get(r.Context(), key, tags)
	if err != nil {
		versions = nil // unknown: do not store what comes back
	}
	var stale *entry
	if e != nil && !noCache && err == nil && e.current(versions) {
		if c.servable(tr, e, now) {
			if c.l1 != nil && tr == c.redis {
				c.l1.put(key, e)
			}
			c.hit(w, r, e, "HIT", st, now)
			return
		}
		if c.cfg.StaleIfError > 0 && e.usableStale(now) {
			stale = e
		}
	}
	if r.Method == http.MethodHead {
		c.miss(w, r, next, st)
		return
	}

	fl, leader := c.flights.join(key)
	if !leader {
		if !c.flights.wait(r.Context(), fl) {
			abandon(w, r)
			return
		}
		if fl.e != nil {
			c.hit(w, r, fl.e, "HIT", st, c.now())
			return
		}
		c.miss(w, r, next, st)
		return
	}
	var shared *entry
	defer func() { c.flights.finish(key, fl, shared) }()

	// Ask for the whole response (this cache answers conditional requests
	// from the entry), and record it.
	inner := r
	if r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Modified-Since") != "" {
		inner = r.Clone(r.Context())
		inner.Header.Del("If-None-Match")
		inner.Header.Del("If-Modified-Since")
	}
	rec := newRecorder(r.Context(), w, int(c.cfg.MaxBody))
	next.ServeHTTP(rec, inner)
	if rec.streaming {
		st.count("miss")
		return
	}
	if rec.failed() && stale != nil {
		c.hit(w, r, stale, "STALE", st, c.now())
		return
	}
	if fresh, ok := c.storable(rec, part, ttl); ok && versions != nil {
		stored := &entry{Status: rec.status, Header: keepHeaders(rec.header), Body: rec.buf.Bytes(),
			Stored: c.now(), Fresh: fresh, Stale: c.cfg.StaleIfError, Tags: tags, Version: versions}
		if err := tr.put(r.Context(), key, stored, fresh+c.cfg.StaleIfError); err == nil {
			shared = stored
			markStored(r.Context())
			c.metrics.bytes.WithLabelValues(info.Name).Add(float64(len(stored.Body)))
			if c.l1 != nil && tr == c.redis {
				c.l1.put(key, stored)
			}
			if (r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Modified-Since") != "") && notModified(r, stored) {
				c.writeNotModified(w, stored, "MISS", c.now())
				st.count("miss")
				return
			}
		}
	}
	st.count("miss")
	rec.header.Set("X-Cache", "MISS")
	rec.flushTo(w)
}

// statusClientClosed is logged for a request whose client went away
// before it was answered.
const statusClientClosed = 499

// abandon answers a request that ended while it waited for another's call
// to the handler: 504 when its deadline passed, else (its client went
// away) a bare 499 for the access log. The leader goes on and stores its
// response for the next request.
func abandon(w http.ResponseWriter, r *http.Request) {
	if errors.Is(r.Context().Err(), context.DeadlineExceeded) {
		gateway.Error(w, r, http.StatusGatewayTimeout, "timed out waiting for the response")
		return
	}
	w.WriteHeader(statusClientClosed)
}

// outage reports whether tr is the memory that stands in for Redis while
// Redis is down.
func (c *Cache) outage(tr tier) bool { return c.redis != nil && tr == c.mem }

// servable reports whether e, read from tr, may be served now as fresh:
// within its lifetime and, during a Redis outage, no older than
// outage_max_age (another instance's write may have made it stale without
// this one hearing of it). Entries too old for the outage are counted.
func (c *Cache) servable(tr tier, e *entry, now time.Time) bool {
	if !e.fresh(now) {
		return false
	}
	if !c.outage(tr) || now.Sub(e.Stored) < c.cfg.OutageMaxAge {
		return true
	}
	c.outageRefetches.Add(1)
	c.metrics.outageRefetches.Inc()
	return false
}

func (c *Cache) bypass(w http.ResponseWriter, r *http.Request, next http.Handler, st *routeStats) {
	w.Header().Set("X-Cache", "BYPASS")
	st.count("bypass")
	next.ServeHTTP(w, r)
}

func (c *Cache) miss(w http.ResponseWriter, r *http.Request, next http.Handler, st *routeStats) {
	w.Header().Set("X-Cache", "MISS")
	st.count("miss")
	next.ServeHTTP(w, r)
}

// storable reports whether a recorded response may be kept, and for how
// long.
func (c *Cache) storable(rec *recorder, part string, ttl time.Duration) (time.Duration, bool) {
	if rec.status != http.StatusOK && !(c.cfg.Cache404 && rec.status == http.StatusNotFound) {
		return 0, false
	}
	h := rec.header
	if h.Get("Set-Cookie") != "" || h.Get("Content-Encoding") != "" {
		return 0, false
	}
	cc := cacheControl(h.Get("Cache-Control"))
	if _, ok := cc["no-store"]; ok {
		return 0, false
	}
	if _, ok := cc["no-cache"]; ok {
		return 0, false
	}
	if _, ok := cc["private"]; ok && !strings.HasPrefix(part, "user:") {
		return 0, false
	}
	for _, d := range []string{"s-maxage", "max-age"} {
		if v, ok := cc[d]; ok {
			secs, err := strconv.Atoi(v)
			if err != nil || secs <= 0 {
				return 0, false
			}
			ttl = min(ttl, time.Duration(secs)*time.Second)
			break
		}
	}
	for _, v := range h.Values("Vary") {
		for _, name := range strings.Split(v, ",") {
			name = http.CanonicalHeaderKey(strings.TrimSpace(name))
			switch {
			case name == "", name == "Accept", name == "Accept-Encoding":
			case name == "*" || !slices.Contains(c.cfg.Vary, name):
				return 0, false
			}
		}
	}
	return ttl, true
}

// keepHeaders drops what belongs to one exchange, not to the resource.
func keepHeaders(h http.Header) http.Header {
	out := h.Clone()
	for _, k := range []string{"Date", "Connection", "Keep-Alive", "Transfer-Encoding", "Trailer", "Upgrade",
		"Proxy-Connection", "Set-Cookie", "X-Request-Id", "X-Cache", "Age", "Content-Length"} {
		out.Del(k)
	}
	return out
}

func (c *Cache) hit(w http.ResponseWriter, r *http.Request, e *entry, kind string, st *routeStats, now time.Time) {
	if kind == "STALE" {
		st.count("stale")
	} else {
		st.count("hit")
	}
	if notModified(r, e) {
		c.writeNotModified(w, e, kind, now)
		return
	}
	h := w.Header()
	for k, vs := range e.Header {
		h[k] = slices.Clone(vs)
	}
	c.cacheHeaders(h, e, kind, now)
	h.Set("Content-Length", strconv.Itoa(len(e.Body)))
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		w.Write(e.Body)
	}
}

func (c *Cache) cacheHeaders(h http.Header, e *entry, kind string, now time.Time) {
	h.Set("X-Cache", kind)
	h.Set("Age", strconv.FormatInt(int64(max(0, now.Sub(e.Stored))/time.Second), 10))
	if kind == "STALE" {
		h.Set("Warning", `110 - "Response is Stale"`)
	}
}

func (c *Cache) writeNotModified(w http.ResponseWriter, e *entry, kind string, now time.Time) {
	h := w.Header()
	for _, k := range []string{"Etag", "Last-Modified", "Cache-Control", "Content-Location", "Vary", "Expires"} {
		if v := e.Header.Values(k); len(v) > 0 {
			h[k] = slices.Clone(v) // k is in canonical form
		}
	}
	c.cacheHeaders(h, e, kind, now)
	w.WriteHeader(http.StatusNotModified)
}

// notModified evaluates If-None-Match (weak comparison), else
// If-Modified-Since, against the entry.
func notModified(r *http.Request, e *entry) bool {
	if e.Status != http.StatusOK {
		return false
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		etag := e.Header.Get("ETag")
		if etag == "" {
			return false
		}
		for _, t := range strings.Split(inm, ",") {
			t = strings.TrimSpace(t)
			if t == "*" || strings.TrimPrefix(t, "W/") == strings.TrimPrefix(etag, "W/") {
				return true
			}
		}
		return false
	}
	if ims := r.Header.Get("If-Modified-Since"); ims != "" {
		lm, err1 := http.ParseTime(e.Header.Get("Last-Modified"))
		since, err2 := http.ParseTime(ims)
		return err1 == nil && err2 == nil && !lm.After(since)
	}
	return false
}

// serveWrite passes a write on and, when it succeeds, invalidates what it
// affects.
func (c *Cache) serveWrite(w http.ResponseWriter, r *http.Request, next http.Handler, info gateway.RouteInfo) {
	var req fhirreq.Request
	var body []byte
	if info.FHIR {
		var ok bool
		req, ok = fhirreq.Parse(r.Method, normalizePath(r.URL.Path), c.fhirBase)
		if ok && (req.Interaction == fhirreq.SearchType || req.Interaction == fhirreq.SearchSystem) {
			next.ServeHTTP(w, r) // POST _search reads
			return
		}
		// On a failed read the handler sees the same failure (413 for an
		// oversized body, 503 when the gateway's body budget is spent).
		body, _ = gateway.ReadBody(r.Context(), r, -1)
	}
	tw := &teeWriter{ResponseWriter: w, ctx: r.Context(), max: 1 << 20}
	next.ServeHTTP(tw, r)
	if tw.status == 0 {
		tw.status = http.StatusOK
	}
	if tw.status < 200 || tw.status > 299 {
		return
	}
	var tags []string
	if info.FHIR {
		loc := tw.Header().Get("Location")
		if loc == "" {
			loc = tw.Header().Get("Content-Location")
		}
		tags = writeTags(req, body, tw.buf.Bytes(), loc)
		if tw.cut && !slices.Contains(tags, tagUnknownComp) {
			// Patients named past what was kept are not known.
			tags = append(tags, tagUnknownComp)
		}
	} else {
		tags = []string{prefixRoute + info.Name}
	}
	c.invalidate(r.Context(), tags)
}

// invalidate makes entries with any of tags stale, here at once and on
// every instance.
func (c *Cache) invalidate(ctx context.Context, tags []string) {
	c.metrics.invalidations.Inc()
	if c.l1 != nil {
		c.l1.drop(tags)
	}
	// The memory tier always learns of writes, so that it is correct the
	// moment Redis goes down.
	c.mem.bump(ctx, tags)
	if c.redis == nil {
		return
	}
	if err := c.redis.bump(ctx, tags); err != nil {
		c.dirty.Store(true)
		return
	}
	c.m.Publish(ctx, c.opPub, invalidateChannel, strings.Join(tags, "\n"))
}

// flights coalesces concurrent misses of one key.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	done    chan struct{}
	e       *entry // the stored entry, or nil: waiters call the handler themselves
	waiters int    // followers waiting for it, under flights.mu
}

func (f *flights) join(key string) (*flight, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl, ok := f.m[key]; ok {
		return fl, false
	}
	if f.m == nil {
		f.m = map[string]*flight{}
	}
	fl := &flight{done: make(chan struct{})}
	f.m[key] = fl
	return fl, true
}

func (f *flights) finish(key string, fl *flight, e *entry) {
	f.mu.Lock()
	delete(f.m, key)
	f.mu.Unlock()
	fl.e = e
	close(fl.done)
}

// wait blocks a follower until fl is done or ctx ends (its client went
// away, its deadline passed); it reports whether fl is done. A follower
// that stops waiting does not affect the leader.
func (f *flights) wait(ctx context.Context, fl *flight) bool {
	f.addWaiter(fl, 1)
	defer f.addWaiter(fl, -1)
	select {
	case <-fl.done:
		return true
	case <-ctx.Done():
		return false
	}
}

func (f *flights) addWaiter(fl *flight, n int) {
	f.mu.Lock()
	fl.waiters += n
	f.mu.Unlock()
}

// waiting is how many followers are waiting, over every key.
func (f *flights) waiting() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, fl := range f.m {
		n += fl.waiters
	}
	return n
}
