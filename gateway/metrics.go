package gateway

import (
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
	}
	reg.MustRegister(m.requests, m.duration, m.inflight, m.pluginDuration, m.panics,
		m.upstreamErrors, m.reloads, m.reloadTime)
	return m
}

// NewRegistry returns a Prometheus registry with the Go runtime and process
// collectors, the default for a Server.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
