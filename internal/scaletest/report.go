package scaletest

import (
	"cmp"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Report is what a run measured and what it found wrong. Durations in
// milliseconds are float64 fields named …MS.
type Report struct {
	Started   time.Time `json:"started"`
	Setup     Setup     `json:"setup"`
	Overall   Stats     `json:"overall"`
	Instances []Stats   `json:"instances"`
	Ops       []Stats   `json:"ops"`
	// Timeline has one point per second of the load.
	Timeline  []TimePoint      `json:"timeline"`
	RateLimit []RoleAccuracy   `json:"rate_limit"`
	Sessions  SessionSummary   `json:"sessions"`
	Staleness StalenessSummary `json:"staleness"`
	Failover  *FailoverSummary `json:"failover,omitempty"`
	// OffRedis are the spans in which at least one instance decided from
	// memory: the planned outage and any other seen on /ping.
	OffRedis  []Spell            `json:"off_redis"`
	Processes []ProcessSummary   `json:"processes"`
	Metrics   map[string]float64 `json:"metrics"`
	// StoreOutage is the PostgreSQL restart (Store postgres).
	StoreOutage *StoreOutageSummary `json:"store_outage,omitempty"`
	// Writes is the acknowledged-write check.
	Writes WriteCheck `json:"writes"`
	// CPUPerRequestUS is CPU time per request of the load, in µs, by
	// tier: the gateway instances together, the FHIR origin (SQLite
	// store), PostgreSQL (the postmaster and its backends), Redis (all its
	// processes).
	CPUPerRequestUS map[string]float64 `json:"cpu_per_request_us"`
	// Failures lists every check that did not hold; empty means passed.
	Failures []string `json:"failures"`
}

// Setup is what ran.
type Setup struct {
	Instances int    `json:"instances"`
	Redis     string `json:"redis"`
	RedisMode string `json:"redis_mode"`
	Backend   string `json:"backend"`
	// Store is sqlite or postgres; StoreDesc says what ran.
	Store      string           `json:"store"`
	StoreDesc  string           `json:"store_desc,omitempty"`
	Users      map[string]int   `json:"users"`
	Limits     map[string]int64 `json:"limits"`
	WindowMS   float64          `json:"window_ms"`
	Burst      int64            `json:"burst"`
	DurationMS float64          `json:"duration_ms"`
	ElapsedMS  float64          `json:"elapsed_ms"`
	CPUs       int              `json:"cpus"`
	// LoadAvg is the machine's 1-minute load average (from /proc/loadavg)
	// before and after the load: other work on the machine shows there.
	LoadAvg [2]float64 `json:"load_average"`
	Command string     `json:"command,omitempty"`
	Config  string     `json:"config,omitempty"`
	Version string     `json:"version,omitempty"`
}

// Stats are request counts and latency percentiles of a group of requests.
type Stats struct {
	Name      string         `json:"name"`
	Requests  int            `json:"requests"`
	PerSecond float64        `json:"per_second"`
	P50MS     float64        `json:"p50_ms"`
	P90MS     float64        `json:"p90_ms"`
	P99MS     float64        `json:"p99_ms"`
	MaxMS     float64        `json:"max_ms"`
	Status    map[string]int `json:"status"` // "200", "429", "transport error", …
}

// TimePoint is one second of the load (simulated users only).
type TimePoint struct {
	At          float64 `json:"at_s"`
	Total       int     `json:"total"`
	PerInstance []int   `json:"per_instance"`
	P50MS       float64 `json:"p50_ms"`
	P99MS       float64 `json:"p99_ms"`
	Limited     int     `json:"limited"`
	// The status mix: OK (2xx, 3xx), Refused (4xx other than 429),
	// Unavailable (503), Errors (other 5xx and transport errors).
	OK          int `json:"ok"`
	Refused     int `json:"refused"`
	Unavailable int `json:"unavailable"`
	Errors      int `json:"errors"`
}

// RoleAccuracy is the limit check of one role's policy item: for every
// user of the role and every span of the window's length, the requests
// admitted in that span (counted when they began and ended inside it)
// against the limit.
type RoleAccuracy struct {
	Role     string  `json:"role"`
	Policy   string  `json:"policy"`
	Limit    int64   `json:"limit"`
	WindowMS float64 `json:"window_ms"`
	Users    int     `json:"users"`
	Admitted int     `json:"admitted"`
	Limited  int     `json:"limited"`
	// MaxUp is the most admitted in one window while every instance was
	// on Redis; Violations counts such windows over the limit.
	MaxUp      int `json:"max_up"`
	WindowsUp  int `json:"windows_up"`
	Violations int `json:"violations"`
	// MaxOutage is the most admitted in a window that overlapped the
	// outage (decided partly or wholly from memory); Bound is what the
	// memory fallback promises for a window wholly inside the outage:
	// each instance admits limit/instances, rounded up.
	MaxOutage     int   `json:"max_outage"`
	WindowsOutage int   `json:"windows_outage"`
	Bound         int64 `json:"outage_bound"`
}

// SessionSummary is what happened to sessions.
type SessionSummary struct {
	Logins       int64 `json:"logins"`
	LoginsFailed int64 `json:"logins_failed"`
	// CrossRequests were made with a token from another instance;
	// CrossRejectedUp of them were refused (401) while Redis was up.
	// During the outage, CrossRejectedOutage were refused although their
	// session was made more than announceGrace before it (valid before
	// the outage: must be 0); CrossRejectedOutageLate were made in the
	// last announceGrace before it (the announcement may have died with
	// Redis); CrossRejectedOutageNew were made during it, in another
	// instance's memory (expected: nobody could hear of them).
	// CrossRejectedWriteBack were
	// refused after the outage but carried a session made in memory
	// during it, before its instance had written it back to Redis;
	// WriteBackLagMS is the latest such refusal after the outage's end.
	CrossRequests           int `json:"cross_requests"`
	CrossRejectedUp         int `json:"cross_rejected_up"`
	CrossRejectedOutage     int `json:"cross_rejected_outage"`
	CrossRejectedOutageLate int `json:"cross_rejected_outage_late"`
	CrossRejectedOutageNew  int `json:"cross_rejected_outage_new"`
	// OutageRefusals describe the first CrossRejectedOutage refusals.
	OutageRefusals         []string `json:"outage_refusals,omitempty"`
	CrossRejectedWriteBack int      `json:"cross_rejected_write_back"`
	WriteBackLagMS         float64  `json:"write_back_lag_ms"`
	// Final check: every kept token on every instance after the run.
	Checked  int      `json:"checked"`
	Valid    int      `json:"valid"`
	Problems []string `json:"problems,omitempty"`
	// LoginStatus counts login answers by status.
	LoginStatus map[string]int `json:"login_status"`
	// Witnesses are sessions made in the two seconds before the stop,
	// checked on every instance after the run; Lost were refused
	// somewhere, the oldest made LostOldestMS before the stop.
	Witnesses    int     `json:"witnesses"`
	WitnessLost  int     `json:"witnesses_lost"`
	LostOldestMS float64 `json:"lost_oldest_before_stop_ms"`
}

// StalenessSummary is the cache invalidation check.
type StalenessSummary struct {
	Writes int `json:"writes"`
	// OutageBoundMS is how long after a write made elsewhere during the
	// outage an instance may still serve the old version: the cache's
	// outage_max_age (or l1.ttl when longer); OutageStaleMS is the longest
	// it did (the start of its last stale read).
	OutageBoundMS float64        `json:"outage_bound_ms"`
	OutageStaleMS float64        `json:"outage_stale_ms"`
	Up            StalenessClass `json:"redis_up"`
	Outage        StalenessClass `json:"outage"`
	// StoreOutage are probes whose wait overlapped the store's restart
	// (their reads were answered 503 meanwhile); not held to a bound.
	StoreOutage StalenessClass `json:"store_outage"`
	// UpBoundMS bounds p99 and max of Up (Store postgres, docs/SCALING.md);
	// 0: not checked.
	UpBoundMS float64   `json:"up_bound_ms"`
	Errors    []string  `json:"errors,omitempty"`
	upMS      []float64 // for the chart
	outMS     []float64 // for the chart
}

// StalenessClass summarizes probes whose write was acknowledged while
// Redis was up, or during the outage.
type StalenessClass struct {
	Probes    int     `json:"probes"` // writes × other instances
	Seen      int     `json:"seen"`
	FirstRead int     `json:"first_read_fresh"`
	P50MS     float64 `json:"p50_ms"`
	P90MS     float64 `json:"p90_ms"`
	P99MS     float64 `json:"p99_ms"`
	MaxMS     float64 `json:"max_ms"`
}

// FailoverSummary is the Redis outage.
type FailoverSummary struct {
	Topology  string  `json:"topology"`
	StopAtMS  float64 `json:"stop_at_ms"`
	Stop      string  `json:"stop"`
	RestartMS float64 `json:"restart_at_ms"`
	Restart   string  `json:"restart"`
	// AllBackMS is when the last instance was seen back on Redis.
	AllBackMS float64 `json:"all_back_at_ms"`
	// BackAfterRestartMS: AllBack − restart (single node, Cluster);
	// BackAfterStopMS: AllBack − stop (the whole outage as instances saw
	// it; for Sentinel the failover time).
	BackAfterRestartMS float64            `json:"back_after_restart_ms"`
	BackAfterStopMS    float64            `json:"back_after_stop_ms"`
	Instances          []InstanceFailover `json:"instances"`
	// Requests answered during the outage, by status; FiveXX must be 0.
	OutageRequests  int            `json:"outage_requests"`
	OutageStatus    map[string]int `json:"outage_status"`
	FiveXX          int            `json:"five_xx"`
	MemoryDecisions float64        `json:"memory_decisions"`
}

// StoreOutageSummary is the PostgreSQL restart during the load.
type StoreOutageSummary struct {
	StopAtMS    float64 `json:"stop_at_ms"`
	RestartAtMS float64 `json:"restart_at_ms"`
	// ReadyMS is when the restarted server accepted connections;
	// AllBackMS when the last instance's fhir-store component was up.
	ReadyMS   float64 `json:"ready_at_ms"`
	AllBackMS float64 `json:"all_back_at_ms"`
	// Instances: the fhir-store component of each instance's /ping.
	Instances []InstanceFailover `json:"instances"`
	// Requests begun or answered between the stop and AllBack, by status;
	// Unavailable of them 503 with Retry-After (allowed), Failed any
	// other 5xx or a transport error (not allowed).
	Requests    int            `json:"requests"`
	Status      map[string]int `json:"status"`
	Unavailable int            `json:"unavailable"`
	Failed      int            `json:"failed"`
	Error       string         `json:"error,omitempty"`
}

// InstanceFailover is one instance's view of the outage, from its /ping.
type InstanceFailover struct {
	Instance int     `json:"instance"`
	DownMS   float64 `json:"down_detected_after_stop_ms"` // -1: never seen down
	BackMS   float64 `json:"back_after_restart_ms"`       // -1: never back
	BackAtMS float64 `json:"back_at_ms"`
}

// Spell is a span of the load in which at least one instance decided
// from memory.
type Spell struct {
	FromMS    float64 `json:"from_ms"`
	ToMS      float64 `json:"to_ms"`
	Planned   bool    `json:"planned"`
	Instances []int   `json:"instances"`
}

type spells []Spell

func (sp spells) contains(at time.Duration) bool {
	t := msf(at)
	for _, s := range sp {
		if t >= s.FromMS && t < s.ToMS {
			return true
		}
	}
	return false
}

// overlaps reports whether [a, b] meets a spell.
func (sp spells) overlaps(a, b time.Duration) bool {
	fa, fb := msf(a), msf(b)
	for _, s := range sp {
		if fb > s.FromMS && fa < s.ToMS {
			return true
		}
	}
	return false
}

// startOf is the start of the spell holding at.
func (sp spells) startOf(at time.Duration) time.Duration {
	t := msf(at)
	for _, s := range sp {
		if t >= s.FromMS && t < s.ToMS {
			return time.Duration(s.FromMS * 1e6)
		}
	}
	return at
}

// announceGrace is how long before an outage a session must have been
// made for every instance to have heard of it (a login's announcement is
// one pub/sub message, delivered in about a millisecond).
const announceGrace = 500 * time.Millisecond

// endOf is the end of the spell holding at.
func (sp spells) endOf(at time.Duration) time.Duration {
	t := msf(at)
	for _, s := range sp {
		if t >= s.FromMS && t < s.ToMS {
			return time.Duration(s.ToMS * 1e6)
		}
	}
	return at
}

// outages merges the instances' down spells (from /ping) with the planned
// outage, which starts at the stop (instances notice it a little later).
func outages(rd *runData, fo *FailoverSummary) spells {
	type iv struct {
		from, to time.Duration
		inst     int
		planned  bool
	}
	var ivs []iv
	if fo != nil {
		ivs = append(ivs, iv{rd.fo.stopAt, time.Duration(fo.AllBackMS * 1e6), 0, true})
	}
	for i, pl := range rd.pings {
		pl.mu.Lock()
		var down time.Duration = -1
		for _, p := range pl.points {
			switch {
			case p.status != "up" && p.status != "" && p.status != "?" && down < 0 && p.at > 0:
				down = p.at
			case p.status == "up" && down >= 0:
				ivs = append(ivs, iv{down, p.at, i + 1, false})
				down = -1
			}
		}
		if down >= 0 {
			ivs = append(ivs, iv{down, rd.elapsed + time.Hour, i + 1, false})
		}
		pl.mu.Unlock()
	}
	slices.SortFunc(ivs, func(a, b iv) int { return cmp.Compare(a.from, b.from) })
	var out spells
	for _, v := range ivs {
		n := len(out)
		if n > 0 && msf(v.from) <= out[n-1].ToMS {
			last := &out[n-1]
			last.ToMS = max(last.ToMS, msf(v.to))
			last.Planned = last.Planned || v.planned
			if v.inst > 0 && !slices.Contains(last.Instances, v.inst) {
				last.Instances = append(last.Instances, v.inst)
			}
			continue
		}
		sp := Spell{FromMS: msf(v.from), ToMS: msf(v.to), Planned: v.planned}
		if v.inst > 0 {
			sp.Instances = []int{v.inst}
		}
		out = append(out, sp)
	}
	for i := range out {
		slices.Sort(out[i].Instances)
	}
	return out
}

// ProcessSummary is one process's CPU and memory.
type ProcessSummary struct {
	Name string `json:"name"`
	// CPUSeconds is the CPU time the process used during the load.
	CPUSeconds float64   `json:"cpu_seconds"`
	CPUAvg     float64   `json:"cpu_avg_percent"`
	CPUMax     float64   `json:"cpu_max_percent"`
	RSSMaxMiB  float64   `json:"rss_max_mib"`
	RSSEndMiB  float64   `json:"rss_end_mib"`
	at         []float64 // seconds, for the charts
	cpu        []float64
	rss        []float64
}

// run data handed to analyze.
type runData struct {
	o         *Options
	topo      string
	elapsed   time.Duration
	rec       *recorder
	users     []*user
	book      *sessionBook
	prober    *prober
	pings     []*pingLog
	fo        *failoverLog
	procs     *sampler
	metrics   map[string]float64
	sessCheck struct {
		checked, valid int
		failures       []string
	}
	witnesses []witnessResult
	writes    WriteCheck
	acks      *ackBook
	// The store restart (Store postgres): nil store when none was made.
	store      *storeLog
	storePings []*pingLog
	storeDesc  string
	loadAvg    [2]float64
	// outageBound is how stale a read may be during the outage by the
	// fleet's cache config (0: not checked).
	outageBound time.Duration
}

// loadAvg reads the 1-minute load average (0 where /proc is missing).
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// failoverLog is when Redis was stopped and restarted.
type failoverLog struct {
	stopped, restarted bool
	stopAt, restartAt  time.Duration // when the stop began, when the restart began
	stopMsg, restMsg   string
	err                error
}

// userName names simulated user i.
func (rd *runData) userName(i int16) string {
	if i >= 0 && int(i) < len(rd.users) {
		return rd.users[i].name
	}
	return "the probe user"
}

func msf(d time.Duration) float64 { return math.Round(float64(d)/1e4) / 100 }

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func statusKey(s int16) string {
	if s == 0 {
		return "transport error"
	}
	return fmt.Sprint(s)
}

func stats(name string, ss []sample, elapsed time.Duration) Stats {
	st := Stats{Name: name, Requests: len(ss), Status: map[string]int{}}
	d := make([]time.Duration, 0, len(ss))
	for _, s := range ss {
		st.Status[statusKey(s.status)]++
		if s.status != 0 {
			d = append(d, s.dur)
		}
	}
	slices.Sort(d)
	if elapsed > 0 {
		st.PerSecond = math.Round(float64(len(ss)) / elapsed.Seconds())
	}
	st.P50MS, st.P90MS, st.P99MS = msf(percentile(d, .5)), msf(percentile(d, .9)), msf(percentile(d, .99))
	if len(d) > 0 {
		st.MaxMS = msf(d[len(d)-1])
	}
	return st
}

// analyze turns the run's data into the report and its failures.
func analyze(rd *runData) *Report {
	o := rd.o
	r := &Report{Started: rd.rec.start, Metrics: rd.metrics}
	users := map[string]int{}
	for _, u := range rd.users {
		users[u.role]++
	}
	r.Setup = Setup{Instances: o.Instances, Redis: rd.topo, RedisMode: o.Redis, Backend: o.Backend, Store: o.Store, StoreDesc: rd.storeDesc, Users: users,
		Limits: o.Limits, WindowMS: msf(o.Window), Burst: o.Burst, DurationMS: msf(o.Duration), ElapsedMS: msf(rd.elapsed),
		LoadAvg: rd.loadAvg, Command: o.Command, Version: o.Version, Config: o.Config}

	// The outage as the fleet saw it: from the stop until the last
	// instance was back on Redis.
	// Redis is "out" for the fleet while any instance decides from
	// memory: from the planned stop until the last instance is back, and
	// during any other spell an instance's /ping showed Redis down.
	if rd.fo != nil && rd.fo.stopped {
		r.Failover = analyzeFailover(rd)
	}
	out := outages(rd, r.Failover)
	r.OffRedis = out
	inOutage := out.contains
	var storeOut spells
	if rd.store != nil && rd.store.stopped {
		r.StoreOutage = analyzeStoreOutage(rd)
		storeOut = spells{{FromMS: r.StoreOutage.StopAtMS, ToMS: r.StoreOutage.AllBackMS, Planned: true}}
	}
	allowed := func(s sample) bool { return s.status == 503 && s.retry && storeOut.overlaps(s.at, s.at+s.dur) }
	var load []sample
	byInst := make([][]sample, o.Instances)
	byOp := make([][]sample, nOps)
	for _, s := range rd.rec.samples {
		byOp[s.op] = append(byOp[s.op], s)
		if s.op == opProbe {
			continue
		}
		load = append(load, s)
		byInst[s.inst] = append(byInst[s.inst], s)
	}
	r.Overall = stats("all instances", load, rd.elapsed)
	for i, ss := range byInst {
		r.Instances = append(r.Instances, stats(fmt.Sprintf("instance %d", i+1), ss, rd.elapsed))
	}
	for k, ss := range byOp {
		if len(ss) > 0 {
			r.Ops = append(r.Ops, stats(opNames[k], ss, rd.elapsed))
		}
	}
	r.Timeline = timeline(load, o.Instances, rd.elapsed)
	r.RateLimit = accuracy(rd, out)
	r.Sessions = sessionSummary(rd, out)
	r.Staleness = stalenessSummary(rd, inOutage, storeOut)
	r.Writes = rd.writes
	if r.StoreOutage != nil {
		stop := time.Duration(r.StoreOutage.StopAtMS * 1e6)
		for _, a := range rd.acksSeen() {
			switch {
			case storeOut.contains(a):
				r.Writes.DuringStoreOutage++
			case a < stop && a >= stop-2*time.Second:
				r.Writes.BeforeStoreStop++
			}
		}
		r.StoreOutage.Status = map[string]int{}
		for _, s := range rd.rec.samples {
			if !storeOut.overlaps(s.at, s.at+s.dur) {
				continue
			}
			r.StoreOutage.Requests++
			r.StoreOutage.Status[statusKey(s.status)]++
			switch {
			case allowed(s):
				r.StoreOutage.Unavailable++
			case s.status >= 500 || s.status == 0:
				r.StoreOutage.Failed++
			}
		}
	}
	r.Processes = processSummary(rd)
	r.CPUPerRequestUS = map[string]float64{}
	if n := len(load); n > 0 {
		for _, p := range r.Processes {
			tier := "redis"
			switch {
			case strings.HasPrefix(p.Name, "instance"):
				tier = "gateway"
			case p.Name == "fhir-origin" || p.Name == "postgres":
				tier = p.Name
			}
			r.CPUPerRequestUS[tier] += p.CPUSeconds * 1e6 / float64(n)
		}
		for k, v := range r.CPUPerRequestUS {
			r.CPUPerRequestUS[k] = math.Round(v*10) / 10
		}
	}
	if r.Failover != nil {
		r.Failover.OutageStatus = map[string]int{}
		for _, s := range rd.rec.samples {
			if inOutage(s.at) {
				r.Failover.OutageRequests++
				r.Failover.OutageStatus[statusKey(s.status)]++
				if s.status >= 500 && !allowed(s) {
					r.Failover.FiveXX++
				}
			}
		}
		r.Failover.MemoryDecisions = rd.metrics["omnigate_ratelimit_decisions_total/memory"]
	}
	r.Failures = failures(rd, r, allowed)
	return r
}

// acksSeen are when the acknowledged writes were answered.
func (rd *runData) acksSeen() []time.Duration {
	if rd.acks == nil {
		return nil
	}
	rd.acks.mu.Lock()
	defer rd.acks.mu.Unlock()
	out := make([]time.Duration, len(rd.acks.acks))
	for i, a := range rd.acks.acks {
		out[i] = a.at
	}
	return out
}

// analyzeStoreOutage reads the store restart and each instance's
// fhir-store component around it.
func analyzeStoreOutage(rd *runData) *StoreOutageSummary {
	sl := rd.store
	sl.mu.Lock()
	defer sl.mu.Unlock()
	so := &StoreOutageSummary{StopAtMS: msf(sl.stopAt), RestartAtMS: msf(sl.restartAt), ReadyMS: msf(sl.readyAt)}
	if sl.err != nil {
		so.Error = sl.err.Error()
	}
	// An instance is back once its component is up after the restart
	// began (a pool may look up between the stop and its first failed
	// call); never seen down, when the server was ready again.
	var allBack time.Duration
	so.Instances, allBack = downAndBack(rd.storePings, sl.stopAt, sl.restartAt, sl.restartAt, sl.readyAt, rd.elapsed)
	so.AllBackMS = msf(max(allBack, sl.readyAt))
	return so
}

func timeline(load []sample, n int, elapsed time.Duration) []TimePoint {
	secs := int(elapsed / time.Second) // whole seconds: a last partial one would look like a drop
	tl := make([]TimePoint, secs)
	lat := make([][]time.Duration, secs)
	for i := range tl {
		tl[i] = TimePoint{At: float64(i), PerInstance: make([]int, n)}
	}
	for _, s := range load {
		i := int(s.at / time.Second)
		if i < 0 || i >= secs {
			continue
		}
		tl[i].Total++
		tl[i].PerInstance[s.inst]++
		switch {
		case s.status == 429:
			tl[i].Limited++
		case s.status == 503:
			tl[i].Unavailable++
		case s.status == 0 || s.status >= 500:
			tl[i].Errors++
		case s.status >= 400:
			tl[i].Refused++
		default:
			tl[i].OK++
		}
		if s.status != 0 {
			lat[i] = append(lat[i], s.dur)
		}
	}
	for i := range tl {
		slices.Sort(lat[i])
		tl[i].P50MS, tl[i].P99MS = msf(percentile(lat[i], .5)), msf(percentile(lat[i], .99))
	}
	return tl
}

// accuracy checks every (user, policy item) for windows over the limit.
func accuracy(rd *runData, outage spells) []RoleAccuracy {
	type key struct {
		role, item string
	}
	roles := map[key]*RoleAccuracy{}
	usersOf := map[key]map[int16]bool{}
	type span struct{ from, to time.Duration }
	admitted := map[int16]map[int16][]span{} // user → policy → spans
	for _, s := range rd.rec.samples {
		if s.user < 0 || s.policy < 0 || s.status == 0 {
			continue
		}
		if admitted[s.user] == nil {
			admitted[s.user] = map[int16][]span{}
		}
		if s.status == 429 {
			for _, it := range rd.rec.policies[s.policy] {
				k := key{rd.users[s.user].role, it.name}
				if roles[k] == nil {
					roles[k] = &RoleAccuracy{Role: k.role, Policy: it.name, Limit: it.q, WindowMS: msf(it.w)}
				}
				roles[k].Limited++
			}
			continue
		}
		admitted[s.user][s.policy] = append(admitted[s.user][s.policy], span{s.at, s.at + s.dur})
	}
	n := int64(rd.o.Instances)
	for u, byPolicy := range admitted {
		for p, spans := range byPolicy {
			slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.from, b.from) })
			for _, it := range rd.rec.policies[p] {
				k := key{rd.users[u].role, it.name}
				ra := roles[k]
				if ra == nil {
					ra = &RoleAccuracy{Role: k.role, Policy: it.name, Limit: it.q, WindowMS: msf(it.w)}
					roles[k] = ra
				}
				ra.Bound = (it.q + n - 1) / n * n
				if usersOf[k] == nil {
					usersOf[k] = map[int16]bool{}
				}
				usersOf[k][u] = true
				ra.Admitted += len(spans)
				for i, first := range spans {
					a, b := first.from, first.from+it.w
					count := 0
					for j := i; j < len(spans) && spans[j].from <= b; j++ {
						if spans[j].to <= b {
							count++
						}
					}
					if outage.overlaps(a, b) {
						ra.WindowsOutage++
						ra.MaxOutage = max(ra.MaxOutage, count)
						continue
					}
					ra.WindowsUp++
					ra.MaxUp = max(ra.MaxUp, count)
					if int64(count) > it.q {
						ra.Violations++
					}
				}
			}
		}
	}
	var out []RoleAccuracy
	for k, ra := range roles {
		ra.Users = len(usersOf[k])
		out = append(out, *ra)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Role != out[j].Role {
			return out[i].Role < out[j].Role
		}
		return out[i].Policy < out[j].Policy
	})
	return out
}

func sessionSummary(rd *runData, out spells) SessionSummary {
	ss := SessionSummary{Logins: rd.book.logins.Load(), LoginsFailed: rd.book.failed.Load(),
		Checked: rd.sessCheck.checked, Valid: rd.sessCheck.valid, Problems: rd.sessCheck.failures,
		LoginStatus: map[string]int{}, Witnesses: len(rd.witnesses)}
	stop := rd.o.witnessFrom() + time.Duration(witnessCount)*50*time.Millisecond
	if rd.fo != nil {
		stop = rd.fo.stopAt
	}
	for _, w := range rd.witnesses {
		if !w.valid {
			ss.WitnessLost++
			ss.LostOldestMS = max(ss.LostOldestMS, msf(stop-w.at))
		}
	}
	for _, s := range rd.rec.samples {
		if s.op == opLogin {
			ss.LoginStatus[statusKey(s.status)]++
		}
		if s.user < 0 || !s.cross || s.status == 0 || s.op == opLogin {
			continue
		}
		ss.CrossRequests++
		if s.status == 401 {
			switch {
			case out.contains(s.at):
				// The session exists once its login is answered: the
				// login's end tells whether it was made before the outage.
				switch start := out.startOf(s.at); {
				case s.tokAt >= start:
					ss.CrossRejectedOutageNew++
				case s.tokEnd >= start-announceGrace:
					ss.CrossRejectedOutageLate++
				default:
					ss.CrossRejectedOutage++
					if len(ss.OutageRefusals) < 10 {
						ss.OutageRefusals = append(ss.OutageRefusals, fmt.Sprintf("at %s on instance %d: %s's session made on instance %d, login answered at %s (outage from %s)",
							fms(msf(s.at)), s.inst+1, rd.userName(s.user), s.tokInst+1, fms(msf(s.tokEnd)), fms(msf(start))))
					}
				}
			case out.contains(s.tokAt):
				ss.CrossRejectedWriteBack++
				ss.WriteBackLagMS = max(ss.WriteBackLagMS, msf(s.at+s.dur-out.endOf(s.tokAt)))
			default:
				ss.CrossRejectedUp++
			}
		}
	}
	return ss
}

func class(delays []time.Duration, probes, seen, first int) StalenessClass {
	slices.Sort(delays)
	c := StalenessClass{Probes: probes, Seen: seen, FirstRead: first,
		P50MS: msf(percentile(delays, .5)), P90MS: msf(percentile(delays, .9)), P99MS: msf(percentile(delays, .99))}
	if len(delays) > 0 {
		c.MaxMS = msf(delays[len(delays)-1])
	}
	return c
}

func stalenessSummary(rd *runData, inOutage func(time.Duration) bool, storeOut spells) StalenessSummary {
	p := rd.prober
	p.mu.Lock()
	defer p.mu.Unlock()
	var up, out, store []time.Duration
	var nUp, nOut, seenUp, seenOut, firstUp, firstOut, nStore, seenStore, firstStore int
	var staleOut time.Duration
	var unseen []string
	for _, s := range p.results {
		end := s.at + rd.o.ProbeTimeout
		if s.seen {
			end = s.at + s.delay
		}
		if !s.seen && len(unseen) < 10 {
			unseen = append(unseen, fmt.Sprintf("write on instance %d acknowledged at %s not seen by instance %d (last read: status %d)",
				s.writer+1, fms(msf(s.at)), s.reader+1, s.last))
		}
		if storeOut.overlaps(s.at, end) {
			nStore++
			if s.seen {
				seenStore++
				store = append(store, s.delay)
				if s.firstRead {
					firstStore++
				}
			}
			continue
		}
		o := inOutage(s.at)
		if o {
			nOut++
			staleOut = max(staleOut, s.staleFor)
		} else {
			nUp++
		}
		if !s.seen {
			continue
		}
		if o {
			seenOut++
			out = append(out, s.delay)
			if s.firstRead {
				firstOut++
			}
		} else {
			seenUp++
			up = append(up, s.delay)
			if s.firstRead {
				firstUp++
			}
		}
	}
	sum := StalenessSummary{Writes: p.writes, Up: class(up, nUp, seenUp, firstUp), Outage: class(out, nOut, seenOut, firstOut),
		StoreOutage:   class(store, nStore, seenStore, firstStore),
		OutageBoundMS: msf(rd.outageBound), OutageStaleMS: msf(staleOut),
		Errors: append(slices.Clone(p.failed), unseen...)}
	if rd.o.Store == StorePostgres {
		sum.UpBoundMS = msf(storeStaleBound)
	}
	for _, w := range p.unavailable {
		if !storeOut.overlaps(w[0], w[1]) {
			sum.Errors = append(sum.Errors, fmt.Sprintf("probe write at %s answered 503 while the store was up", fms(msf(w[0]))))
		}
	}
	for _, d := range up {
		sum.upMS = append(sum.upMS, msf(d))
	}
	for _, d := range out {
		sum.outMS = append(sum.outMS, msf(d))
	}
	return sum
}

func analyzeFailover(rd *runData) *FailoverSummary {
	fo := rd.fo
	f := &FailoverSummary{Topology: rd.topo, StopAtMS: msf(fo.stopAt), Stop: fo.stopMsg,
		RestartMS: msf(fo.restartAt), Restart: fo.restMsg}
	// Never seen down (the outage was shorter than a poll): it was back
	// as soon as the stop ended.
	var allBack time.Duration
	f.Instances, allBack = downAndBack(rd.pings, fo.stopAt, 0, fo.restartAt, fo.stopAt, rd.elapsed)
	f.AllBackMS = msf(allBack)
	f.BackAfterRestartMS = msf(allBack - fo.restartAt)
	f.BackAfterStopMS = msf(allBack - fo.stopAt)
	return f
}

// downAndBack reads each instance's component log after a stop at stop:
// when it was first seen down, and when up again (not before upFrom),
// with BackMS counted from restart. An instance never seen down counts as
// back at unseen. allBack is the latest return, past elapsed when an
// instance never came back.
func downAndBack(logs []*pingLog, stop, upFrom, restart, unseen, elapsed time.Duration) (out []InstanceFailover, allBack time.Duration) {
	for i, pl := range logs {
		pl.mu.Lock()
		inf := InstanceFailover{Instance: i + 1, DownMS: -1, BackMS: -1, BackAtMS: -1}
		var down time.Duration = -1
		for _, p := range pl.points {
			if p.at < stop {
				continue
			}
			if down < 0 && p.status != "up" {
				down = p.at
				inf.DownMS = msf(p.at - stop)
			}
			if down >= 0 && p.status == "up" && p.at >= upFrom {
				inf.BackAtMS, inf.BackMS = msf(p.at), msf(p.at-restart)
				allBack = max(allBack, p.at)
				break
			}
		}
		if down < 0 {
			inf.BackAtMS = msf(unseen)
			allBack = max(allBack, unseen)
		}
		if inf.BackAtMS < 0 {
			allBack = elapsed + time.Hour // never back: the outage lasts
		}
		pl.mu.Unlock()
		out = append(out, inf)
	}
	return out, allBack
}

func processSummary(rd *runData) []ProcessSummary {
	rd.procs.mu.Lock()
	defer rd.procs.mu.Unlock()
	var out []ProcessSummary
	for name, ss := range rd.procs.series {
		p := ProcessSummary{Name: name}
		var sum float64
		var used time.Duration
		for _, s := range ss {
			sum += s.cpu
			used += s.used
			p.CPUMax = max(p.CPUMax, s.cpu)
			mib := float64(s.rssB) / (1 << 20)
			p.RSSMaxMiB = max(p.RSSMaxMiB, mib)
			p.at, p.cpu, p.rss = append(p.at, s.at.Seconds()), append(p.cpu, s.cpu), append(p.rss, mib)
		}
		if len(ss) > 0 {
			p.CPUAvg = sum / float64(len(ss))
			p.RSSEndMiB = float64(ss[len(ss)-1].rssB) / (1 << 20)
		}
		p.CPUSeconds = math.Round(used.Seconds()*100) / 100
		p.CPUAvg, p.CPUMax = math.Round(p.CPUAvg*10)/10, math.Round(p.CPUMax*10)/10
		p.RSSMaxMiB, p.RSSEndMiB = math.Round(p.RSSMaxMiB*10)/10, math.Round(p.RSSEndMiB*10)/10
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// failures lists every property the run must hold and did not.
func failures(rd *runData, r *Report, allowed func(sample) bool) []string {
	var f []string
	fiveXX, unavailable := 0, 0
	for _, s := range rd.rec.samples {
		switch {
		case allowed(s):
			unavailable++
		case s.status >= 500:
			fiveXX++
		}
	}
	if fiveXX > 0 {
		what := ""
		if unavailable > 0 {
			what = fmt.Sprintf(" other than the %d 503 with Retry-After while the store was down", unavailable)
		}
		f = append(f, fmt.Sprintf("%d responses with a 5xx status%s (want 0)", fiveXX, what))
	}
	if n := rd.rec.transport.Load(); n > 0 {
		f = append(f, fmt.Sprintf("%d requests failed without a response (connection errors)", n))
	}
	for _, ra := range r.RateLimit {
		if ra.Violations > 0 {
			f = append(f, fmt.Sprintf("rate limit %s (%d per %s) exceeded in %d windows while on Redis (most admitted: %d)",
				ra.Policy, ra.Limit, time.Duration(ra.WindowMS*1e6), ra.Violations, ra.MaxUp))
		}
	}
	if r.Overall.Status["429"] == 0 && len(r.RateLimit) > 0 {
		f = append(f, "no request was limited: the limits were never reached, so their accuracy was not tested (raise the load or lower the limits)")
	}
	s := r.Sessions
	if s.CrossRejectedUp > 0 {
		f = append(f, fmt.Sprintf("%d requests with a session made on another instance were refused (401) while Redis was up", s.CrossRejectedUp))
	}
	if s.CrossRejectedOutage > 0 {
		f = append(f, fmt.Sprintf("%d requests with a session made before the outage were refused (401) during it: users were logged out by the outage (want 0; is outage_sessions: reject, or the session local cache off?); %s",
			s.CrossRejectedOutage, strings.Join(s.OutageRefusals, "; ")))
	}
	if s.CrossRequests == 0 && rd.o.Instances > 1 {
		f = append(f, "no session was used on an instance other than the one that made it")
	}
	if s.Checked != s.Valid {
		f = append(f, fmt.Sprintf("%d of %d session checks after the run failed: sessions were lost", s.Checked-s.Valid, s.Checked))
	}
	if s.Logins == 0 {
		f = append(f, "no login")
	}
	if s.Witnesses < witnessCount && rd.fo != nil {
		f = append(f, fmt.Sprintf("only %d of %d witness sessions were made", s.Witnesses, witnessCount))
	}
	// A killed primary may not have passed its last writes to the replica
	// (asynchronous replication), and a killed single node loses up to a
	// second of its append-only file: there, sessions made in the last
	// second before the stop may be lost. Nothing else may.
	lossBound := 0.0
	if rd.o.Kill || rd.o.Redis == RedisSentinel {
		lossBound = 1000
	}
	if s.WitnessLost > 0 && s.LostOldestMS > lossBound {
		f = append(f, fmt.Sprintf("%d of %d sessions made before the stop were lost, the oldest made %s before it", s.WitnessLost, s.Witnesses, time.Duration(s.LostOldestMS*1e6)))
	}
	st := r.Staleness
	if rd.o.Instances > 1 {
		if st.Writes == 0 {
			f = append(f, "no invalidation probe write succeeded")
		}
		if miss := st.Up.Probes - st.Up.Seen + st.Outage.Probes - st.Outage.Seen; miss > 0 {
			f = append(f, fmt.Sprintf("%d invalidation probes were not seen within %s", miss, rd.o.ProbeTimeout))
		}
		if st.OutageBoundMS > 0 && st.OutageStaleMS > st.OutageBoundMS {
			f = append(f, fmt.Sprintf("a write during the outage was served stale for %s by another instance, over the bound of %s (the cache's outage_max_age)",
				time.Duration(st.OutageStaleMS*1e6).Round(time.Millisecond), time.Duration(st.OutageBoundMS*1e6)))
		}
	}
	if st.UpBoundMS > 0 && (st.Up.P99MS > st.UpBoundMS || st.Up.MaxMS > st.UpBoundMS) {
		f = append(f, fmt.Sprintf("cross-instance staleness while Redis and the store were up: p99 %s, max %s, over the bound of %s",
			fms(st.Up.P99MS), fms(st.Up.MaxMS), fms(st.UpBoundMS)))
	}
	for _, e := range st.Errors {
		f = append(f, "invalidation probe: "+e)
	}
	w := r.Writes
	if w.Missing > 0 {
		f = append(f, fmt.Sprintf("%d of %d acknowledged writes missing after the run: %s", w.Missing, w.Checked, strings.Join(w.Problems, "; ")))
	}
	if w.NoVersion > 0 {
		f = append(f, fmt.Sprintf("%d acknowledged writes named no version (not checkable)", w.NoVersion))
	}
	if w.Checked == 0 && rd.o.Backend == BackendFHIR {
		f = append(f, "no write was acknowledged: the acknowledged-write check tested nothing")
	}
	if so := r.StoreOutage; so != nil {
		if so.Error != "" {
			f = append(f, "store restart: "+so.Error)
		}
		if so.Failed > 0 {
			f = append(f, fmt.Sprintf("%d requests during the store restart failed other than with 503 and Retry-After (%s)", so.Failed, statusLine(so.Status)))
		}
		for _, in := range so.Instances {
			if in.BackAtMS < 0 {
				f = append(f, fmt.Sprintf("instance %d was not back on the store by the end", in.Instance))
			}
		}
		if so.Unavailable == 0 {
			f = append(f, "no request was answered 503 while the store was down: the outage was not seen")
		}
	}
	if fo := r.Failover; fo != nil {
		if rd.fo.err != nil {
			f = append(f, "failover: "+rd.fo.err.Error())
		}
		for _, in := range fo.Instances {
			if in.BackAtMS < 0 {
				f = append(f, fmt.Sprintf("instance %d was not back on Redis by the end", in.Instance))
			}
		}
		if fo.OutageRequests > 0 && fo.MemoryDecisions == 0 && rd.o.Redis != RedisSentinel {
			f = append(f, "no rate limit decision was made from memory during the outage")
		}
	}
	return f
}
