package scaletest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	_ "github.com/omnigate/omnigate/builtin/audit"
	"github.com/omnigate/omnigate/builtin/authz"
	_ "github.com/omnigate/omnigate/builtin/cache"
	_ "github.com/omnigate/omnigate/builtin/fhir"
	_ "github.com/omnigate/omnigate/builtin/ratelimit"
	_ "github.com/omnigate/omnigate/builtin/session"
	"github.com/omnigate/omnigate/gateway"
)

func TestParsePolicy(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []policyItem
	}{
		{`"physician";q=600;w=5`, []policyItem{{"physician", 600, 5 * time.Second}}},
		{`"nurse";q=400;w=900, "nurse-burst";q=50;w=1`, []policyItem{{"nurse", 400, 900 * time.Second}, {"nurse-burst", 50, time.Second}}},
		{`"x";q=abc;w=1`, nil},
		{``, nil},
	} {
		got := parsePolicy(tc.in)
		if len(got) != len(tc.want) {
			t.Fatalf("parsePolicy(%q) = %v, want %v", tc.in, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("parsePolicy(%q)[%d] = %v, want %v", tc.in, i, got[i], tc.want[i])
			}
		}
	}
}

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		err  string
	}{
		{"defaults", Options{}, ""},
		{"bad redis", Options{Redis: "memcached"}, "unknown redis mode"},
		{"url without a URL", Options{Redis: RedisURL}, "needs a URL"},
		{"restart before stop", Options{StopAt: 30 * time.Second, RestartAt: 10 * time.Second}, "failover times"},
		{"unknown role", Options{Limits: map[string]int64{"admin": 5}}, "unknown role"},
		{"bad backend", Options{Backend: "sql"}, "unknown backend"},
		{"short window", Options{Window: time.Millisecond}, "too short"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.setDefaults()
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tc.o.Instances != 3 || tc.o.Redis != RedisSingle || tc.o.StopAt != 24*time.Second || tc.o.RestartAt != 36*time.Second || tc.o.Limits["patient"] != 100 {
					t.Errorf("defaults: %+v", tc.o)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// TestGeneratedConfigLoads checks that the config the fleet runs is one
// the gateway accepts, for every Redis mode.
func TestGeneratedConfigLoads(t *testing.T) {
	for _, redis := range []string{
		"",
		"  url: redis://127.0.0.1:7001",
		"  cluster: {addrs: [127.0.0.1:7001, 127.0.0.1:7002, 127.0.0.1:7003]}",
		"  sentinel: {master_name: omnigate, addrs: [127.0.0.1:26001, 127.0.0.1:26002]}",
	} {
		o := Options{Backend: BackendUpstream, Burst: 20}
		if err := o.setDefaults(); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		path, err := writeConfig(dir, &o, redis, "http://127.0.0.1:9", "")
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := gateway.Load(path)
		if err != nil {
			b, _ := os.ReadFile(path)
			t.Fatalf("generated config rejected: %v\n%s", err, b)
		}
		if len(cfg.Routes) != 2 || cfg.Redis.Enabled() != (redis != "") {
			t.Errorf("routes %d, redis %v", len(cfg.Routes), cfg.Redis.Enabled())
		}
	}
}

func TestUsers(t *testing.T) {
	o := Options{Physicians: 2, Nurses: 1, Patients: 2}
	o.setDefaults()
	path := filepath.Join(t.TempDir(), "users.yaml")
	users, probe, witnesses, err := makeUsers(path, &o, staticDataset(20, 3))
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 5 || probe.role != probeRole || len(witnesses) != witnessCount {
		t.Fatalf("users %d, probe %+v", len(users), probe)
	}
	b, _ := os.ReadFile(path)
	for _, u := range append(append(users, probe), witnesses...) {
		if !strings.Contains(string(b), "username: "+u.name) {
			t.Errorf("%s missing", u.name)
		}
		if strings.Contains(string(b), u.password) {
			t.Errorf("password of %s in the clear", u.name)
		}
	}
	if users[3].patient != "st-p1" || users[4].patient != "st-p2" || users[4].patientIdx != 1 {
		t.Errorf("patients %q %q", users[3].patient, users[4].patient)
	}
}

func TestDataset(t *testing.T) {
	ds := staticDataset(2, 2)
	b := string(ds.putBundle())
	for _, w := range []string{`"type":"transaction"`, `"url":"Patient/st-p2"`, `"url":"Observation/st-o2-3"`, `"url":"Patient/st-probe-2"`, `"reference":"Patient/st-p1"`} {
		if !strings.Contains(b, w) {
			t.Errorf("seed bundle lacks %s", w)
		}
	}
	st, err := startStandIn([]byte(b), "/fhir/R4")
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if len(st.res) != 2+6+2 {
		t.Errorf("stand-in holds %d resources", len(st.res))
	}
	if u := uuid(); !regexp.MustCompile(`^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(u) {
		t.Errorf("uuid %s", u)
	}
}

// TestSeedServer answers the transaction like a FHIR server (ids chosen
// by the server, in entry order) and checks the ids learned.
func TestSeedServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			Type  string `json:"type"`
			Entry []struct {
				FullURL  string         `json:"fullUrl"`
				Resource map[string]any `json:"resource"`
				Request  struct{ Method, URL string }
			} `json:"entry"`
		}
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil || b.Type != "transaction" || r.URL.Path != "/fhir/R4" {
			http.Error(w, "bad", 400)
			return
		}
		var out []any
		for i, e := range b.Entry {
			if e.Request.Method != "POST" || !strings.HasPrefix(e.FullURL, "urn:uuid:") || e.Resource["id"] != nil {
				http.Error(w, "bad entry", 400)
				return
			}
			out = append(out, map[string]any{"response": map[string]any{"status": "201 Created",
				"location": fmt.Sprintf("%s/id%d/_history/1", e.Request.URL, i)}})
		}
		json.NewEncoder(w).Encode(map[string]any{"resourceType": "Bundle", "type": "transaction-response", "entry": out})
	}))
	defer srv.Close()
	ds, err := seedServer(context.Background(), srv.URL, "/fhir/R4", 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if ds.base != "/fhir/R4" || len(ds.patients) != 2 || ds.patients[1] != "id4" || len(ds.obs[1]) != 3 || ds.obs[1][2] != "id7" || len(ds.probes) != 3 || ds.probes[0] != "id8" {
		t.Errorf("dataset %+v", ds)
	}
}

// fakeRun is a run with synthetic samples: two instances, two users of
// one role limited to 3 per second, an outage from 4 s to 6 s.
func fakeRun(extraAdmitted ...time.Duration) *runData {
	o := &Options{Instances: 2, Backend: BackendUpstream, Duration: 10 * time.Second}
	o.setDefaults()
	rec := &recorder{start: time.Unix(1700000000, 0), policyIdx: map[string]int16{}}
	users := []*user{{idx: 0, name: "a", role: "patient"}, {idx: 1, name: "b", role: "patient"}}
	add := func(at time.Duration, user int, status int16, inst int) {
		rec.add(sample{at: at, dur: 10 * time.Millisecond, status: status, inst: int8(inst), op: opRead, user: int16(user), cross: inst == 1, tokAt: 0}, `"patient";q=3;w=1`)
	}
	for s := range 10 {
		for k := range 3 { // 3 per second per user: at the limit
			at := time.Duration(s)*time.Second + time.Duration(k)*300*time.Millisecond
			add(at, 0, 200, k%2)
			add(at+5*time.Millisecond, 1, 200, (k+1)%2)
		}
		add(time.Duration(s)*time.Second+950*time.Millisecond, 0, 429, 0)
	}
	for _, at := range extraAdmitted {
		add(at, 0, 200, 0)
	}
	book := &sessionBook{keep: 3, tokens: map[int][]token{}}
	book.logins.Add(4)
	pr := &prober{o: o, writes: 3, results: []staleness{
		{at: 1 * time.Second, reader: 1, seen: true, firstRead: true, delay: 200 * time.Microsecond},
		{at: 2 * time.Second, reader: 0, seen: true, delay: 3 * time.Millisecond},
		{at: 5 * time.Second, reader: 1, seen: true, delay: 1500 * time.Millisecond, staleFor: 1400 * time.Millisecond},
	}}
	pings := []*pingLog{
		{points: []pingPoint{{0, "up"}, {4050 * time.Millisecond, "down"}, {6200 * time.Millisecond, "up"}}},
		{points: []pingPoint{{0, "up"}, {4030 * time.Millisecond, "down"}, {6400 * time.Millisecond, "up"}}},
	}
	procs := &sampler{series: map[string][]procSample{
		"instance 1": {{time.Second, 20, 200 * time.Millisecond, 30 << 20}, {2 * time.Second, 30, 300 * time.Millisecond, 31 << 20}},
		"instance 2": {{time.Second, 25, 250 * time.Millisecond, 32 << 20}, {2 * time.Second, 35, 350 * time.Millisecond, 33 << 20}},
	}}
	rd := &runData{o: o, topo: "test", elapsed: 10 * time.Second, rec: rec, users: users, book: book, prober: pr,
		pings: pings, procs: procs, metrics: map[string]float64{"omnigate_ratelimit_decisions_total/memory": 12},
		fo: &failoverLog{stopped: true, restarted: true, stopAt: 4 * time.Second, restartAt: 6 * time.Second, stopMsg: "stopped", restMsg: "restarted"}}
	rd.sessCheck.checked, rd.sessCheck.valid = 6, 6
	for i := range witnessCount {
		rd.witnesses = append(rd.witnesses, witnessResult{at: 2*time.Second + time.Duration(i)*50*time.Millisecond, valid: true})
	}
	return rd
}

func TestAnalyze(t *testing.T) {
	for _, tc := range []struct {
		name       string
		extra      []time.Duration
		violations int
		maxOutage  int
		failures   []string
	}{
		{"at the limit", nil, 0, 3, nil},
		// One more admitted at 1.5 s: the windows starting at 0.6, 1.0, 1.3
		// and 1.5 s hold four.
		{"over while up", []time.Duration{1500 * time.Millisecond}, 4, 3, []string{"exceeded in 4 windows"}},
		// Extra admissions during the outage are counted apart.
		{"over during the outage", []time.Duration{5050 * time.Millisecond, 5060 * time.Millisecond}, 0, 5, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := analyze(fakeRun(tc.extra...))
			if len(r.RateLimit) != 1 {
				t.Fatalf("rate limit rows: %+v", r.RateLimit)
			}
			ra := r.RateLimit[0]
			if ra.Violations != tc.violations || ra.MaxOutage != tc.maxOutage || ra.Limit != 3 || ra.Users != 2 || ra.Limited != 10 {
				t.Errorf("accuracy %+v", ra)
			}
			if ra.Bound != 4 {
				t.Errorf("memory bound %d, want 4 (2 instances × ceil(3/2))", ra.Bound)
			}
			if len(r.Failures) != len(tc.failures) {
				t.Fatalf("failures %q, want %q", r.Failures, tc.failures)
			}
			for i, f := range tc.failures {
				if !strings.Contains(r.Failures[i], f) {
					t.Errorf("failure %q, want %q", r.Failures[i], f)
				}
			}
			fo := r.Failover
			if fo.AllBackMS != 6400 || fo.BackAfterRestartMS != 400 || fo.Instances[0].DownMS != 50 || fo.MemoryDecisions != 12 {
				t.Errorf("failover %+v", fo)
			}
			if r.Staleness.Up.Probes != 2 || r.Staleness.Up.FirstRead != 1 || r.Staleness.Outage.Seen != 1 || r.Staleness.Outage.MaxMS != 1500 {
				t.Errorf("staleness %+v", r.Staleness)
			}
			// 1.1 s of gateway CPU over the 70 requests of the load.
			if got := r.CPUPerRequestUS["gateway"]; math.Abs(got-1.1e6/float64(r.Overall.Requests)) > 0.1 {
				t.Errorf("gateway CPU per request %v µs over %d requests", got, r.Overall.Requests)
			}
			if len(r.Timeline) != 10 || r.Timeline[0].Total != 7 || r.Timeline[0].Limited != 1 {
				t.Errorf("timeline[0] %+v", r.Timeline[0])
			}
		})
	}
}

func TestRender(t *testing.T) {
	r := analyze(fakeRun())
	var md, page, js bytes.Buffer
	if err := r.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"**PASSED**", "| patient | patient | 3 | 1s |", "**0 with 5xx**", "6 of 6 checks"} {
		if !strings.Contains(md.String(), w) {
			t.Errorf("markdown lacks %q:\n%s", w, md.String())
		}
	}
	if err := r.HTML(&page); err != nil {
		t.Fatal(err)
	}
	h := page.String()
	if n := strings.Count(h, `<svg class="chart"`); n != 8 {
		t.Errorf("%d charts, want 8", n)
	}
	for _, banned := range []string{"http://", "https://", "<link", "src="} {
		if strings.Contains(strings.ReplaceAll(h, `xmlns="http://www.w3.org/2000/svg"`, ""), banned) {
			t.Errorf("page refers to an outside resource (%q)", banned)
		}
	}
	if err := r.JSON(&js); err != nil || !strings.Contains(js.String(), `"failures": null`) {
		t.Errorf("json: %v\n%s", err, js.String())
	}
}

func TestRunRejectsBadOptions(t *testing.T) {
	if _, err := Run(context.Background(), Options{Redis: "nope"}); err == nil || !strings.Contains(err.Error(), "unknown redis mode") {
		t.Fatalf("err %v", err)
	}
}

// TestUserConfig turns the embedded default config into the fleet's and
// the FHIR server's, and checks that the gateway accepts both and that
// they say what the fleet needs.
func TestUserConfig(t *testing.T) {
	dir := t.TempDir()
	o := &Options{Config: "../../cmd/omnigate/default.yaml"}
	origin, base, err := userOrigin(o, dir)
	if err != nil || base != "/fhir/R4" {
		t.Fatalf("userOrigin: %q, %v", base, err)
	}
	ocfg, err := gateway.Load(origin)
	if err != nil {
		t.Fatalf("FHIR server config rejected: %v", err)
	}
	if len(ocfg.Routes) != 1 || ocfg.Redis.Enabled() {
		t.Errorf("FHIR server config: %d routes, redis %v", len(ocfg.Routes), ocfg.Redis.Enabled())
	}
	fleet, err := userFleet(o, dir, "  cluster: {addrs: [127.0.0.1:7001, 127.0.0.1:7002, 127.0.0.1:7003]}", "http://127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := gateway.Load(fleet)
	if err != nil {
		b, _ := os.ReadFile(fleet)
		t.Fatalf("fleet config rejected: %v\n%s", err, b)
	}
	if cfg.Redis.Cluster == nil || len(cfg.Redis.Cluster.Addrs) != 3 {
		t.Errorf("redis %+v", cfg.Redis)
	}
	for _, r := range cfg.Routes {
		if r.FHIR || !r.IsFHIR() || r.Upstream == nil || r.Upstream.URL != "http://127.0.0.1:9" {
			t.Errorf("route %s: fhir %v, fhir errors %v, upstream %+v", r.Name, r.FHIR, r.IsFHIR(), r.Upstream)
		}
	}
	b, _ := os.ReadFile(fleet)
	for _, w := range []string{"file: " + filepath.Join(dir, "users.yaml"), "ops:", "limit: 1000000000", "path: /fhir/R4/*path", "fhir_errors: true",
		"path: ./data/audit.jsonl"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("fleet config lacks %q:\n%s", w, b)
		}
	}
	var authzCfg *authz.Config
	for _, ps := range cfg.Plugins {
		if c, ok := ps.Config.(*authz.Config); ok {
			authzCfg = c
		}
	}
	if authzCfg == nil || len(authzCfg.Roles[probeRole].Scopes) != 1 || len(authzCfg.Roles["nurse"].Scopes) < 2 {
		t.Errorf("authz roles: the probe role, and the default roles kept: %+v", authzCfg)
	}
	// The instances have no embedded FHIR server for the audit's fhir sink.
	if strings.Contains(string(b), "type: fhir") {
		t.Errorf("fleet config keeps the audit fhir sink:\n%s", b)
	}
	for _, bad := range []struct{ yaml, err string }{
		{"routes:\n  - fhir: true\n", "no session plugin"},
		{"plugins:\n  s: {type: session}\nroutes:\n  - path: /x\n    upstream: http://127.0.0.1:9\n", "no route with fhir: true"},
		{"- a list", "not a mapping"},
	} {
		p := filepath.Join(dir, "bad.yaml")
		os.WriteFile(p, []byte(bad.yaml), 0o600)
		if _, err := userFleet(&Options{Config: p}, dir, "", "http://127.0.0.1:9"); err == nil || !strings.Contains(err.Error(), bad.err) {
			t.Errorf("%q: error %v, want %q", bad.yaml, err, bad.err)
		}
	}
}

// TestOutageChecks: sessions refused during the outage are told apart by
// when they were made, and only those made before it fail the run; a
// write seen stale during the outage past the cache's bound fails it too.
func TestOutageChecks(t *testing.T) {
	rd := fakeRun()
	refuse := func(tokAt time.Duration) {
		rd.rec.add(sample{at: 5 * time.Second, dur: time.Millisecond, status: 401, inst: 1, op: opRead, user: 0, cross: true,
			tokAt: tokAt, tokEnd: tokAt + 100*time.Millisecond}, "")
	}
	refuse(5200 * time.Millisecond) // made during the outage, elsewhere
	refuse(3800 * time.Millisecond) // answered 100 ms before it
	refuse(3350 * time.Millisecond) // answered 550 ms before it, asked before the grace
	r := analyze(rd)
	s := r.Sessions
	if s.CrossRejectedOutage != 1 || s.CrossRejectedOutageLate != 1 || s.CrossRejectedOutageNew != 1 || len(r.Failures) != 1 {
		t.Fatalf("sessions %+v, failures %q", s, r.Failures)
	}
	if !strings.Contains(r.Failures[0], "at 5000 ms on instance 2: a's session made on instance 1, login answered at 3450 ms (outage from 4000 ms)") {
		t.Errorf("the failure does not say which request: %q", r.Failures[0])
	}
	refuse(time.Second) // made well before the outage: a logout by the outage
	rd.outageBound = time.Second
	r = analyze(rd)
	if r.Sessions.CrossRejectedOutage != 2 || r.Staleness.OutageBoundMS != 1000 {
		t.Fatalf("sessions %+v, staleness %+v", r.Sessions, r.Staleness)
	}
	want := []string{"made before the outage were refused", "served stale for 1.4s"}
	if len(r.Failures) != len(want) {
		t.Fatalf("failures %q, want %q", r.Failures, want)
	}
	for i, w := range want {
		if !strings.Contains(r.Failures[i], w) {
			t.Errorf("failure %q, want %q", r.Failures[i], w)
		}
	}
}

func TestOutageStalenessBound(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		plugins string
		want    time.Duration
	}{
		{"", 0},
		{"  c: {type: cache}", 5*time.Second + clockSlack},
		{"  c: {type: cache, outage_max_age: 2s}", 2*time.Second + clockSlack},
		{"  c: {type: cache, outage_max_age: 2s, l1: {enabled: true, ttl: 3s}}", 3*time.Second + clockSlack},
		{"  c: {type: cache, on_redis_down: bypass}", clockSlack},
		{"  s: {type: session}\n  c: {type: cache, outage_max_age: 1s}", time.Second + clockSlack},
	} {
		path := filepath.Join(dir, "c.yaml")
		os.WriteFile(path, []byte("plugins:\n"+tc.plugins+"\n"), 0o600)
		got, err := outageStalenessBound(path)
		if err != nil || got != tc.want {
			t.Errorf("%q: %v %v, want %v", tc.plugins, got, err, tc.want)
		}
	}
}

func TestParseAck(t *testing.T) {
	for _, tc := range []struct {
		body, loc        string
		typ, id, version string
		ok               bool
	}{
		{`{"resourceType":"Observation","id":"o-1","meta":{"versionId":"1"}}`, "", "Observation", "o-1", "1", true},
		{``, "http://127.0.0.1:8080/fhir/R4/Patient/p.7/_history/12", "Patient", "p.7", "12", true},
		{`{"resourceType":"Patient","id":"p1"}`, "Patient/p1/_history/3", "Patient", "p1", "3", true},
		{`{"resourceType":"Patient","id":"../x","meta":{"versionId":"1"}}`, "", "Patient", "../x", "1", false},
		{`{"resourceType":"OperationOutcome"}`, "", "", "", "", false},
		{``, "Patient/p1", "", "", "", false},
	} {
		typ, id, version, ok := parseAck([]byte(tc.body), tc.loc)
		if ok != tc.ok || ok && (typ != tc.typ || id != tc.id || version != tc.version) {
			t.Errorf("parseAck(%q, %q) = %q %q %q %t, want %q %q %q %t", tc.body, tc.loc, typ, id, version, ok, tc.typ, tc.id, tc.version, tc.ok)
		}
	}
}

// FuzzParseAck: whatever a server answers, an accepted reference is safe
// to put back into a URL path.
func FuzzParseAck(f *testing.F) {
	f.Add([]byte(`{"resourceType":"Observation","id":"o-1","meta":{"versionId":"1"}}`), "")
	f.Add([]byte(``), "http://h/fhir/R4/Patient/p/_history/2")
	f.Add([]byte(`{"resourceType":"P?x","id":"a/b","meta":{"versionId":"%2F"}}`), "/_history/")
	f.Fuzz(func(t *testing.T, body []byte, loc string) {
		typ, id, version, ok := parseAck(body, loc)
		if !ok {
			return
		}
		for _, s := range []string{typ, id, version} {
			if s == "" || len(s) > 64 || strings.ContainsAny(s, "/?#%\\ ") || s == "." || s == ".." {
				t.Fatalf("parseAck(%q, %q) accepted %q", body, loc, s)
			}
		}
	})
}

// The acknowledged-write check finds a write that is not in the store: the
// tool's FHIR stand-in holds the seeded Patient but never received the
// acknowledged Observation.
func TestVerifyWritesDetectsLoss(t *testing.T) {
	ds := staticDataset(2, 1)
	st, err := startStandIn(ds.putBundle(), ds.base)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	rec := &recorder{start: time.Now(), policyIdx: map[string]int16{}}
	c := &client{rec: rec, insts: []*instance{{addr: strings.TrimPrefix(st.addr, "http://")}}, http: &http.Client{Timeout: 10 * time.Second}}
	book := &ackBook{}
	for _, body := range []string{
		`{"resourceType":"Patient","id":"st-p1","meta":{"versionId":"1"}}`,
		`{"resourceType":"Observation","id":"st-lost","meta":{"versionId":"3"}}`,
	} {
		book.add(result{status: 201, body: []byte(body), header: http.Header{}, start: rec.start}, 0, rec.start)
	}
	book.add(result{status: 200, body: []byte(`{}`), header: http.Header{}, start: rec.start}, 0, rec.start)
	wc := verifyWrites(context.Background(), c, token{}, ds.base, book)
	if wc.Acknowledged != 3 || wc.NoVersion != 1 || wc.Checked != 2 || wc.Missing != 1 || len(wc.Problems) != 1 || !strings.Contains(wc.Problems[0], "Observation/st-lost version 3") {
		t.Fatalf("verifyWrites = %+v", wc)
	}
	rd := fakeRun()
	rd.writes = wc
	r := analyze(rd)
	var lost, unversioned bool
	for _, f := range r.Failures {
		lost = lost || strings.Contains(f, "1 of 2 acknowledged writes missing")
		unversioned = unversioned || strings.Contains(f, "1 acknowledged writes named no version")
	}
	if !lost || !unversioned {
		t.Errorf("failures %q do not name the lost write and the unversioned one", r.Failures)
	}
}

// During the store restart, 503 with Retry-After is allowed and any other
// 5xx is not; outside it, a 503 is a failure too.
func TestStoreOutageChecks(t *testing.T) {
	rd := fakeRun()
	rd.o.Store = StorePostgres
	rd.store = &storeLog{stopped: true, restarted: true, stopAt: 7 * time.Second, restartAt: 8 * time.Second, readyAt: 8200 * time.Millisecond}
	rd.storePings = []*pingLog{
		{points: []pingPoint{{0, "up"}, {7100 * time.Millisecond, "down"}, {8300 * time.Millisecond, "up"}}},
		{points: []pingPoint{{0, "up"}, {7050 * time.Millisecond, "down"}, {8500 * time.Millisecond, "up"}}},
	}
	add := func(at time.Duration, status int16, retry bool) {
		rd.rec.samples = append(rd.rec.samples, sample{at: at, dur: 5 * time.Millisecond, status: status, retry: retry, op: opWrite, user: 0, policy: -1})
	}
	add(7200*time.Millisecond, 503, true)
	add(8400*time.Millisecond, 503, true)
	r := analyze(rd)
	so := r.StoreOutage
	if so == nil || so.AllBackMS != 8500 || so.Unavailable != 2 || so.Failed != 0 || so.Instances[1].BackMS != 500 {
		t.Fatalf("store outage %+v", so)
	}
	for _, f := range r.Failures {
		if strings.Contains(f, "5xx") || strings.Contains(f, "store") {
			t.Errorf("failure %q for allowed 503s", f)
		}
	}
	add(7300*time.Millisecond, 500, false) // a 500 while the store is down
	add(7400*time.Millisecond, 503, false) // a 503 without Retry-After
	add(9*time.Second, 503, true)          // a 503 once every instance is back
	r = analyze(rd)
	var other, failed bool
	for _, f := range r.Failures {
		other = other || strings.Contains(f, "3 responses with a 5xx status other than the 2 503 with Retry-After")
		failed = failed || strings.Contains(f, "2 requests during the store restart failed")
	}
	if !other || !failed {
		t.Errorf("failures %q", r.Failures)
	}
}
