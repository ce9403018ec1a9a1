package wasm

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/gateway"
)

// Metric names; every metric has a plugin label.
const (
	MetricDecisions  = "omnigate_wasm_decisions_total"
	MetricFailures   = "omnigate_wasm_failures_total"
	MetricDiscarded  = "omnigate_wasm_instances_discarded_total"
	MetricInstances  = "omnigate_wasm_instances"
	MetricReloads    = "omnigate_wasm_reloads_total"
	MetricKVErrors   = "omnigate_wasm_kv_errors_total"
	MetricCounter    = "omnigate_wasm_counter_total"
	MetricStarted    = "omnigate_wasm_instances_started_total"
	MetricBreaker    = "omnigate_wasm_breaker_state"
	MetricLogDropped = "omnigate_wasm_log_lines_dropped_total"
	maxCounterLabels = maxCounters
)

// vecs are the wasm metric vectors.
type vecs struct {
	dec, fail, disc, rel, kve, cnt, started, dropped *prometheus.CounterVec
	inst, breaker                                    *prometheus.GaugeVec
}

// newVecs returns the wasm metric vectors; registering them with a
// registry that already has them returns the registered ones (after a
// reload, or for a second plugin).
func newVecs() vecs {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	}
	return vecs{
		dec: counter(MetricDecisions, "Decisions of wasm plugins, by plugin, phase and action (continue, stop).", "plugin", "phase", "action"),
		fail: counter(MetricFailures, "Failed calls into wasm plugins, by plugin, phase and kind (trap, exit, deadline, abi, too_large, busy, canceled, breaker).",
			"plugin", "phase", "kind"),
		disc:    counter(MetricDiscarded, "Wasm instances discarded after a failure, by plugin.", "plugin"),
		inst:    gauge(MetricInstances, "Size of each wasm plugin's instance pool.", "plugin"),
		rel:     counter(MetricReloads, "Hot reloads of wasm modules, by plugin and result (success, failure).", "plugin", "result"),
		kve:     counter(MetricKVErrors, "Failed KV operations of wasm plugins, by plugin.", "plugin"),
		cnt:     counter(MetricCounter, "Counters that wasm plugins count, by plugin and counter name.", "plugin", "name"),
		started: counter(MetricStarted, "Wasm instances started (at load and to replace discarded ones), by plugin.", "plugin"),
		breaker: gauge(MetricBreaker, "State of each wasm plugin's circuit breaker: 0 closed, 1 open, 2 half-open.", "plugin"),
		dropped: counter(MetricLogDropped, "Log lines of wasm plugins dropped over their log rate, by plugin.", "plugin"),
	}
}

type pluginMetrics struct {
	reqContinue, reqStop, respContinue, respStop prometheus.Counter

	failures  *prometheus.CounterVec // curried: phase, kind
	discarded prometheus.Counter
	started   prometheus.Counter
	instances prometheus.Gauge
	breaker   prometheus.Gauge
	reloads   *prometheus.CounterVec // curried: result
	kvErrors  prometheus.Counter
	dropped   prometheus.Counter

	counters   *prometheus.CounterVec // curried: name
	countersMu sync.RWMutex
	byName     map[string]prometheus.Counter
}

// newPluginMetrics registers the wasm metrics with reg (when not nil) and
// returns the children of plugin name.
func newPluginMetrics(reg prometheus.Registerer, name string) *pluginMetrics {
	v := newVecs()
	if reg != nil {
		v.dec = gateway.RegisterMetric(reg, v.dec)
		v.fail = gateway.RegisterMetric(reg, v.fail)
		v.disc = gateway.RegisterMetric(reg, v.disc)
		v.inst = gateway.RegisterMetric(reg, v.inst)
		v.rel = gateway.RegisterMetric(reg, v.rel)
		v.kve = gateway.RegisterMetric(reg, v.kve)
		v.cnt = gateway.RegisterMetric(reg, v.cnt)
		v.started = gateway.RegisterMetric(reg, v.started)
		v.breaker = gateway.RegisterMetric(reg, v.breaker)
		v.dropped = gateway.RegisterMetric(reg, v.dropped)
	}
	l := prometheus.Labels{"plugin": name}
	return &pluginMetrics{
		reqContinue:  v.dec.WithLabelValues(name, "request", "continue"),
		reqStop:      v.dec.WithLabelValues(name, "request", "stop"),
		respContinue: v.dec.WithLabelValues(name, "response", "continue"),
		respStop:     v.dec.WithLabelValues(name, "response", "stop"),
		failures:     v.fail.MustCurryWith(l),
		discarded:    v.disc.WithLabelValues(name),
		started:      v.started.WithLabelValues(name),
		instances:    v.inst.WithLabelValues(name),
		breaker:      v.breaker.WithLabelValues(name),
		reloads:      v.rel.MustCurryWith(l),
		kvErrors:     v.kve.WithLabelValues(name),
		dropped:      v.dropped.WithLabelValues(name),
		counters:     v.cnt.MustCurryWith(l),
		byName:       map[string]prometheus.Counter{},
	}
}

// counter returns the guest counter called name, or nil when the plugin
// already has maxCounters others.
func (m *pluginMetrics) counter(name []byte) prometheus.Counter {
	m.countersMu.RLock()
	c, ok := m.byName[string(name)]
	m.countersMu.RUnlock()
	if ok {
		return c
	}
	m.countersMu.Lock()
	defer m.countersMu.Unlock()
	if c, ok := m.byName[string(name)]; ok {
		return c
	}
	if len(m.byName) >= maxCounterLabels {
		return nil
	}
	c = m.counters.WithLabelValues(string(name))
	m.byName[string(name)] = c
	return c
}
