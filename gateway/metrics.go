package gateway

import (
	"errors"
	"regexp"
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metric names the gateway exports (plugins add their own).
const (
	MetricRequests        = "omnigate_http_requests_total"
	MetricRequestDuration = "omnigate_http_request_duration_seconds"
	MetricInFlight        = "omnigate_http_requests_in_flight"
	MetricPluginDuration  = "omnigate_plugin_duration_seconds"
	MetricPanics          = "omnigate_panics_total"
	MetricUpstreamErrors  = "omnigate_upstream_errors_total"
	MetricReloads         = "omnigate_config_reloads_total"
	MetricReloadTime      = "omnigate_config_last_reload_success_timestamp_seconds"
	MetricRejected        = "omnigate_http_requests_rejected_total"
	MetricBodyBudget      = "omnigate_body_budget_used_bytes"
)

type metrics struct {
	requests       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	inflight       prometheus.Gauge
	pluginDuration *prometheus.HistogramVec
	panics         *prometheus.CounterVec
	upstreamErrors *prometheus.CounterVec
	reloads        *prometheus.CounterVec
	reloadTime     prometheus.Gauge
	rejected       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRequests, Help: "HTTP requests answered, by route, method and status.",
		}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    MetricRequestDuration,
			Help:    "Time from the start of routing to the end of the handler, by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricInFlight, Help: "Requests being served.",
		}),
		pluginDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    MetricPluginDuration,
			Help:    "Time spent in each plugin itself, excluding the rest of the chain.",
			Buckets: []float64{.000005, .00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1},
		}, []string{"plugin"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricPanics, Help: "Panics recovered while serving, by plugin (or handler).",
		}, []string{"plugin"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricUpstreamErrors, Help: "Failed upstream exchanges, by route and kind (connect, timeout, body_too_large, other).",
		}, []string{"route", "kind"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricReloads, Help: "Config reloads, by result (success, failure).",
		}, []string{"result"}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricReloadTime, Help: "Unix time of the last successful config load.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRejected, Help: "Requests answered 503 for want of capacity, by reason (body_budget, in_flight).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.requests, m.duration, m.inflight, m.pluginDuration, m.panics,
		m.upstreamErrors, m.reloads, m.reloadTime, m.rejected)
	return m
}

// NewRegistry returns a Prometheus registry with the Go runtime and process
// collectors, the default for a Server.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// describingRegisterer registers with the server's registry and remembers
// the name of every metric registered, including vectors that have no
// series yet, so that dashboards and alert rules can be checked against
// what the gateway really exports.
type describingRegisterer struct {
	reg   *prometheus.Registry
	mu    sync.Mutex
	names map[string]bool
}

var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

func (d *describingRegisterer) Register(c prometheus.Collector) error {
	err := d.reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if err != nil && !errors.As(err, &are) {
		return err
	}
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	d.mu.Lock()
	for desc := range ch {
		if m := fqNameRE.FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
		}
	}
	d.mu.Unlock()
	return err
}

func (d *describingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := d.Register(c); err != nil {
			panic(err)
		}
	}
}

func (d *describingRegisterer) Unregister(c prometheus.Collector) bool { return d.reg.Unregister(c) }

// MetricNames lists every metric the gateway and its plugins registered
// (histograms without their _bucket, _sum and _count suffixes), and those
// of the registry's other collectors that have series.
func (s *Server) MetricNames() []string {
	set := map[string]bool{}
	s.described.mu.Lock()
	for n := range s.described.names {
		set[n] = true
	}
	s.described.mu.Unlock()
	if mfs, err := s.reg.Gather(); err == nil {
		for _, mf := range mfs {
			set[mf.GetName()] = true
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
