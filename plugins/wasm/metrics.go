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
	maxCounterLabels = maxCounters
)

// newVecs returns the wasm metric vectors; registering them with a
// registry that already has them returns the registered ones (after a
// reload, or for a second plugin).
func newVecs() (dec, fail, disc *prometheus.CounterVec, inst *prometheus.GaugeVec, rel, kve, cnt *prometheus.CounterVec) {
	dec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricDecisions, Help: "Decisions of wasm plugins, by plugin, phase and action (continue, stop).",
	}, []string{"plugin", "phase", "action"})
	fail = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricFailures, Help: "Failed calls into wasm plugins, by plugin, phase and kind (trap, exit, deadline, abi, busy, canceled).",
	}, []string{"plugin", "phase", "kind"})
	disc = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricDiscarded, Help: "Wasm instances discarded after a failure, by plugin.",
	}, []string{"plugin"})
	inst = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: MetricInstances, Help: "Size of each wasm plugin's instance pool.",
	}, []string{"plugin"})
	rel = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricReloads, Help: "Hot reloads of wasm modules, by plugin and result (success, failure).",
	}, []string{"plugin", "result"})
	kve = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricKVErrors, Help: "Failed KV operations of wasm plugins, by plugin.",
	}, []string{"plugin"})
	cnt = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricCounter, Help: "Counters that wasm plugins count, by plugin and counter name.",
	}, []string{"plugin", "name"})
	return
}

type pluginMetrics struct {
	reqContinue, reqStop, respContinue, respStop prometheus.Counter

	failures  *prometheus.CounterVec // curried: phase, kind
	discarded prometheus.Counter
	instances prometheus.Gauge
	reloads   *prometheus.CounterVec // curried: result
	kvErrors  prometheus.Counter

	counters   *prometheus.CounterVec // curried: name
	countersMu sync.RWMutex
	byName     map[string]prometheus.Counter
}

// newPluginMetrics registers the wasm metrics with reg (when not nil) and
// returns the children of plugin name.
func newPluginMetrics(reg prometheus.Registerer, name string) *pluginMetrics {
	dec, fail, disc, inst, rel, kve, cnt := newVecs()
	if reg != nil {
		dec = gateway.RegisterMetric(reg, dec)
		fail = gateway.RegisterMetric(reg, fail)
		disc = gateway.RegisterMetric(reg, disc)
		inst = gateway.RegisterMetric(reg, inst)
		rel = gateway.RegisterMetric(reg, rel)
		kve = gateway.RegisterMetric(reg, kve)
		cnt = gateway.RegisterMetric(reg, cnt)
	}
	l := prometheus.Labels{"plugin": name}
	return &pluginMetrics{
		reqContinue:  dec.WithLabelValues(name, "request", "continue"),
		reqStop:      dec.WithLabelValues(name, "request", "stop"),
		respContinue: dec.WithLabelValues(name, "response", "continue"),
		respStop:     dec.WithLabelValues(name, "response", "stop"),
		failures:     fail.MustCurryWith(l),
		discarded:    disc.WithLabelValues(name),
		instances:    inst.WithLabelValues(name),
		reloads:      rel.MustCurryWith(l),
		kvErrors:     kve.WithLabelValues(name),
		counters:     cnt.MustCurryWith(l),
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
