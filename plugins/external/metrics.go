package external

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/gateway"
)

// Metric names; every metric has a plugin label.
const (
	MetricDecisions      = "omnigate_external_decisions_total"
	MetricFailures       = "omnigate_external_failures_total"
	MetricCallDuration   = "omnigate_external_call_duration_seconds"
	MetricUp             = "omnigate_external_up"
	MetricRestarts       = "omnigate_external_restarts_total"
	MetricHealthFailures = "omnigate_external_health_check_failures_total"
	MetricCounter        = "omnigate_external_counter_total"
)

// maxCounters bounds the counter names of one plugin.
const maxCounters = 100

type pluginMetrics struct {
	reqContinue, reqStop, reqSkip, respContinue, respStop prometheus.Counter

	failures       *prometheus.CounterVec // curried: phase, kind
	reqDuration    prometheus.Observer
	respDuration   prometheus.Observer
	up             prometheus.Gauge
	restarts       *prometheus.CounterVec // curried: result
	healthFailures prometheus.Counter

	counters   *prometheus.CounterVec // curried: name
	countersMu sync.RWMutex
	byName     map[string]prometheus.Counter
}

// newPluginMetrics registers the external plugin metrics with reg (when
// not nil; a registry that has them already, after a reload or for a
// second plugin, keeps its own) and returns the children of plugin name.
func newPluginMetrics(reg prometheus.Registerer, name string) *pluginMetrics {
	dec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricDecisions, Help: "Decisions of external plugins, by plugin, phase and action (continue, stop, skip_response).",
	}, []string{"plugin", "phase", "action"})
	fail := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricFailures, Help: "Requests that got an external plugin's failure mode, by plugin, phase and kind (down, deadline, unavailable, error, invalid, canceled).",
	}, []string{"plugin", "phase", "kind"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    MetricCallDuration,
		Help:    "Round-trip time of calls to external plugins, by plugin and phase.",
		Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
	}, []string{"plugin", "phase"})
	up := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: MetricUp, Help: "Processes of each external plugin that serve: 1, 0 while it is down (2 for a moment during a config reload).",
	}, []string{"plugin"})
	rst := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricRestarts, Help: "Restarts of external plugin processes, by plugin and result (success, failure).",
	}, []string{"plugin", "result"})
	hf := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricHealthFailures, Help: "Failed health checks of external plugin processes, by plugin.",
	}, []string{"plugin"})
	cnt := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricCounter, Help: "Counters that external plugins count, by plugin and counter name.",
	}, []string{"plugin", "name"})
	if reg != nil {
		dec = gateway.RegisterMetric(reg, dec)
		fail = gateway.RegisterMetric(reg, fail)
		dur = gateway.RegisterMetric(reg, dur)
		up = gateway.RegisterMetric(reg, up)
		rst = gateway.RegisterMetric(reg, rst)
		hf = gateway.RegisterMetric(reg, hf)
		cnt = gateway.RegisterMetric(reg, cnt)
	}
	l := prometheus.Labels{"plugin": name}
	return &pluginMetrics{
		reqContinue:    dec.WithLabelValues(name, "request", "continue"),
		reqStop:        dec.WithLabelValues(name, "request", "stop"),
		reqSkip:        dec.WithLabelValues(name, "request", "skip_response"),
		respContinue:   dec.WithLabelValues(name, "response", "continue"),
		respStop:       dec.WithLabelValues(name, "response", "stop"),
		failures:       fail.MustCurryWith(l),
		reqDuration:    dur.WithLabelValues(name, "request"),
		respDuration:   dur.WithLabelValues(name, "response"),
		up:             up.WithLabelValues(name),
		restarts:       rst.MustCurryWith(l),
		healthFailures: hf.WithLabelValues(name),
		counters:       cnt.MustCurryWith(l),
		byName:         map[string]prometheus.Counter{},
	}
}

// counter returns the plugin's counter called name, or nil for a name
// that is not 1 to 64 of [a-z0-9_] or past the plugin's maxCounters.
func (m *pluginMetrics) counter(name string) prometheus.Counter {
	m.countersMu.RLock()
	c, ok := m.byName[name]
	m.countersMu.RUnlock()
	if ok {
		return c
	}
	if !validCounterName(name) {
		return nil
	}
	m.countersMu.Lock()
	defer m.countersMu.Unlock()
	if c, ok := m.byName[name]; ok {
		return c
	}
	if len(m.byName) >= maxCounters {
		return nil
	}
	c = m.counters.WithLabelValues(name)
	m.byName[name] = c
	return c
}

func validCounterName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
