package console

import (
	"context"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metric families the sampler reads. They are the gateway's and the cache
// plugin's; a family that is not registered reads as zero.
const (
	metricRequests = "omnigate_http_requests_total"
	metricDuration = "omnigate_http_request_duration_seconds"
	metricInFlight = "omnigate_http_requests_in_flight"
	metricCache    = "omnigate_cache_requests_total"
	metricLimits   = "omnigate_ratelimit_decisions_total"
)

// SamplerOptions configure a Sampler.
type SamplerOptions struct {
	// Gatherer is read on every tick, in process. Required.
	Gatherer prometheus.Gatherer
	// Interval is the time between samples. Default 1s.
	Interval time.Duration
	// Keep is how much history the ring holds. Default 15m.
	Keep time.Duration
}

// Sampler keeps a ring of per-interval samples of the gateway's request
// counters and latency histogram, computed from successive gathers of its
// Prometheus registry: the data of the console's live charts, without a
// Prometheus server. It is safe for concurrent use.
type Sampler struct {
	g        prometheus.Gatherer
	interval time.Duration

	mu   sync.Mutex
	ring []Sample
	next int  // where the next sample goes
	full bool // the ring has wrapped
	prev *snapshot
}

// NewSampler returns a sampler; Run (or Sample) fills it.
func NewSampler(o SamplerOptions) (*Sampler, error) {
	if o.Gatherer == nil {
		return nil, fmt.Errorf("console: sampler needs a gatherer")
	}
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	if o.Keep == 0 {
		o.Keep = 15 * time.Minute
	}
	if o.Interval < 0 || o.Keep < o.Interval {
		return nil, fmt.Errorf("console: sampler interval %v and keep %v: want 0 < interval <= keep", o.Interval, o.Keep)
	}
	return &Sampler{g: o.Gatherer, interval: o.Interval, ring: make([]Sample, int(o.Keep/o.Interval))}, nil
}

// Interval is the time between samples.
func (s *Sampler) Interval() time.Duration { return s.interval }

// Run samples every Interval until ctx ends.
func (s *Sampler) Run(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	s.Sample(time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.Sample(now)
		}
	}
}

// Sample is what happened in one interval. Rates are per second over the
// interval; latencies are quantiles of the requests that ended in it
// (estimated from the histogram's buckets, as Prometheus'
// histogram_quantile does), null when none did.
type Sample struct {
	// T is the end of the interval.
	T time.Time `json:"t"`
	// Seconds is the interval's length.
	Seconds float64 `json:"seconds"`
	// RPS is requests answered per second, on every route.
	RPS float64 `json:"rps"`
	// Status is requests per second by status class: 2xx, 3xx, 4xx, 5xx.
	Status map[string]float64 `json:"status"`
	// Limited is 429 answers per second.
	Limited float64 `json:"limited"`
	// P50 and P99 are latency quantiles in milliseconds.
	P50 *float64 `json:"p50_ms"`
	P99 *float64 `json:"p99_ms"`
	// Cache is cacheable requests per second by result: hit, miss,
	// stale, bypass.
	Cache map[string]float64 `json:"cache"`
	// HitRatio is (hit+stale)/(hit+stale+miss) in the interval, null
	// without such requests.
	HitRatio *float64 `json:"hit_ratio"`
	// RateLimit is rate limit decisions per second by result.
	RateLimit map[string]float64 `json:"ratelimit"`
	// InFlight is the requests being served at the end of the interval.
	InFlight float64 `json:"in_flight"`
	// Routes is requests per second by route.
	Routes map[string]float64 `json:"routes"`
}

// snapshot holds the cumulative values of one gather.
type snapshot struct {
	t        time.Time
	requests map[[2]string]float64 // route, status
	buckets  map[float64]float64   // upper bound -> cumulative count, summed over routes
	count    float64               // histogram count, summed over routes
	cache    map[string]float64    // result
	limits   map[string]float64    // result
	inflight float64
}

// Sample gathers the registry and, from the second call on, adds the
// sample of the interval since the previous call, ending at now.
func (s *Sampler) Sample(now time.Time) error {
	mfs, err := s.g.Gather()
	if err != nil && len(mfs) == 0 {
		return fmt.Errorf("console: gather: %w", err)
	}
	cur := read(mfs, now)
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.prev
	s.prev = cur
	if prev == nil || !now.After(prev.t) {
		return nil
	}
	s.ring[s.next] = diff(prev, cur)
	s.next++
	if s.next == len(s.ring) {
		s.next, s.full = 0, true
	}
	return nil
}

// Series returns the samples whose interval ended after since, oldest
// first.
func (s *Sampler) Series(since time.Time) []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []Sample
	if s.full {
		all = append(all, s.ring[s.next:]...)
	}
	all = append(all, s.ring[:s.next]...)
	i := sort.Search(len(all), func(i int) bool { return all[i].T.After(since) })
	return all[i:]
}

func read(mfs []*dto.MetricFamily, now time.Time) *snapshot {
	sn := &snapshot{t: now, requests: map[[2]string]float64{}, buckets: map[float64]float64{},
		cache: map[string]float64{}, limits: map[string]float64{}}
	for _, mf := range mfs {
		switch mf.GetName() {
		case metricRequests:
			for _, m := range mf.GetMetric() {
				sn.requests[[2]string{label(m, "route"), label(m, "status")}] += m.GetCounter().GetValue()
			}
		case metricDuration:
			for _, m := range mf.GetMetric() {
				h := m.GetHistogram()
				sn.count += float64(h.GetSampleCount())
				for _, b := range h.GetBucket() {
					sn.buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
				}
			}
		case metricInFlight:
			for _, m := range mf.GetMetric() {
				sn.inflight += m.GetGauge().GetValue()
			}
		case metricCache:
			for _, m := range mf.GetMetric() {
				sn.cache[label(m, "result")] += m.GetCounter().GetValue()
			}
		case metricLimits:
			for _, m := range mf.GetMetric() {
				sn.limits[label(m, "result")] += m.GetCounter().GetValue()
			}
		}
	}
	return sn
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// delta is cur-prev, or cur when the counter went back (it was
// recreated): what was counted since.
func delta(prev, cur float64) float64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}

func diff(prev, cur *snapshot) Sample {
	secs := cur.t.Sub(prev.t).Seconds()
	out := Sample{T: cur.t.UTC(), Seconds: secs, InFlight: cur.inflight,
		Status: map[string]float64{"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
		Cache:  map[string]float64{}, RateLimit: map[string]float64{}, Routes: map[string]float64{}}
	var total float64
	for k, v := range cur.requests {
		d := delta(prev.requests[k], v)
		if d == 0 {
			continue
		}
		total += d
		out.Routes[k[0]] += d / secs
		if c := statusClass(k[1]); c != "" {
			out.Status[c] += d / secs
		}
		if k[1] == "429" {
			out.Limited += d / secs
		}
	}
	out.RPS = total / secs
	for k, v := range cur.cache {
		out.Cache[k] = delta(prev.cache[k], v) / secs
	}
	for k, v := range cur.limits {
		out.RateLimit[k] = delta(prev.limits[k], v) / secs
	}
	if n := out.Cache["hit"] + out.Cache["stale"] + out.Cache["miss"]; n > 0 {
		r := (out.Cache["hit"] + out.Cache["stale"]) / n
		out.HitRatio = &r
	}
	n := delta(prev.count, cur.count)
	if n > 0 {
		bounds := make([]float64, 0, len(cur.buckets))
		for b := range cur.buckets {
			bounds = append(bounds, b)
		}
		sort.Float64s(bounds)
		counts := make([]float64, len(bounds))
		for i, b := range bounds {
			counts[i] = delta(prev.buckets[b], cur.buckets[b])
		}
		p50, p99 := 1000*quantile(0.5, bounds, counts, n), 1000*quantile(0.99, bounds, counts, n)
		out.P50, out.P99 = &p50, &p99
	}
	return out
}

// quantile estimates the q-quantile of n observations from cumulative
// bucket counts (upper bounds sorted, +Inf implied above the last): linear
// interpolation inside the bucket that holds the rank, as Prometheus'
// histogram_quantile. Ranks above the last finite bound answer that bound.
func quantile(q float64, bounds, counts []float64, n float64) float64 {
	rank := q * n
	lower, below := 0.0, 0.0
	for i, b := range bounds {
		if math.IsInf(b, 1) {
			break
		}
		if counts[i] >= rank {
			in := counts[i] - below
			if in <= 0 {
				return b
			}
			return lower + (b-lower)*(rank-below)/in
		}
		lower, below = b, counts[i]
	}
	return lower
}

// statusClass is "2xx" for "200" and so on.
func statusClass(code string) string {
	if code == "" {
		return ""
	}
	return code[:1] + "xx"
}
