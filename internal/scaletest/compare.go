package scaletest

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Compare writes a Markdown table that sets two runs side by side: the
// fleet behind an origin process (SQLite store) and the fleet on
// PostgreSQL, run with the same options one after the other.
func Compare(w io.Writer, origin, pg *Report) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	row := func(name string, f func(r *Report) string) { p("| %s | %s | %s |", name, f(origin), f(pg)) }
	p("# OmniGate fleet: origin process vs PostgreSQL")
	p("")
	p("Two runs with the same options, one after the other on the same machine: %d instances, %s each.",
		pg.Setup.Instances, time.Duration(pg.Setup.DurationMS*1e6))
	if pg.Setup.Command != "" {
		p("Command: `%s`.", pg.Setup.Command)
	}
	p("")
	p("| | origin process (SQLite) | PostgreSQL, no origin |")
	p("| --- | ---: | ---: |")
	row("checks", func(r *Report) string {
		if r.Passed() {
			return "passed"
		}
		return fmt.Sprintf("**%d failed**", len(r.Failures))
	})
	row("requests/s", func(r *Report) string { return fmt.Sprintf("%.0f", r.Overall.PerSecond) })
	row("p50 / p99", func(r *Report) string { return fms(r.Overall.P50MS) + " / " + fms(r.Overall.P99MS) })
	for _, t := range tierNames {
		row("CPU per request, "+t.name, func(r *Report) string {
			if v, ok := r.CPUPerRequestUS[t.key]; ok {
				return f1(v) + " µs"
			}
			return "—"
		})
	}
	row("CPU per request, all tiers", func(r *Report) string { return f1(cpuTotal(r)) + " µs" })
	row("staleness across instances (Redis up) p50 / p99 / max", func(r *Report) string {
		return fms(r.Staleness.Up.P50MS) + " / " + fms(r.Staleness.Up.P99MS) + " / " + fms(r.Staleness.Up.MaxMS)
	})
	row("Redis outage: requests, 5xx", func(r *Report) string {
		if r.Failover == nil {
			return "—"
		}
		return fmt.Sprintf("%d, %d", r.Failover.OutageRequests, r.Failover.FiveXX)
	})
	row("store restart: 503 with Retry-After, other failures, back after the stop", func(r *Report) string {
		so := r.StoreOutage
		if so == nil {
			return "—"
		}
		return fmt.Sprintf("%d, %d, %s", so.Unavailable, so.Failed, fms(so.AllBackMS-so.StopAtMS))
	})
	row("acknowledged writes: checked, missing", func(r *Report) string {
		return fmt.Sprintf("%d, %d", r.Writes.Checked, r.Writes.Missing)
	})
	row("load average before / after", func(r *Report) string {
		return fmt.Sprintf("%.2f / %.2f", r.Setup.LoadAvg[0], r.Setup.LoadAvg[1])
	})
	p("")
	if origin.Overall.PerSecond > 0 && cpuTotal(origin) > 0 {
		p("PostgreSQL fleet ÷ origin fleet: %.2f× the requests/s, %.2f× the CPU per request (all tiers).",
			pg.Overall.PerSecond/origin.Overall.PerSecond, cpuTotal(pg)/cpuTotal(origin))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func cpuTotal(r *Report) float64 {
	t := 0.0
	for _, v := range r.CPUPerRequestUS {
		t += v
	}
	return t
}
