package scaletest

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/omnigate/omnigate/internal/svgchart"
)

// Passed reports whether every check held.
func (r *Report) Passed() bool { return len(r.Failures) == 0 }

// JSON writes the report as indented JSON.
func (r *Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func f1(v float64) string { return fmt.Sprintf("%.1f", v) }

func fms(v float64) string {
	switch {
	case v < 0:
		return "—"
	case v >= 10000:
		return fmt.Sprintf("%.1f s", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	}
	return fmt.Sprintf("%.2f ms", v)
}

func statusLine(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b []string
	for _, k := range keys {
		b = append(b, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return strings.Join(b, ", ")
}

func roleLine(m map[string]int) string {
	var b []string
	for _, r := range []string{"physician", "nurse", "patient"} {
		if m[r] > 0 {
			b = append(b, fmt.Sprintf("%d %ss", m[r], r))
		}
	}
	return strings.Join(b, ", ")
}

func versionNote(v string) string {
	if v == "" {
		return ""
	}
	return " (omnigate " + v + ")"
}

func lostNote(ss SessionSummary) string {
	if ss.WitnessLost == 0 {
		return ""
	}
	return fmt.Sprintf(" (the oldest made %s before the stop)", fms(ss.LostOldestMS))
}

// tierNames name the CPU tiers, in report order.
var tierNames = []struct{ key, name string }{
	{"gateway", "gateway instances together"}, {"fhir-origin", "FHIR origin"}, {"postgres", "PostgreSQL (postmaster and backends)"}, {"redis", "Redis"},
}

// tierLine is the CPU per request by tier, in µs.
func tierLine(m map[string]float64) string {
	var b []string
	total := 0.0
	for _, t := range tierNames {
		if v, ok := m[t.key]; ok {
			b = append(b, fmt.Sprintf("%s %s µs", t.name, f1(v)))
			total += v
		}
	}
	return strings.Join(b, ", ") + fmt.Sprintf("; %s µs in all", f1(total))
}

// Markdown writes the summary.
func (r *Report) Markdown(w io.Writer) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	verdict := "**PASSED**: every check held."
	if !r.Passed() {
		verdict = fmt.Sprintf("**FAILED**: %d checks did not hold.", len(r.Failures))
	}
	s := r.Setup
	p("# OmniGate fleet test")
	p("")
	p("%s", verdict)
	p("")
	p("- %d gateway instances, backend: %s, Redis: %s", s.Instances, s.Backend, s.Redis)
	if s.StoreDesc != "" {
		p("- FHIR store: %s; every instance serves it directly (no origin process)", s.StoreDesc)
	}
	if s.Config != "" {
		p("- %s; the config %s (limits as its rate limiter announces them)", roleLine(s.Users), s.Config)
	} else {
		p("- %s; limits per %s: physician %d, nurse %d, patient %d", roleLine(s.Users), time.Duration(s.WindowMS*1e6),
			s.Limits["physician"], s.Limits["nurse"], s.Limits["patient"])
	}
	p("- load for %s on %d CPUs, started %s; load average %.1f before, %.1f after", time.Duration(s.ElapsedMS*1e6).Round(time.Millisecond), s.CPUs,
		r.Started.UTC().Format(time.RFC3339), s.LoadAvg[0], s.LoadAvg[1])
	if s.Command != "" {
		p("- command: `%s`%s", s.Command, versionNote(s.Version))
	}
	p("")
	if !r.Passed() {
		p("## Failures")
		p("")
		for _, f := range r.Failures {
			p("- %s", f)
		}
		p("")
	}
	p("## Throughput and latency")
	p("")
	p("| | requests | req/s | p50 | p90 | p99 | max | statuses |")
	p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, st := range append([]Stats{r.Overall}, r.Instances...) {
		p("| %s | %d | %.0f | %s | %s | %s | %s | %s |", st.Name, st.Requests, st.PerSecond, fms(st.P50MS), fms(st.P90MS), fms(st.P99MS), fms(st.MaxMS), statusLine(st.Status))
	}
	p("")
	p("| operation | requests | p50 | p99 | statuses |")
	p("| --- | ---: | ---: | ---: | --- |")
	for _, st := range r.Ops {
		p("| %s | %d | %s | %s | %s |", st.Name, st.Requests, fms(st.P50MS), fms(st.P99MS), statusLine(st.Status))
	}
	p("")
	p("## Rate limit accuracy (fleet-wide)")
	p("")
	p("Every span of the window's length, starting at each admitted request, for every user: requests admitted (begun and answered inside the span) against the limit. Windows that overlap a span in which an instance was off Redis are counted apart: there instances decide from memory, each with the limit divided by the instances.")
	p("")
	p("| role | policy | limit | window | users | admitted | limited (429) | most in a window, Redis up | windows over the limit | most in a window overlapping the outage | memory bound |")
	p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, ra := range r.RateLimit {
		most := "— (no window fits)"
		if ra.WindowsUp > 0 {
			most = fmt.Sprintf("%d (%.0f%%)", ra.MaxUp, 100*float64(ra.MaxUp)/float64(ra.Limit))
		}
		p("| %s | %s | %d | %s | %d | %d | %d | %s | %d | %d | %d |", ra.Role, ra.Policy, ra.Limit, time.Duration(ra.WindowMS*1e6), ra.Users,
			ra.Admitted, ra.Limited, most, ra.Violations, ra.MaxOutage, ra.Bound)
	}
	p("")
	ss := r.Sessions
	p("## Sessions across instances")
	p("")
	p("- %d logins (%d failed); %d requests used a session made on another instance: %d refused while Redis was up", ss.Logins, ss.LoginsFailed, ss.CrossRequests, ss.CrossRejectedUp)
	p("- during the outage: **%d refused with a session made before it** (bound: 0); %d with a session made in the %s before it (its announcement may have died with Redis); %d with a session made during it in another instance's memory (valid only there until Redis returns)",
		ss.CrossRejectedOutage, ss.CrossRejectedOutageLate, announceGrace, ss.CrossRejectedOutageNew)
	for _, r := range ss.OutageRefusals {
		p("  - %s", r)
	}
	if ss.CrossRejectedWriteBack > 0 {
		p("- %d refused after the outage, with sessions made in memory during it, before their instance had written them back to Redis (the last %s after the outage's end)",
			ss.CrossRejectedWriteBack, fms(ss.WriteBackLagMS))
	}
	p("- logins answered: %s", statusLine(ss.LoginStatus))
	p("- after the run, %d of %d checks (each user's last sessions on every instance) were valid", ss.Valid, ss.Checked)
	when := "in the 2 s before the stop"
	if r.Failover == nil {
		when = "50 ms apart, in the 2 s before 40% of the load"
	}
	p("- %d witness sessions made %s: %d lost%s", ss.Witnesses, when, ss.WitnessLost, lostNote(ss))
	for _, pr := range ss.Problems {
		p("  - %s", pr)
	}
	p("")
	st := r.Staleness
	p("## Cache invalidation across instances")
	p("")
	p("A probe writes a Patient on one instance after every instance has cached it, then reads it on the others until they serve the new version: the staleness is the time from the write's answer to the first fresh read (reads 1–50 ms apart, about 10%% resolution).")
	p("")
	p("| writes acknowledged | probes | seen | first read fresh | p50 | p90 | p99 | max |")
	p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, c := range []struct {
		name string
		c    StalenessClass
	}{{"while Redis was up", st.Up}, {"during the outage", st.Outage}, {"around the store restart", st.StoreOutage}} {
		if c.c.Probes == 0 && c.name == "around the store restart" {
			continue
		}
		p("| %s | %d | %d | %d | %s | %s | %s | %s |", c.name, c.c.Probes, c.c.Seen, c.c.FirstRead, fms(c.c.P50MS), fms(c.c.P90MS), fms(c.c.P99MS), fms(c.c.MaxMS))
	}
	p("")
	if st.UpBoundMS > 0 {
		verdict := "within"
		if st.Up.P99MS > st.UpBoundMS || st.Up.MaxMS > st.UpBoundMS {
			verdict = "**over**"
		}
		p("While Redis and the store are up, a read by id on another instance may return the previous version until the response cache's invalidation (Redis pub/sub) arrives (the store's read cache is off in this fleet: docs/FHIR.md); the bound checked is %s. Measured: p99 %s, max %s, %s the bound.",
			fms(st.UpBoundMS), fms(st.Up.P99MS), fms(st.Up.MaxMS), verdict)
		p("")
	}
	if st.OutageBoundMS > 0 {
		verdict := "within"
		if st.OutageStaleMS > st.OutageBoundMS {
			verdict = "**over**"
		}
		p("During the outage an instance may serve the old version for at most the cache's `outage_max_age` (or `l1.ttl` when longer) after a write made elsewhere: %s. The longest it did (the start of its last stale read) was %s, %s the bound.",
			fms(st.OutageBoundMS), fms(st.OutageStaleMS), verdict)
		p("")
	}
	wc := r.Writes
	p("## Acknowledged writes")
	p("")
	p("Every write the fleet acknowledged (200 or 201 to a simulated user or a probe) is read back by version (`GET [type]/[id]/_history/[version]`) after the run.")
	p("")
	p("- %d acknowledged, %d checked: **%d missing**; %d named no version", wc.Acknowledged, wc.Checked, wc.Missing, wc.NoVersion)
	if r.StoreOutage != nil {
		p("- %d acknowledged in the 2 s before the store was stopped, %d while it was down", wc.BeforeStoreStop, wc.DuringStoreOutage)
	}
	for _, pr := range wc.Problems {
		p("  - %s", pr)
	}
	p("")
	if so := r.StoreOutage; so != nil {
		p("## Store restart")
		p("")
		p("- at %s: PostgreSQL stopped in immediate mode (connections cut, no checkpoint, as a crash)", fms(so.StopAtMS))
		p("- at %s: started again; accepting connections at %s; every instance's fhir-store back up at %s (%s after the stop)",
			fms(so.RestartAtMS), fms(so.ReadyMS), fms(so.AllBackMS), fms(so.AllBackMS-so.StopAtMS))
		p("- %d requests begun or answered meanwhile (%s): %d answered 503 with Retry-After (allowed), **%d failed otherwise**",
			so.Requests, statusLine(so.Status), so.Unavailable, so.Failed)
		if so.Error != "" {
			p("- error: %s", so.Error)
		}
		p("")
		p("| instance | store down seen after the stop | back after the restart began |")
		p("| --- | ---: | ---: |")
		for _, in := range so.Instances {
			p("| %d | %s | %s |", in.Instance, fms(in.DownMS), fms(in.BackMS))
		}
		p("")
	}
	if fo := r.Failover; fo != nil {
		p("## Failover")
		p("")
		p("- at %s: %s", fms(fo.StopAtMS), fo.Stop)
		p("- at %s: %s", fms(fo.RestartMS), fo.Restart)
		if fo.BackAfterRestartMS >= 0 {
			p("- every instance back on Redis at %s: %s after the restart began, %s after the stop", fms(fo.AllBackMS), fms(fo.BackAfterRestartMS), fms(fo.BackAfterStopMS))
		} else {
			p("- every instance back on Redis at %s, %s after the stop (before the restart)", fms(fo.AllBackMS), fms(fo.BackAfterStopMS))
		}
		p("- %d requests answered during the outage (%s); **%d with 5xx**", fo.OutageRequests, statusLine(fo.OutageStatus), fo.FiveXX)
		p("- rate limit decisions made from memory: %.0f", fo.MemoryDecisions)
		p("")
		p("| instance | Redis down seen after the stop | back on Redis after the stop | after the restart began |")
		p("| --- | ---: | ---: | ---: |")
		for _, in := range fo.Instances {
			after := "—"
			if in.BackAtMS >= 0 {
				after = fms(in.BackAtMS - fo.StopAtMS)
			}
			p("| %d | %s | %s | %s |", in.Instance, fms(in.DownMS), after, fms(in.BackMS))
		}
		p("")
	}
	p("## Off Redis")
	p("")
	if len(r.OffRedis) == 0 {
		p("Every instance was on Redis throughout.")
	} else {
		p("Spans in which at least one instance decided from memory (from each instance's /ping, polled every 25 ms):")
		p("")
		for _, sp := range r.OffRedis {
			what := "unplanned"
			if sp.Planned {
				what = "the planned outage"
			}
			p("- %s – %s (%s), %s; instances %v", fms(sp.FromMS), fms(sp.ToMS), fms(sp.ToMS-sp.FromMS), what, sp.Instances)
		}
	}
	p("")
	p("## CPU and memory")
	p("")
	p("From /proc every second (CPU: percent of one core).")
	p("")
	if len(r.CPUPerRequestUS) > 0 {
		p("CPU per request of the load: %s.", tierLine(r.CPUPerRequestUS))
		p("")
	}
	p("| process | CPU avg | CPU max | CPU time | RSS max | RSS at end |")
	p("| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, pr := range r.Processes {
		p("| %s | %s%% | %s%% | %.1f s | %s MiB | %s MiB |", pr.Name, f1(pr.CPUAvg), f1(pr.CPUMax), pr.CPUSeconds, f1(pr.RSSMaxMiB), f1(pr.RSSEndMiB))
	}
	p("")
	if len(r.Metrics) > 0 {
		p("## Gateway metrics (sum over instances)")
		p("")
		keys := make([]string, 0, len(r.Metrics))
		for k := range r.Metrics {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p("- `%s`: %.0f", k, r.Metrics[k])
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Charts returns the report's charts as SVG markup, in page order.
func (r *Report) Charts() []template.HTML {
	var bands []svgchart.Band
	for _, sp := range r.OffRedis {
		b := svgchart.Band{From: sp.FromMS / 1000, To: sp.ToMS / 1000, Label: "off Redis"}
		if sp.Planned {
			b.Label = "Redis outage"
		}
		bands = append(bands, b)
	}
	if so := r.StoreOutage; so != nil {
		bands = append(bands, svgchart.Band{From: so.StopAtMS / 1000, To: so.AllBackMS / 1000, Label: "store restart"})
	}
	var x, total, p50, p99 []float64
	mix := make([][]float64, 5)
	per := make([][]float64, len(r.Instances))
	for _, tp := range r.Timeline {
		x = append(x, tp.At)
		total = append(total, float64(tp.Total))
		p50, p99 = append(p50, tp.P50MS), append(p99, tp.P99MS)
		for k, n := range []int{tp.OK, tp.Limited, tp.Refused, tp.Unavailable, tp.Errors} {
			mix[k] = append(mix[k], float64(n))
		}
		for i, n := range tp.PerInstance {
			per[i] = append(per[i], float64(n))
		}
	}
	thr := []svgchart.Series{{Name: "all instances", X: x, Y: total, Color: "#222"}}
	for i, ys := range per {
		thr = append(thr, svgchart.Series{Name: fmt.Sprintf("instance %d", i+1), X: x, Y: ys})
	}
	var charts []string
	charts = append(charts, svgchart.Line{ID: "throughput", Title: "Throughput over time (requests per second)", XLabel: "seconds", YLabel: "req/s",
		Series: thr, Bands: bands}.SVG())
	charts = append(charts, svgchart.Line{ID: "latency-time", Title: "Latency over time (all instances)", XLabel: "seconds", YLabel: "ms",
		Series: []svgchart.Series{{Name: "p50", X: x, Y: p50}, {Name: "p99", X: x, Y: p99}}, Bands: bands}.SVG())
	var mixSeries []svgchart.Series
	for k, name := range []string{"2xx, 3xx", "429", "other 4xx", "503", "other 5xx, transport errors"} {
		mixSeries = append(mixSeries, svgchart.Series{Name: name, X: x, Y: mix[k]})
	}
	charts = append(charts, svgchart.Line{ID: "status-mix", Title: "Status mix over time (responses per second)", XLabel: "seconds", YLabel: "responses/s",
		Series: mixSeries, Bands: bands}.SVG())
	var cats []string
	vals := make([][]float64, 3)
	for _, st := range append([]Stats{r.Overall}, r.Instances...) {
		cats = append(cats, st.Name)
		vals[0], vals[1], vals[2] = append(vals[0], st.P50MS), append(vals[1], st.P90MS), append(vals[2], st.P99MS)
	}
	charts = append(charts, svgchart.Bars{ID: "latency", Title: "Latency percentiles per instance (ms)", YLabel: "ms",
		Categories: cats, SeriesName: []string{"p50", "p90", "p99"}, Values: vals}.SVG())
	cats, vals = nil, make([][]float64, 2)
	for _, ra := range r.RateLimit {
		cats = append(cats, ra.Policy)
		vals[0] = append(vals[0], float64(ra.MaxUp)/float64(ra.Limit))
		vals[1] = append(vals[1], float64(ra.MaxOutage)/float64(ra.Limit))
	}
	charts = append(charts, svgchart.Bars{ID: "accuracy", Title: "Rate limit accuracy: most admitted in one window ÷ limit", YLabel: "× limit",
		Categories: cats, SeriesName: []string{"Redis up", "window overlapping the outage"}, Values: vals, RefLine: 1, RefLabel: "limit"}.SVG())
	charts = append(charts, stalenessChart(r.Staleness))
	var cpu, rss []svgchart.Series
	for _, pr := range r.Processes {
		cpu = append(cpu, svgchart.Series{Name: pr.Name, X: pr.at, Y: pr.cpu})
		rss = append(rss, svgchart.Series{Name: pr.Name, X: pr.at, Y: pr.rss})
	}
	charts = append(charts, svgchart.Line{ID: "cpu", Title: "CPU per process (% of one core)", XLabel: "seconds", YLabel: "%", Series: cpu, Bands: bands}.SVG())
	charts = append(charts, svgchart.Line{ID: "memory", Title: "Resident memory per process (MiB)", XLabel: "seconds", YLabel: "MiB", Series: rss, Bands: bands}.SVG())
	out := make([]template.HTML, len(charts))
	for i, c := range charts {
		out[i] = template.HTML(c) // generated markup, every text escaped by svgchart
	}
	return out
}

// stalenessChart is a histogram of staleness on log-spaced bins.
func stalenessChart(s StalenessSummary) string {
	edges := []float64{0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, math.Inf(1)}
	label := func(i int) string {
		lo := 0.0
		if i > 0 {
			lo = edges[i-1]
		}
		if math.IsInf(edges[i], 1) {
			return "≥" + svgchart.Format(lo)
		}
		return "<" + svgchart.Format(edges[i])
	}
	count := func(ds []float64) []float64 {
		c := make([]float64, len(edges))
		for _, d := range ds {
			i, _ := slices.BinarySearch(edges, d)
			if i < len(edges) && edges[i] == d {
				i++
			}
			c[min(i, len(edges)-1)]++
		}
		return c
	}
	up, out := count(s.upMS), count(s.outMS)
	last := 0
	for i := range edges {
		if up[i] > 0 || out[i] > 0 {
			last = i
		}
	}
	var cats []string
	for i := 0; i <= last; i++ {
		cats = append(cats, label(i))
	}
	return svgchart.Bars{ID: "staleness", Title: "Cache staleness after a write on another instance (ms)", YLabel: "probes",
		Categories: cats, SeriesName: []string{"written while Redis was up", "written during the outage"},
		Values: [][]float64{up[:last+1], out[:last+1]}}.SVG()
}

var page = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>OmniGate fleet test</title>
<style>
body{font-family:sans-serif;max-width:1000px;margin:24px auto;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}.pass{color:#070;font-weight:bold}.fail{color:#a00;font-weight:bold}
svg.chart{display:block;margin:10px 0;border:1px solid #eee}
</style></head>
<body>
<h1>OmniGate fleet test</h1>
{{if .R.Passed}}<p class="pass">PASSED: every check held.</p>{{else}}<p class="fail">FAILED: {{len .R.Failures}} checks did not hold.</p>
<ul>{{range .R.Failures}}<li>{{.}}</li>{{end}}</ul>{{end}}
<p>{{.R.Setup.Instances}} gateway instances; backend {{.R.Setup.Backend}}; Redis: {{.R.Setup.Redis}}. {{.Users}}. Load for {{.Elapsed}} on {{.R.Setup.CPUs}} CPUs, started {{.Started}}.</p>
<div id="charts">
{{range .Charts}}{{.}}
{{end}}</div>
<h2>Summary</h2>
<pre style="white-space:pre-wrap;font-size:12px">{{.Markdown}}</pre>
<script>
// Marks the page with what the browser laid out, for the browser test.
window.addEventListener("load", function () {
  var n = 0;
  document.querySelectorAll("svg.chart").forEach(function (s) {
    var b = s.getBBox(), drawn = s.querySelectorAll(".series").length;
    s.setAttribute("data-rendered", Math.round(b.width) + "x" + Math.round(b.height) + ":" + drawn);
    if (b.width > 0 && b.height > 0 && drawn > 0) n++;
  });
  document.body.setAttribute("data-charts-rendered", String(n));
});
</script>
</body></html>
`))

// HTML writes the report as one self-contained page: the charts as inline
// SVG, no external resource.
func (r *Report) HTML(w io.Writer) error {
	var md strings.Builder
	r.Markdown(&md)
	return page.Execute(w, map[string]any{
		"R": r, "Charts": r.Charts(), "Markdown": md.String(), "Users": roleLine(r.Setup.Users),
		"Elapsed": time.Duration(r.Setup.ElapsedMS * 1e6).Round(time.Millisecond), "Started": r.Started.UTC().Format(time.RFC3339),
	})
}
