package scaletest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// op is what a request does.
type op uint8

const (
	opLogin op = iota
	opRead
	opSearch
	opWrite
	opSession
	opProbe // the tool's own checks
	nOps
)

var opNames = [nOps]string{"login", "read", "search", "write", "session", "probe"}

// sample is one request as the client saw it.
type sample struct {
	at      time.Duration // start, since the load began
	dur     time.Duration
	status  int16 // 0: transport error
	retry   bool  // the answer had Retry-After
	inst    int8
	op      op
	user    int16         // index of the simulated user; -1 for the probe user
	policy  int16         // index into recorder.policies; -1 when not rate limited
	cross   bool          // the bearer token was made on another instance
	tokAt   time.Duration // when the bearer token was asked for (login start)
	tokEnd  time.Duration // when it was answered (the session exists by then)
	tokInst int8          // the instance that made it
}

// recorder collects samples and counts failures as they happen.
type recorder struct {
	start time.Time

	mu        sync.Mutex
	samples   []sample
	policyIdx map[string]int16
	policies  [][]policyItem

	requests  atomic.Int64 // simulated users' requests (the budget)
	fiveXX    atomic.Int64
	transport atomic.Int64
}

// policyItem is one item of a RateLimit-Policy field: q units per w.
type policyItem struct {
	name string
	q    int64
	w    time.Duration
}

// parsePolicy reads `"physician";q=600;w=5, "physician-burst";q=50;w=1`.
func parsePolicy(v string) []policyItem {
	var items []policyItem
	for _, part := range strings.Split(v, ",") {
		fields := strings.Split(strings.TrimSpace(part), ";")
		it := policyItem{name: strings.Trim(fields[0], `"`)}
		for _, f := range fields[1:] {
			k, val, _ := strings.Cut(strings.TrimSpace(f), "=")
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "q":
				it.q = n
			case "w":
				it.w = time.Duration(n) * time.Second
			}
		}
		if it.q > 0 && it.w > 0 {
			items = append(items, it)
		}
	}
	return items
}

func (r *recorder) add(s sample, policy string) {
	s.policy = -1
	r.mu.Lock()
	defer r.mu.Unlock()
	if policy != "" {
		idx, ok := r.policyIdx[policy]
		if !ok {
			idx = int16(len(r.policies))
			r.policyIdx[policy] = idx
			r.policies = append(r.policies, parsePolicy(policy))
		}
		s.policy = idx
	}
	r.samples = append(r.samples, s)
}

// client is the HTTP side of the run: every request of the tool goes
// through do, which records it.
type client struct {
	rec   *recorder
	insts []*instance
	http  *http.Client
	acks  *ackBook // acknowledged writes
}

type result struct {
	status int
	header http.Header
	body   []byte
	start  time.Time
	dur    time.Duration
}

// do sends one request to instance inst and records it. Transport errors
// are counted unless ctx has ended (the run is stopping).
func (c *client) do(ctx context.Context, inst int, o op, userIdx int, method, path string, body []byte, tok token) (result, error) {
	token, cross := tok.value, tok.value != "" && inst != tok.inst
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.insts[inst].base()+path, rd)
	if err != nil {
		return result{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
		if o == opLogin {
			req.Header.Set("Content-Type", "application/json")
		}
	}
	req.Header.Set("Accept", "application/fhir+json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res := result{start: time.Now()}
	resp, err := c.http.Do(req)
	if err == nil {
		res.body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	res.dur = time.Since(res.start)
	s := sample{at: res.start.Sub(c.rec.start), dur: res.dur, inst: int8(inst), op: o, user: int16(userIdx), cross: cross, tokAt: tok.at, tokEnd: tok.end, tokInst: int8(tok.inst)}
	if err != nil {
		if ctx.Err() != nil {
			return res, err
		}
		c.rec.transport.Add(1)
		c.rec.add(s, "")
		return res, err
	}
	res.status, res.header = resp.StatusCode, resp.Header
	s.status = int16(resp.StatusCode)
	s.retry = resp.Header.Get("Retry-After") != ""
	if resp.StatusCode >= 500 {
		c.rec.fiveXX.Add(1)
	}
	c.rec.add(s, resp.Header.Get("RateLimit-Policy"))
	return res, nil
}

// token is a session token and the instance that made it.
type token struct {
	value string // never logged or written anywhere
	inst  int
	at    time.Duration // the login's start
	end   time.Duration // its answer
}

func (c *client) login(ctx context.Context, inst int, u *user) (token, error) {
	body, _ := json.Marshal(map[string]string{"username": u.name, "password": u.password})
	res, err := c.do(ctx, inst, opLogin, u.idx, http.MethodPost, "/auth/login", body, token{})
	if err != nil {
		return token{}, err
	}
	if res.status != http.StatusOK {
		return token{}, fmt.Errorf("login of %s on instance %d: status %d", u.name, inst+1, res.status)
	}
	var t struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(res.body, &t); err != nil || t.Token == "" {
		return token{}, fmt.Errorf("login of %s on instance %d: no token in the answer", u.name, inst+1)
	}
	return token{value: t.Token, inst: inst, at: res.start.Sub(c.rec.start), end: res.start.Add(res.dur).Sub(c.rec.start)}, nil
}

// sessionBook keeps each user's most recent tokens, which must stay valid
// on every instance: the gateway keeps a user's 5 newest sessions and the
// book keeps fewer, so none of them can have been evicted.
type sessionBook struct {
	mu     sync.Mutex
	keep   int
	tokens map[int][]token
	logins atomic.Int64
	failed atomic.Int64
}

func (b *sessionBook) add(u int, t token) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ts := append(b.tokens[u], t)
	if len(ts) > b.keep {
		ts = ts[len(ts)-b.keep:]
	}
	b.tokens[u] = ts
}

// simulate is one simulated user: log in, then read, search and write on
// random instances until ctx ends or the request budget is spent.
func (c *client) simulate(ctx context.Context, o *Options, u *user, book *sessionBook, rng *rand.Rand, ds *dataset) {
	n := len(c.insts)
	var tok token
	for ctx.Err() == nil {
		if o.Requests > 0 && c.rec.requests.Load() >= o.Requests {
			return
		}
		if tok.value == "" || rng.Float64() < 0.01 {
			c.rec.requests.Add(1)
			t, err := c.login(ctx, rng.IntN(n), u)
			book.logins.Add(1)
			if err != nil {
				book.failed.Add(1)
				sleep(ctx, 100*time.Millisecond)
				continue
			}
			tok = t
			book.add(u.idx, t)
			continue
		}
		inst := rng.IntN(n)
		kind, method, path, body := pick(u, rng, ds)
		c.rec.requests.Add(1)
		res, err := c.do(ctx, inst, kind, u.idx, method, path, body, tok)
		switch {
		case err == nil && kind == opWrite && (res.status == http.StatusOK || res.status == http.StatusCreated):
			c.acks.add(res, inst, c.rec.start)
		case err != nil:
			sleep(ctx, 20*time.Millisecond)
		case res.status == http.StatusUnauthorized:
			// Log in again. The refused session stays in the book: a
			// session made in memory during an outage must be valid
			// everywhere once Redis is back.
			tok = token{}
		case res.status == http.StatusTooManyRequests:
			// A client that honours Retry-After in part: it comes back
			// soon, so the limit stays under pressure.
			wait := 200 * time.Millisecond
			if s, err := strconv.Atoi(res.header.Get("Retry-After")); err == nil && time.Duration(s)*time.Second < wait {
				wait = time.Duration(s) * time.Second
			}
			sleep(ctx, wait/2+time.Duration(rng.Int64N(int64(wait/2)+1)))
		}
		if o.ThinkTime > 0 {
			sleep(ctx, o.ThinkTime)
		}
	}
}

// pick chooses the next request of u: reads, searches and (for
// physicians and nurses) writes, and now and then a look at the session.
func pick(u *user, rng *rand.Rand, ds *dataset) (op, string, string, []byte) {
	pi := u.patientIdx
	if u.patient == "" {
		pi = rng.IntN(len(ds.patients))
	}
	pid := ds.patients[pi]
	x := rng.Float64()
	var read, search float64
	switch u.role {
	case "physician":
		read, search = 0.48, 0.83 // then 15% writes
	case "nurse":
		read, search = 0.50, 0.88 // then 10% writes
	default:
		read, search = 0.56, 0.98 // patients do not write
	}
	switch {
	case x < read:
		if rng.IntN(10) < 7 {
			return opRead, http.MethodGet, ds.base + "/Patient/" + pid, nil
		}
		return opRead, http.MethodGet, ds.base + "/Observation/" + ds.obs[pi][rng.IntN(len(ds.obs[pi]))], nil
	case x < search:
		if u.patient == "" && rng.IntN(10) < 3 {
			return opSearch, http.MethodGet, ds.base + "/Patient?family=Scaletest&_count=10", nil
		}
		return opSearch, http.MethodGet, ds.base + "/Observation?patient=Patient/" + pid + "&_count=10", nil
	case x < 0.98 && u.patient == "":
		if rng.IntN(10) < 8 {
			b, _ := json.Marshal(observation("Patient/"+pid, 50+rng.IntN(80)))
			return opWrite, http.MethodPost, ds.base + "/Observation", b
		}
		b, _ := json.Marshal(patientResource(pid, "Synthetic"+strconv.Itoa(pi+1)))
		return opWrite, http.MethodPut, ds.base + "/Patient/" + pid, b
	}
	return opSession, http.MethodGet, "/auth/session", nil
}

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// writeSamples writes every request as CSV (times in ms since the load
// began), for analyses the report does not make. It holds no token and no
// resource content.
func writeSamples(path string, rec *recorder, users []*user) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "at_ms,duration_ms,instance,op,status,user,role,cross_instance,session_made_at_ms,rate_limit_policy")
	rec.mu.Lock()
	policies := make([]string, len(rec.policies))
	for k, i := range rec.policyIdx {
		policies[i] = strings.ReplaceAll(k, `"`, "")
	}
	for _, s := range rec.samples {
		name, role, policy := "probe", probeRole, ""
		if s.user >= 0 {
			name, role = users[s.user].name, users[s.user].role
		}
		if s.policy >= 0 {
			policy = policies[s.policy]
		}
		fmt.Fprintf(w, "%.3f,%.3f,%d,%s,%d,%s,%s,%t,%.3f,\"%s\"\n", float64(s.at)/1e6, float64(s.dur)/1e6, s.inst+1, opNames[s.op],
			s.status, name, role, s.cross, float64(s.tokAt)/1e6, policy)
	}
	rec.mu.Unlock()
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
