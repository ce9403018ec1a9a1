package audit

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/gateway"
)

// Metric names the plugin exports. Every series has the label plugin (the
// audit plugin instance that owns the spool); sink series also sink.
const (
	// MetricSpooled counts records written and fsynced to the spool.
	MetricSpooled = "omnigate_audit_records_spooled_total"
	// MetricDropped counts records not kept because the spool was full
	// (on_sink_failure: drop).
	MetricDropped = "omnigate_audit_records_dropped_total"
	// MetricBlocked counts requests refused with 503 because the spool was
	// full (on_sink_failure: block).
	MetricBlocked = "omnigate_audit_requests_blocked_total"
	// MetricFlushFailures counts failed writes of the spool.
	MetricFlushFailures = "omnigate_audit_flush_failures_total"
	// MetricSpoolBytes is the size of the spool: segments and pending
	// records.
	MetricSpoolBytes = "omnigate_audit_spool_bytes"
	// MetricSinkRecords counts records a sink took, by sink.
	MetricSinkRecords = "omnigate_audit_sink_records_total"
	// MetricSinkRejected counts records a sink refused for good.
	MetricSinkRejected = "omnigate_audit_sink_rejected_total"
	// MetricSinkFailures counts failed writes to a sink (each is retried).
	MetricSinkFailures = "omnigate_audit_sink_failures_total"
	// MetricSinkLag is the age of the oldest spooled record a sink has not
	// taken yet, 0 when it is caught up.
	MetricSinkLag = "omnigate_audit_sink_lag_seconds"
	// MetricSinkBehind is the spooled bytes a sink has not taken yet.
	MetricSinkBehind = "omnigate_audit_sink_behind_bytes"
)

type metrics struct {
	spooled, dropped, blocked, flushFailures *prometheus.CounterVec
	written, rejected, failures              *prometheus.CounterVec
	live                                     *liveCollector
}

type sinkCounters struct {
	written, rejected, failures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return gateway.RegisterMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels))
	}
	return &metrics{
		spooled:       counter(MetricSpooled, "Audit records written and fsynced to the spool.", "plugin"),
		dropped:       counter(MetricDropped, "Audit records not kept because the spool was full (on_sink_failure: drop).", "plugin"),
		blocked:       counter(MetricBlocked, "Requests refused because the audit spool was full (on_sink_failure: block).", "plugin"),
		flushFailures: counter(MetricFlushFailures, "Failed writes of the audit spool.", "plugin"),
		written:       counter(MetricSinkRecords, "Audit records a sink took.", "plugin", "sink"),
		rejected:      counter(MetricSinkRejected, "Audit records a sink refused for good.", "plugin", "sink"),
		failures:      counter(MetricSinkFailures, "Failed writes to an audit sink (retried with backoff).", "plugin", "sink"),
		live:          gateway.RegisterMetric(reg, newLiveCollector()),
	}
}

func (m *metrics) sink(plugin, sink string) sinkCounters {
	return sinkCounters{
		written:  m.written.WithLabelValues(plugin, sink),
		rejected: m.rejected.WithLabelValues(plugin, sink),
		failures: m.failures.WithLabelValues(plugin, sink),
	}
}

func (m *metrics) track(p *pipeline)   { m.live.add(p) }
func (m *metrics) untrack(p *pipeline) { m.live.remove(p) }

// liveCollector reports the gauges that are read when scraped: the spool
// size, and each sink's lag and backlog.
type liveCollector struct {
	bytes, lag, behind *prometheus.Desc

	mu        sync.Mutex
	pipelines map[*pipeline]bool
}

func newLiveCollector() *liveCollector {
	return &liveCollector{
		bytes:     prometheus.NewDesc(MetricSpoolBytes, "Size of the audit spool: segments on disk and records waiting for the flush.", []string{"plugin"}, nil),
		lag:       prometheus.NewDesc(MetricSinkLag, "Age of the oldest spooled audit record a sink has not taken yet; 0 when caught up.", []string{"plugin", "sink"}, nil),
		behind:    prometheus.NewDesc(MetricSinkBehind, "Spooled audit bytes a sink has not taken yet.", []string{"plugin", "sink"}, nil),
		pipelines: map[*pipeline]bool{},
	}
}

func (c *liveCollector) add(p *pipeline) {
	c.mu.Lock()
	c.pipelines[p] = true
	c.mu.Unlock()
}

func (c *liveCollector) remove(p *pipeline) {
	c.mu.Lock()
	delete(c.pipelines, p)
	c.mu.Unlock()
}

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.lag
	ch <- c.behind
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	ps := make([]*pipeline, 0, len(c.pipelines))
	for p := range c.pipelines {
		ps = append(ps, p)
	}
	c.mu.Unlock()
	for _, p := range ps {
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(p.spool.bytes()), p.name)
		for _, st := range p.sinkStates() {
			ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, st.LagSeconds, p.name, st.Name)
			ch <- prometheus.MustNewConstMetric(c.behind, prometheus.GaugeValue, float64(st.BehindBytes), p.name, st.Name)
		}
	}
}
