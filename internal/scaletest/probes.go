package scaletest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/omnigate/omnigate/internal/procgroup"
)

// staleness is one invalidation probe seen (or not) by one instance.
type staleness struct {
	at     time.Duration // when the write was acknowledged, since the load began
	writer int
	reader int
	delay  time.Duration // from the acknowledgement to the first read that was fresh
	// staleFor is from the acknowledgement to the start of the last read
	// that was still stale (0: none was): how long after the write the
	// instance served the old version, whatever each read then took.
	staleFor  time.Duration
	seen      bool
	firstRead bool  // the first read after the write was already fresh
	last      int16 // the status of the last read (0: transport error)
}

// prober writes a probe Patient on one instance and polls the others
// until they serve the new version.
type prober struct {
	c       *client
	u       *user
	o       *Options
	ds      *dataset
	mu      sync.Mutex
	results []staleness
	writes  int
	failed  []string
	// unavailable are when probe writes that were answered 503 with
	// Retry-After began and ended: not failures if the store was down
	// meanwhile.
	unavailable [][2]time.Duration
}

func (p *prober) record(s staleness) {
	p.mu.Lock()
	p.results = append(p.results, s)
	p.mu.Unlock()
}

func (p *prober) fail(format string, args ...any) {
	p.mu.Lock()
	if len(p.failed) < 20 {
		p.failed = append(p.failed, fmt.Sprintf(format, args...))
	}
	p.mu.Unlock()
}

// run probes until load ends; a probe in flight then finishes within
// ProbeTimeout, unless ctx (the whole run) ends first.
func (p *prober) run(ctx, load context.Context) {
	n := len(p.c.insts)
	if n < 2 {
		return
	}
	var tok token
	for k := 0; load.Err() == nil; k++ {
		if tok.value == "" {
			t, err := p.c.login(ctx, k%n, p.u)
			if err != nil {
				p.fail("probe login: %v", err)
				sleep(load, time.Second)
				continue
			}
			tok = t
		}
		writer := k % n
		id := p.ds.probes[writer]
		path := p.ds.base + "/Patient/" + id
		// Every instance reads the current version first, so that each
		// holds it in its cache when the write happens.
		for i := range n {
			p.c.do(ctx, i, opProbe, -1, http.MethodGet, path, nil, tok)
		}
		marker := fmt.Sprintf("v%d", k+1)
		body, _ := json.Marshal(patientResource(id, marker))
		res, err := p.c.do(ctx, writer, opProbe, -1, http.MethodPut, path, body, tok)
		if err == nil && res.status == http.StatusUnauthorized {
			// A config that refuses Redis-only sessions while Redis is
			// down (outage_sessions: reject): log in on the writer, in its
			// memory, and write again.
			if t, lerr := p.c.login(ctx, writer, p.u); lerr == nil {
				tok = t
				res, err = p.c.do(ctx, writer, opProbe, -1, http.MethodPut, path, body, tok)
			}
		}
		if err == nil && res.status == http.StatusServiceUnavailable && res.header.Get("Retry-After") != "" {
			p.mu.Lock()
			p.unavailable = append(p.unavailable, [2]time.Duration{res.start.Sub(p.c.rec.start), res.start.Add(res.dur).Sub(p.c.rec.start)})
			p.mu.Unlock()
			sleep(load, p.o.ProbeInterval)
			continue
		}
		if err != nil || res.status >= 300 {
			if err == nil && res.status == http.StatusUnauthorized {
				tok = token{}
			}
			p.fail("probe write on instance %d: status %d %v", writer+1, res.status, err)
			sleep(load, p.o.ProbeInterval)
			continue
		}
		p.mu.Lock()
		p.writes++
		p.mu.Unlock()
		p.c.acks.add(res, writer, p.c.rec.start)
		ack := res.start.Add(res.dur)
		var wg sync.WaitGroup
		for i := range n {
			if i == writer {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.poll(ctx, i, writer, path, `"`+marker+`"`, tok, ack)
			}()
		}
		wg.Wait()
		sleep(load, p.o.ProbeInterval)
	}
}

// poll reads path on instance i until the body holds marker. The pause
// between reads grows with the time waited (a tenth of it, 1–50 ms), so
// the resolution stays near 10%.
func (p *prober) poll(ctx context.Context, i, writer int, path, marker string, tok token, ack time.Time) {
	s := staleness{at: ack.Sub(p.c.rec.start), writer: writer, reader: i}
	deadline := ack.Add(p.o.ProbeTimeout)
	for first := true; time.Now().Before(deadline) && ctx.Err() == nil; first = false {
		res, err := p.c.do(ctx, i, opProbe, -1, http.MethodGet, path, nil, tok)
		s.last = int16(res.status)
		if err == nil && res.status == http.StatusOK && bytes.Contains(res.body, []byte(marker)) {
			s.seen, s.firstRead = true, first
			s.delay = max(0, res.start.Sub(ack))
			break
		}
		if err == nil && res.status == http.StatusOK {
			s.staleFor = max(0, res.start.Sub(ack))
		}
		if err == nil && res.status == http.StatusUnauthorized {
			// The session is not known here (during an outage): a
			// session of this instance's own lets the probe go on.
			if t, lerr := p.c.login(ctx, i, p.u); lerr == nil {
				tok = t
				continue
			}
		}
		sleep(ctx, min(max(time.Since(ack)/10, time.Millisecond), 50*time.Millisecond))
	}
	p.record(s)
}

// pingLog is one instance's redis component over time, polled from /ping.
type pingLog struct {
	mu     sync.Mutex
	points []pingPoint
}

func (l *pingLog) add(at time.Duration, status string) {
	l.mu.Lock()
	l.points = append(l.points, pingPoint{at, status})
	l.mu.Unlock()
}

type pingPoint struct {
	at     time.Duration
	status string // up, down, … or "" when /ping did not answer
}

// watch polls every instance's /ping every 25 ms until ctx ends,
// recording its redis component in logs and, when stores is not nil, its
// fhir-store component in stores.
func watch(ctx context.Context, insts []*instance, start time.Time, logs, stores []*pingLog) {
	var wg sync.WaitGroup
	for i, in := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(25 * time.Millisecond)
			defer tick.Stop()
			last, lastStore := "?", "?"
			for {
				st, store, _ := in.status(ctx)
				if ctx.Err() != nil {
					return
				}
				if st != last {
					logs[i].add(time.Since(start), st)
					last = st
				}
				if stores != nil && store != lastStore {
					stores[i].add(time.Since(start), store)
					lastStore = store
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	wg.Wait()
}

// procSample is one measurement of a process.
type procSample struct {
	at   time.Duration
	cpu  float64       // percent of one core since the previous sample
	used time.Duration // CPU time since the previous sample
	rssB int64
}

// sampler measures processes every interval until ctx ends. pids is read
// at each tick (a restarted Redis has a new pid).
type sampler struct {
	mu     sync.Mutex
	series map[string][]procSample
	// trees names the processes measured with their children (the
	// PostgreSQL postmaster and its backends).
	trees map[string]bool
}

func (s *sampler) run(ctx context.Context, start time.Time, interval time.Duration, pids func() map[string]int) {
	type prev struct {
		pid int
		cpu time.Duration
		at  time.Time
	}
	last := map[string]prev{}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		now := time.Now()
		for name, pid := range pids() {
			if pid == 0 {
				continue
			}
			read := procgroup.ReadStat
			if s.trees[name] {
				read = procgroup.TreeStat
			}
			st, err := read(pid)
			if err != nil {
				continue
			}
			cpu, rss := st.CPU, st.RSS
			p, ok := last[name]
			last[name] = prev{pid, cpu, now}
			if !ok || p.pid != pid {
				continue
			}
			pct := 100 * float64(cpu-p.cpu) / float64(now.Sub(p.at))
			s.mu.Lock()
			s.series[name] = append(s.series[name], procSample{now.Sub(start), pct, cpu - p.cpu, rss})
			s.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// scrapeMetrics sums the Prometheus series of interest from every
// instance's /metrics: metric name plus one label's value → total.
func scrapeMetrics(ctx context.Context, insts []*instance) map[string]float64 {
	want := map[string]string{
		"omnigate_ratelimit_decisions_total": "source",
		"omnigate_redis_failovers_total":     "",
		"omnigate_cache_requests_total":      "result",
		"omnigate_session_checks_total":      "result",
		"omnigate_session_logins_total":      "result",
		"omnigate_cache_invalidations_total": "",
	}
	out := map[string]float64{}
	for _, in := range insts {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, in.adminBase()+"/metrics", nil)
		resp, err := adminClient.Do(req)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "#") {
				continue
			}
			name, rest, _ := strings.Cut(line, "{")
			labels := ""
			if i := strings.LastIndexByte(rest, '}'); i >= 0 {
				labels, rest = rest[:i], rest[i+1:]
			} else {
				name, rest, _ = strings.Cut(line, " ")
			}
			label, ok := want[name]
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				continue
			}
			key := name
			if label != "" {
				key += "/" + labelValue(labels, label)
			}
			out[key] += v
		}
		resp.Body.Close()
	}
	return out
}

func labelValue(labels, name string) string {
	for _, kv := range strings.Split(labels, ",") {
		k, v, _ := strings.Cut(kv, "=")
		if strings.TrimSpace(k) == name {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// verifySessions asks every instance about every token the book kept:
// each must answer 200 on /auth/session.
func verifySessions(ctx context.Context, c *client, book *sessionBook) (checked, valid int, failures []string) {
	book.mu.Lock()
	defer book.mu.Unlock()
	for u, ts := range book.tokens {
		for _, t := range ts {
			for i := range c.insts {
				checked++
				res, err := c.do(ctx, i, opProbe, -1, http.MethodGet, "/auth/session", nil, t)
				if err == nil && res.status == http.StatusOK {
					valid++
					continue
				}
				if len(failures) < 10 {
					failures = append(failures, fmt.Sprintf("user #%d: session made on instance %d at %s refused by instance %d (status %d)",
						u+1, t.inst+1, ms(t.at), i+1, res.status))
				}
			}
		}
	}
	return checked, valid, failures
}

// witnessLog holds the witness sessions: each witness user logs in once,
// 50 ms apart, in the two seconds before Redis is stopped; after the run
// each session must be valid on every instance. Sessions made just before
// a primary dies may not have reached its replica: their age at the stop
// bounds what a failover can lose.
type witnessLog struct {
	mu     sync.Mutex
	tokens []token
	failed int
}

// witnessFrom is when the first witness logs in: two seconds before the
// stop (at 40% of the load without a failover), or at the start.
func (o *Options) witnessFrom() time.Duration {
	at := o.StopAt
	if o.NoFailover {
		at = o.Duration * 4 / 10
	}
	return max(0, at-time.Duration(witnessCount)*50*time.Millisecond)
}

func (w *witnessLog) run(ctx context.Context, c *client, witnesses []*user, start time.Time, from time.Duration) {
	bg := context.WithoutCancel(ctx)
	for i, u := range witnesses {
		if !sleepUntil(ctx, start.Add(from+time.Duration(i)*50*time.Millisecond)) {
			return
		}
		t, err := c.login(bg, i%len(c.insts), u)
		w.mu.Lock()
		if err != nil {
			w.failed++
		} else {
			w.tokens = append(w.tokens, t)
		}
		w.mu.Unlock()
	}
}

// witnessResult is one witness session after the run.
type witnessResult struct {
	at    time.Duration // login
	valid bool          // on every instance
}

func (w *witnessLog) verify(ctx context.Context, c *client) []witnessResult {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []witnessResult
	for _, t := range w.tokens {
		r := witnessResult{at: t.at, valid: true}
		for i := range c.insts {
			res, err := c.do(ctx, i, opProbe, -1, http.MethodGet, "/auth/session", nil, t)
			if err != nil || res.status != http.StatusOK {
				r.valid = false
			}
		}
		out = append(out, r)
	}
	return out
}
