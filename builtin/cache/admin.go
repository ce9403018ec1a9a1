package cache

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// Metric names the plugin exports.
const (
	MetricRequests      = "omnigate_cache_requests_total"
	MetricStoredBytes   = "omnigate_cache_stored_bytes_total"
	MetricEvictions     = "omnigate_cache_evictions_total"
	MetricInvalidations = "omnigate_cache_invalidations_total"
	// MetricOutageRefetches counts reads during a Redis outage whose
	// entry in memory was older than outage_max_age and was fetched again.
	MetricOutageRefetches = "omnigate_cache_outage_refetches_total"
)

type metrics struct {
	requests        *prometheus.CounterVec
	bytes           *prometheus.CounterVec
	evictions       *prometheus.CounterVec
	invalidations   prometheus.Counter
	outageRefetches prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	return &metrics{
		requests: gateway.RegisterMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRequests, Help: "Cacheable requests by route and result (hit, miss, stale, bypass).",
		}, []string{"route", "result"})),
		bytes: gateway.RegisterMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricStoredBytes, Help: "Body bytes stored in the cache, by route.",
		}, []string{"route"})),
		evictions: gateway.RegisterMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricEvictions, Help: "Entries evicted for space, by tier (l1, memory).",
		}, []string{"tier"})),
		invalidations: gateway.RegisterMetric(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricInvalidations, Help: "Successful writes that invalidated cache entries.",
		})),
		outageRefetches: gateway.RegisterMetric(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricOutageRefetches, Help: "Reads during a Redis outage whose entry in memory was older than outage_max_age.",
		})),
	}
}

// routeStats counts results of one route for /admin/cache/stats.
type routeStats struct {
	route                      string
	hit, miss, stale, bypassed atomic.Int64
	counters                   map[string]prometheus.Counter
}

func (c *Cache) routeStats(route string) *routeStats {
	if v, ok := c.stats.Load(route); ok {
		return v.(*routeStats)
	}
	st := &routeStats{route: route, counters: map[string]prometheus.Counter{}}
	for _, r := range []string{"hit", "miss", "stale", "bypass"} {
		st.counters[r] = c.metrics.requests.WithLabelValues(route, r)
	}
	v, _ := c.stats.LoadOrStore(route, st)
	return v.(*routeStats)
}

func (st *routeStats) count(result string) {
	switch result {
	case "hit":
		st.hit.Add(1)
	case "miss":
		st.miss.Add(1)
	case "stale":
		st.stale.Add(1)
	case "bypass":
		st.bypassed.Add(1)
	}
	st.counters[result].Inc()
}

// RouteStats is one route in GET /admin/cache/stats.
type RouteStats struct {
	Route    string  `json:"route"`
	Hits     int64   `json:"hits"`
	Misses   int64   `json:"misses"`
	Stale    int64   `json:"stale"`
	Bypassed int64   `json:"bypassed"`
	HitRatio float64 `json:"hit_ratio"`
}

func (c *Cache) adminStats(w http.ResponseWriter, r *http.Request) {
	var routes []RouteStats
	c.stats.Range(func(k, v any) bool {
		st := v.(*routeStats)
		rs := RouteStats{Route: st.route, Hits: st.hit.Load(), Misses: st.miss.Load(), Stale: st.stale.Load(), Bypassed: st.bypassed.Load()}
		if n := rs.Hits + rs.Misses + rs.Stale; n > 0 {
			rs.HitRatio = float64(rs.Hits+rs.Stale) / float64(n)
		}
		routes = append(routes, rs)
		return true
	})
	sort.Slice(routes, func(i, j int) bool { return routes[i].Route < routes[j].Route })
	out := map[string]any{"routes": routes}
	if c.l1 != nil {
		out["l1_bytes"] = c.l1.bytes()
	}
	out["memory_bytes"], out["memory_entries"] = c.mem.size()
	out["warming"] = c.warming.state()
	out["store"] = "memory"
	if c.redis != nil && c.m.Up() {
		out["store"] = "redis"
	}
	if c.redis != nil {
		out["outage_max_age"] = c.cfg.OutageMaxAge.String()
		out["outage_refetches"] = c.outageRefetches.Load()
	}
	gateway.WriteJSON(w, http.StatusOK, out)
}

// purgeRequest is the body of POST /admin/cache/purge.
type purgeRequest struct {
	// All makes every entry stale.
	All bool `json:"all"`
	// Tags: "Patient/85" (the resource and its compartment), "Observation"
	// (a type's reads and searches) or "route:<name>".
	Tags []string `json:"tags"`
}

func (c *Cache) adminPurge(w http.ResponseWriter, r *http.Request) {
	var req purgeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil || !req.All && len(req.Tags) == 0 {
		gateway.Error(w, r, http.StatusBadRequest, `send {"all": true} or {"tags": ["Patient/85", "Observation", "route:analytics"]}`)
		return
	}
	var tags []string
	if req.All {
		tags = append(tags, tagAll)
	}
	for _, t := range req.Tags {
		typ, id, hasID := strings.Cut(t, "/")
		switch {
		case strings.HasPrefix(t, prefixRoute):
			tags = append(tags, t)
		case hasID && fhirreq.IsResourceType(typ) && fhirreq.IsID(id):
			tags = append(tags, prefixResource+t, prefixComp+t)
		case !hasID && fhirreq.IsResourceType(t):
			tags = append(tags, prefixType+t, prefixTypeReads+t)
		default:
			gateway.Error(w, r, http.StatusBadRequest, "unknown tag "+t)
			return
		}
	}
	c.invalidate(r.Context(), tags)
	gateway.WriteJSON(w, http.StatusOK, map[string]any{"purged": tags})
}

// warmStatus tells /admin/cache/stats whether warming runs and how the
// last run ended.
type warmStatus struct {
	mu           sync.Mutex
	running      int
	started      time.Time
	last         *WarmResult
	lastFinished time.Time
}

// WarmState is "warming" in GET /admin/cache/stats.
type WarmState struct {
	// Running is true while a warming run (on start or from the admin
	// endpoint) is under way; Started is when the latest began.
	Running bool      `json:"running"`
	Started time.Time `json:"started,omitzero"`
	// Last is the summary of the last run that finished, at LastFinished.
	Last         *WarmResult `json:"last,omitempty"`
	LastFinished time.Time   `json:"last_finished,omitzero"`
}

func (s *warmStatus) begin(now time.Time) {
	s.mu.Lock()
	s.running++
	s.started = now
	s.mu.Unlock()
}

func (s *warmStatus) end(res WarmResult, now time.Time) {
	s.mu.Lock()
	s.running--
	s.last, s.lastFinished = &res, now
	s.mu.Unlock()
}

func (s *warmStatus) state() WarmState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return WarmState{Running: s.running > 0, Started: s.started.UTC(), Last: s.last, LastFinished: s.lastFinished.UTC()}
}
