package console

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// gatewayMetrics registers the families the sampler reads, as the gateway
// and the cache and ratelimit plugins name them.
type gatewayMetrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inflight prometheus.Gauge
	cache    *prometheus.CounterVec
	limits   *prometheus.CounterVec
}

func newGatewayMetrics() *gatewayMetrics {
	m := &gatewayMetrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricRequests, Help: "h"}, []string{"route", "method", "status"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: metricDuration, Help: "h",
		Buckets: []float64{.001, .01, .1, 1}}, []string{"route"})
	m.inflight = prometheus.NewGauge(prometheus.GaugeOpts{Name: metricInFlight, Help: "h"})
	m.cache = prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricCache, Help: "h"}, []string{"route", "result"})
	m.limits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricLimits, Help: "h"}, []string{"plugin", "result"})
	m.reg.MustRegister(m.requests, m.duration, m.inflight, m.cache, m.limits)
	return m
}

func approx(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSamplerRates(t *testing.T) {
	m := newGatewayMetrics()
	s, err := NewSampler(SamplerOptions{Gatherer: m.reg})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	// Counts before the first sample are history, not the first interval.
	m.requests.WithLabelValues("fhir", "GET", "200").Add(1000)
	if err := s.Sample(t0); err != nil {
		t.Fatal(err)
	}
	if got := s.Series(time.Time{}); len(got) != 0 {
		t.Fatalf("one gather makes no sample: %+v", got)
	}
	m.requests.WithLabelValues("fhir", "GET", "200").Add(6)
	m.requests.WithLabelValues("fhir", "GET", "404").Add(2)
	m.requests.WithLabelValues("meta", "GET", "429").Add(2)
	m.requests.WithLabelValues("meta", "POST", "503").Add(2)
	// 10 observations: 5 under 1ms, 4 in (1ms, 10ms], 1 in (100ms, 1s].
	for _, v := range []float64{.0005, .0005, .0005, .0005, .0005, .005, .005, .005, .005, .5} {
		m.duration.WithLabelValues("fhir").Observe(v)
	}
	m.cache.WithLabelValues("fhir", "hit").Add(6)
	m.cache.WithLabelValues("fhir", "stale").Add(2)
	m.cache.WithLabelValues("fhir", "miss").Add(8)
	m.cache.WithLabelValues("fhir", "bypass").Add(4)
	m.limits.WithLabelValues("rl", "limited").Add(2)
	m.inflight.Set(3)
	if err := s.Sample(t0.Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got := s.Series(time.Time{})
	if len(got) != 1 {
		t.Fatalf("samples: %+v", got)
	}
	x := got[0]
	if !x.T.Equal(t0.Add(2*time.Second)) || x.Seconds != 2 || x.RPS != 6 || x.InFlight != 3 {
		t.Errorf("sample: %+v", x)
	}
	if x.Status["2xx"] != 3 || x.Status["4xx"] != 2 || x.Status["5xx"] != 1 || x.Status["3xx"] != 0 || x.Limited != 1 {
		t.Errorf("status: %v, 429/s %v", x.Status, x.Limited)
	}
	if x.Routes["fhir"] != 4 || x.Routes["meta"] != 2 {
		t.Errorf("routes: %v", x.Routes)
	}
	if x.Cache["hit"] != 3 || x.Cache["stale"] != 1 || x.Cache["miss"] != 4 || x.Cache["bypass"] != 2 ||
		x.HitRatio == nil || !approx(*x.HitRatio, 0.5) || x.RateLimit["limited"] != 1 {
		t.Errorf("cache %v, ratio %v, limits %v", x.Cache, x.HitRatio, x.RateLimit)
	}
	// p50: rank 5 of 10 is the last of the 5 under 1ms: the bucket's
	// upper bound. p99: rank 9.9 is in (100ms, 1s], 0.9 of the way.
	if x.P50 == nil || !approx(*x.P50, 1) || x.P99 == nil || !approx(*x.P99, 100+0.9*900) {
		t.Errorf("p50 %v, p99 %v", deref(x.P50), deref(x.P99))
	}

	// A quiet interval: zero rates, no latency, no ratio.
	s.Sample(t0.Add(3 * time.Second))
	q := s.Series(t0.Add(2 * time.Second))
	if len(q) != 1 || q[0].RPS != 0 || q[0].P50 != nil || q[0].HitRatio != nil {
		t.Errorf("quiet sample: %+v", q)
	}
	b, _ := json.Marshal(q[0])
	if !json.Valid(b) {
		t.Errorf("sample JSON: %s", b)
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

// A counter that went back (its collector was made again) counts what it
// counted since, not a negative rate.
func TestSamplerCounterReset(t *testing.T) {
	m := newGatewayMetrics()
	s, _ := NewSampler(SamplerOptions{Gatherer: m.reg})
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	m.requests.WithLabelValues("r", "GET", "200").Add(50)
	s.Sample(t0)
	m.reg.Unregister(m.requests)
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricRequests, Help: "h"}, []string{"route", "method", "status"})
	m.reg.MustRegister(m.requests)
	m.requests.WithLabelValues("r", "GET", "200").Add(3)
	s.Sample(t0.Add(time.Second))
	if got := s.Series(time.Time{}); len(got) != 1 || got[0].RPS != 3 {
		t.Errorf("after a reset: %+v", got)
	}
}

// The ring keeps Keep/Interval samples, oldest first; Series filters by
// end time; a gather at or before the previous one adds nothing.
func TestSamplerRing(t *testing.T) {
	m := newGatewayMetrics()
	s, err := NewSampler(SamplerOptions{Gatherer: m.reg, Interval: time.Second, Keep: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i <= 5; i++ {
		m.requests.WithLabelValues("r", "GET", "200").Add(float64(i))
		s.Sample(t0.Add(time.Duration(i) * time.Second))
	}
	s.Sample(t0.Add(5 * time.Second)) // same instant: ignored
	got := s.Series(time.Time{})
	if len(got) != 3 {
		t.Fatalf("%d samples kept, want 3", len(got))
	}
	for i, x := range got {
		if want := t0.Add(time.Duration(i+3) * time.Second); !x.T.Equal(want) || x.RPS != float64(i+3) {
			t.Errorf("sample %d: %v %v, want %v %d", i, x.T, x.RPS, want, i+3)
		}
	}
	if got := s.Series(t0.Add(4 * time.Second)); len(got) != 1 || !got[0].T.Equal(t0.Add(5*time.Second)) {
		t.Errorf("since 4s: %+v", got)
	}
	if got := s.Series(t0.Add(time.Hour)); len(got) != 0 {
		t.Errorf("since later: %+v", got)
	}
}

func TestNewSamplerValidates(t *testing.T) {
	reg := prometheus.NewRegistry()
	for _, o := range []SamplerOptions{{}, {Gatherer: reg, Interval: -time.Second}, {Gatherer: reg, Interval: time.Minute, Keep: time.Second}} {
		if _, err := NewSampler(o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	s, err := NewSampler(SamplerOptions{Gatherer: reg})
	if err != nil || s.Interval() != time.Second || len(s.ring) != 900 {
		t.Errorf("defaults: %v, interval %v, ring %d", err, s.Interval(), len(s.ring))
	}
}

func TestQuantile(t *testing.T) {
	bounds := []float64{1, 2, 4, math.Inf(1)}
	for _, c := range []struct {
		q      float64
		counts []float64
		n      float64
		want   float64
	}{
		{0.5, []float64{10, 10, 10, 10}, 10, 0.5},    // all in the first bucket, from 0
		{0.5, []float64{0, 10, 10, 10}, 10, 1.5},     // all in (1, 2]
		{0.75, []float64{0, 0, 8, 8}, 8, 3.5},        // three quarters into (2, 4]
		{0.99, []float64{0, 0, 0, 10}, 10, 4},        // above the last bound: the bound
		{0.5, []float64{5, 5, 10, 10}, 10, 1},        // the rank ends a bucket
		{0.9, []float64{4, 4, 4, 10}, 10, 4},         // in +Inf
		{0.25, []float64{2, 6, 8, 8}, 8, 1},          // exactly the first bucket's end
		{0.5, []float64{2, 6, 8, 8}, 8, 1 + 2.0/4.0}, // half-way through (1, 2]
	} {
		if got := quantile(c.q, bounds, c.counts, c.n); !approx(got, c.want) {
			t.Errorf("quantile(%v, %v) = %v, want %v", c.q, c.counts, got, c.want)
		}
	}
}

func TestSeriesHandler(t *testing.T) {
	m := newGatewayMetrics()
	s, _ := NewSampler(SamplerOptions{Gatherer: m.reg})
	now := time.Now()
	s.Sample(now.Add(-10 * time.Minute))
	s.Sample(now.Add(-8 * time.Minute))
	s.Sample(now.Add(-1 * time.Minute))
	h := SeriesHandler(s)
	get := func(q string) (int, []Sample) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/admin/metrics/series"+q, nil))
		var out struct{ Samples []Sample }
		json.Unmarshal(rec.Body.Bytes(), &out)
		return rec.Code, out.Samples
	}
	if code, ss := get(""); code != 200 || len(ss) != 1 {
		t.Errorf("default (5 minutes): %d, %d samples", code, len(ss))
	}
	if code, ss := get("?minutes=9"); code != 200 || len(ss) != 2 {
		t.Errorf("9 minutes: %d, %d samples", code, len(ss))
	}
	if code, ss := get("?minutes=0.5"); code != 200 || ss == nil || len(ss) != 0 {
		t.Errorf("30 seconds: %d, %v (want an empty list)", code, ss)
	}
	for _, q := range []string{"?minutes=0", "?minutes=x", "?minutes=-3", "?minutes=NaN", "?minutes=100000"} {
		if code, _ := get(q); code != http.StatusBadRequest {
			t.Errorf("%s: %d", q, code)
		}
	}
}

// benchRegistry is a registry like a serving gateway's: the Go and
// process collectors and a few hundred series.
func benchRegistry() *gatewayMetrics {
	m := newGatewayMetrics()
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, route := range []string{"fhir", "fhir-metadata", "smart", "upstream", "login"} {
		for _, st := range []string{"200", "201", "304", "401", "403", "404", "429", "500"} {
			m.requests.WithLabelValues(route, "GET", st).Inc()
		}
		m.duration.WithLabelValues(route).Observe(.002)
		for _, r := range []string{"hit", "miss", "stale", "bypass"} {
			m.cache.WithLabelValues(route, r).Inc()
		}
	}
	return m
}

// BenchmarkGather is the baseline: gathering the registry, which every
// sample does (and every scrape of /metrics, before encoding).
func BenchmarkGather(b *testing.B) {
	m := benchRegistry()
	b.ReportAllocs()
	for b.Loop() {
		m.reg.Gather()
	}
}

// BenchmarkSample is the cost of one tick of the sampler (once a second):
// the gather, reading the families, and the sample.
func BenchmarkSample(b *testing.B) {
	m := benchRegistry()
	s, _ := NewSampler(SamplerOptions{Gatherer: m.reg})
	t0 := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		s.Sample(t0.Add(time.Duration(i) * time.Second))
	}
}
