package authz

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// Metric names the plugin exports.
const (
	// MetricDecisions counts decisions on requests by result (allow,
	// deny, break_glass), role (a configured role, "unknown" or "none")
	// and interaction (a FHIR interaction code, "transaction",
	// "capabilities" for public documents, "unknown").
	MetricDecisions = "omnigate_authz_decisions_total"
	// MetricBundleEntries counts decisions on entries of batches and
	// transactions, by result (allow, deny).
	MetricBundleEntries = "omnigate_authz_bundle_entries_total"
	// MetricBreakGlass counts break-glass accesses by role.
	MetricBreakGlass = "omnigate_authz_break_glass_total"
	// MetricRemoved counts resources the gateway removed from upstream
	// answers, by route and kind: match (a narrowed search or history
	// answered something outside the policy: the upstream did not honour
	// the narrowing), include (an included resource the caller may not
	// see), read (a read outside the policy, answered 404).
	MetricRemoved = "omnigate_authz_removed_total"
)

// Results.
const (
	resultAllow      = "allow"
	resultDeny       = "deny"
	resultBreakGlass = "break_glass"
)

var results = [...]string{resultAllow, resultDeny, resultBreakGlass}

// interactions are the interaction label values.
var interactions = [...]string{
	fhirreq.Read, fhirreq.VRead, fhirreq.Update, fhirreq.Patch, fhirreq.Delete,
	fhirreq.HistoryInstance, fhirreq.HistoryType, fhirreq.HistorySystem, fhirreq.Create,
	fhirreq.SearchType, fhirreq.SearchSystem, fhirreq.Capabilities, fhirreq.Batch, "transaction",
	fhirreq.Operation, "unknown",
}

type metrics struct {
	decisions  *prometheus.CounterVec
	entries    *prometheus.CounterVec
	breakGlass *prometheus.CounterVec
	removed    *prometheus.CounterVec

	// slots cache the decision counters, indexed by result, interaction
	// and role, so the hot path does no label lookup.
	roles map[string]int
	slots []atomic.Pointer[prometheus.Counter]
	names []string // role label by index
}

func newMetrics(reg prometheus.Registerer, cfg *Config) *metrics {
	m := &metrics{
		decisions: gateway.RegisterMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricDecisions, Help: "Access decisions on FHIR requests, by result (allow, deny, break_glass), role and interaction.",
		}, []string{"result", "role", "interaction"})),
		entries: gateway.RegisterMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricBundleEntries, Help: "Access decisions on entries of batch and transaction Bundles, by result (allow, deny).",
		}, []string{"result"})),
		breakGlass: gateway.RegisterMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricBreakGlass, Help: "Requests made with break-glass (emergency) access, by role.",
		}, []string{"role"})),
		removed: gateway.RegisterMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRemoved, Help: "Resources removed from upstream answers by the gateway, by route and kind (match, include, read).",
		}, []string{"route", "kind"})),
		roles: map[string]int{},
	}
	m.names = append(m.names, "none", "unknown")
	for _, r := range sortedKeys(cfg.Roles) {
		m.roles[r] = len(m.names)
		m.names = append(m.names, r)
	}
	m.slots = make([]atomic.Pointer[prometheus.Counter], len(results)*len(interactions)*len(m.names))
	return m
}

// decision counts one decision; role is the identity's role as it came
// ("" for no identity), labelled "none", a configured role, or "unknown".
func (m *metrics) decision(result, role, interaction string) {
	ri := 0
	for i, r := range results {
		if r == result {
			ri = i
		}
	}
	ii := len(interactions) - 1
	for i, in := range interactions {
		if in == interaction {
			ii = i
			break
		}
	}
	rl := 0 // none
	if role != "" {
		var ok bool
		if rl, ok = m.roles[role]; !ok {
			rl = 1 // unknown
		}
	}
	slot := &m.slots[(ri*len(interactions)+ii)*len(m.names)+rl]
	if c := slot.Load(); c != nil {
		(*c).Inc()
		return
	}
	c := m.decisions.WithLabelValues(results[ri], m.names[rl], interactions[ii])
	slot.Store(&c)
	c.Inc()
}
