package external

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/externaltest"
)

// config returns a gateway config with one external plugin "policy", the
// test binary serving mode, behind test-identity on a FHIR route to up.
// extra holds more keys of the plugin, which replace the defaults here.
// The default deadlines of calls, of the start and of health checks are
// generous: no test plugin comes near them, however busy the machine;
// tests of a deadline set their own, with a plugin that overruns it.
func config(up, mode, extra string) string {
	return fmt.Sprintf(`
log: {access_log: false}
plugins:
  ident: {type: test-identity}
  policy:
    type: external
    path: %s
    env: {%s: %s}
    config: {greeting: hello}
%s
routes:
  - name: fhir
    path: /fhir/R4/*path
    upstream: %s
    fhir_errors: true
    plugins: [ident, policy]
`, os.Args[0], helperEnv, mode, withDefaults(extra), up)
}

// withDefaults adds to extra, keys of an external plugin, the test
// defaults of the keys it does not set.
func withDefaults(extra string) string {
	defaults := map[string]string{"timeout": "1m", "start_timeout": "1m", "health_timeout": "10s",
		"restart_min": "10ms", "restart_max": "100ms"}
	for _, k := range []string{"timeout", "start_timeout", "health_timeout", "restart_min", "restart_max"} {
		if !strings.Contains(extra, "    "+k+":") {
			extra += "    " + k + ": " + defaults[k] + "\n"
		}
	}
	return extra
}

func newGateway(t *testing.T, mode, extra string) (*gateway.Server, *externaltest.Logs) {
	t.Helper()
	up := externaltest.Upstream(t)
	return externaltest.Gateway(t, config(up.URL, mode, extra))
}

func scrape(t *testing.T, srv *gateway.Server) string {
	t.Helper()
	rec := externaltest.Do(srv.AdminHandler(), "GET", "/metrics", nil)
	return rec.Body.String()
}

func ping(srv *gateway.Server) gateway.PluginHealth {
	rec := externaltest.Do(srv.AdminHandler(), "GET", "/ping", nil)
	var p gateway.PingResponse
	json.Unmarshal(rec.Body.Bytes(), &p)
	return p.Plugins["policy"]
}

func isOutcome(rec *httptest.ResponseRecorder) bool {
	return strings.Contains(rec.Body.String(), `"resourceType":"OperationOutcome"`)
}

func TestDecisions(t *testing.T) {
	srv, logs := newGateway(t, "policy", "")
	pid := ""
	for _, tc := range []struct {
		name, method, path, body string
		hdr                      []string
		status                   int
		check                    func(t *testing.T, rec *httptest.ResponseRecorder)
	}{
		{name: "continue with header changes, identity and FHIR context", method: "GET", path: "/fhir/R4/Patient/123/Observation",
			hdr:    []string{"X-Test-User", "u1", "X-Test-Role", "nurse", "X-Test-Scopes", "patient/*.rs user/*.r", "X-Seen-Remove", "x"},
			status: 200,
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				h := rec.Header()
				if h.Get("X-Seen-Greeting") != "hello" || h.Get("X-Seen-User") != "u1/nurse/patient/*.rs,user/*.r" ||
					h.Get("X-Seen-FHIR") != "search-type Observation  Patient 123" || h.Get("X-Seen-Remove") != "" {
					t.Errorf("upstream saw %v", h)
				}
				pid = h.Get("X-Seen-Pid")
			}},
		{name: "request body", method: "POST", path: "/fhir/R4/Patient", body: `{"resourceType":"Patient"}`, status: 200,
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				if got := rec.Header().Get("X-Seen-Body"); got != "26" {
					t.Errorf("plugin saw a body of %q bytes", got)
				}
				if rec.Header().Get("X-Seen-FHIR") != "create Patient" {
					t.Errorf("FHIR context %q", rec.Header().Get("X-Seen-FHIR"))
				}
			}},
		{name: "deny", method: "GET", path: "/fhir/R4/Patient/1", hdr: []string{"X-Test", "deny"}, status: 403,
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				if !isOutcome(rec) || !strings.Contains(rec.Body.String(), "denied by the test policy") || rec.Header().Get("Retry-After") != "7" {
					t.Errorf("deny answer: %v %s", rec.Header(), rec.Body)
				}
			}},
		{name: "local reply", method: "GET", path: "/fhir/R4/Patient/1", hdr: []string{"X-Test", "respond"}, status: 418,
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				if rec.Body.String() != "short and stout" || rec.Header().Get("X-Teapot") != "yes" {
					t.Errorf("reply: %v %s", rec.Header(), rec.Body)
				}
			}},
		{name: "plugin error fails closed", method: "GET", path: "/fhir/R4/Patient/1", hdr: []string{"X-Test", "error"}, status: 500},
		{name: "plugin panic fails closed", method: "GET", path: "/fhir/R4/Patient/1", hdr: []string{"X-Test", "panic"}, status: 500},
		{name: "invalid decision fails closed", method: "GET", path: "/fhir/R4/Patient/1", hdr: []string{"X-Test", "bad-header"}, status: 500},
		{name: "still serving after the failures, same process", method: "GET", path: "/fhir/R4/Patient/1", status: 200,
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				if got := rec.Header().Get("X-Seen-Pid"); got != pid {
					t.Errorf("plugin process changed from %s to %s", pid, got)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := externaltest.Do(srv, tc.method, tc.path, strings.NewReader(tc.body), tc.hdr...)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if tc.status == 500 && !isOutcome(rec) {
				t.Errorf("failure is not an OperationOutcome: %s", rec.Body)
			}
			if tc.check != nil {
				tc.check(t, rec)
			}
		})
	}
	metrics := scrape(t, srv)
	for _, want := range []string{
		`omnigate_external_decisions_total{action="continue",phase="request",plugin="policy"} 3`,
		`omnigate_external_decisions_total{action="stop",phase="request",plugin="policy"} 2`,
		`omnigate_external_failures_total{kind="error",phase="request",plugin="policy"} 2`,
		`omnigate_external_failures_total{kind="invalid",phase="request",plugin="policy"} 1`,
		`omnigate_external_counter_total{name="requests",plugin="policy"} 5`,
		`omnigate_external_up{plugin="policy"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	l := logs.String()
	for _, want := range []string{
		`"msg":"configured","plugin":"policy","stream":"stderr","name":"policy"`,
		`"msg":"external plugin failed","plugin":"policy","request_id":`,
		`"error":"consent service unreachable"`,
		`"msg":"policy panicked"`,
		`invalid decision: header Content-Length belongs to the gateway`,
	} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if h := ping(srv); h.Type != "external" || h.Status != gateway.StatusUp || !strings.Contains(h.Detail, "pid "+pid) {
		t.Errorf("ping: %+v", h)
	}
}

func TestPluginOutputInGatewayLog(t *testing.T) {
	srv, logs := newGateway(t, "policy", "")
	if rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil, "X-Test", "log"); rec.Code != 200 {
		t.Fatal(rec.Code)
	}
	ok := externaltest.Eventually(5*time.Second, func() bool {
		l := logs.String()
		return strings.Contains(l, `"level":"WARN","msg":"structured line","plugin":"policy","stream":"stderr","answer":42`) &&
			strings.Contains(l, `"msg":"plugin output","plugin":"policy","stream":"stderr","line":"plain stderr line"`) &&
			strings.Contains(l, `"msg":"plugin output","plugin":"policy","stream":"stdout","line":"plain stdout line"`)
	})
	if !ok {
		t.Errorf("plugin output not in the gateway log:\n%s", logs)
	}
}

func TestResponsePhase(t *testing.T) {
	for _, tc := range []struct {
		mode, test string
		status     int
		body       string
	}{
		{"response", "", 200, `{"RESOURCETYPE":"PATIENT","ID":"P1"}`},
		{"response", "status", 203, `{"RESOURCETYPE":"PATIENT","ID":"P1"}`},
		{"response", "teapot", 418, "no"},
		{"response", "error", 500, "OperationOutcome"},
		{"response-headers", "", 200, `{"resourceType":"Patient","id":"p1"}`},
		{"response-headers", "status", 203, `{"resourceType":"Patient","id":"p1"}`},
		{"response-headers", "teapot", 418, "no"},
	} {
		t.Run(tc.mode+"/"+tc.test, func(t *testing.T) {
			srv, _ := newGateway(t, tc.mode, "")
			rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/p1", nil, "X-Test", tc.test)
			if rec.Code != tc.status || !strings.Contains(rec.Body.String(), tc.body) {
				t.Fatalf("got %d %q, want %d %q", rec.Code, rec.Body, tc.status, tc.body)
			}
			if tc.status < 400 && rec.Header().Get("X-Response-Seen") != "200 /fhir/R4/Patient/p1" {
				t.Errorf("response header: %v", rec.Header())
			}
			if tc.status == 418 && rec.Header().Get("X-Response-Seen") != "" {
				t.Errorf("the reply kept the response's headers: %v", rec.Header())
			}
		})
	}
}

// pluginPID returns the one child process of the test: the plugin.
func pluginPID(t *testing.T) int {
	t.Helper()
	var kids []int
	externaltest.Eventually(10*time.Second, func() bool {
		kids = externaltest.Children(t)
		return len(kids) == 1
	})
	if len(kids) != 1 {
		t.Fatalf("want one plugin process, have %v", kids)
	}
	return kids[0]
}

func TestPluginKilledMidRequest(t *testing.T) {
	for _, tc := range []struct {
		name, fail, how string
		status          int
	}{
		{"killed, fail closed", "closed", "kill", 500},
		{"killed, fail open", "open", "kill", 200},
		{"exits by itself, fail closed", "closed", "exit", 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marks := t.TempDir()
			t.Setenv(markEnv, marks) // inherited by the plugin
			srv, logs := newGateway(t, "policy", fmt.Sprintf("    fail: %s\n", tc.fail))
			pid := pluginPID(t)

			var rec *httptest.ResponseRecorder
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				test := "block"
				if tc.how == "exit" {
					test = "exit"
				}
				rec = externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil, "X-Test", test)
			}()
			if tc.how == "kill" {
				if !externaltest.Eventually(10*time.Second, func() bool {
					_, err := os.Stat(filepath.Join(marks, "blocked"))
					return err == nil
				}) {
					t.Fatal("the request never reached the plugin")
				}
				syscall.Kill(pid, syscall.SIGKILL)
			}
			wg.Wait()
			if rec.Code != tc.status {
				t.Fatalf("request in flight got %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			var after *httptest.ResponseRecorder
			if !externaltest.Eventually(10*time.Second, func() bool {
				after = externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil)
				return after.Code == 200 && after.Header().Get("X-Seen-Pid") != ""
			}) {
				t.Fatalf("not restarted: %d %s\n%s", after.Code, after.Body, logs)
			}
			if got := after.Header().Get("X-Seen-Pid"); got == fmt.Sprint(pid) {
				t.Errorf("still the old process %s", got)
			}
			if externaltest.Alive(pid) {
				t.Errorf("old process %d still alive", pid)
			}
			if !strings.Contains(scrape(t, srv), `omnigate_external_restarts_total{plugin="policy",result="success"} 1`) {
				t.Errorf("restart not counted")
			}
			if h := ping(srv); h.Status != gateway.StatusUp || !strings.Contains(h.Detail, "pid "+after.Header().Get("X-Seen-Pid")) {
				t.Errorf("ping after the restart: %+v", h)
			}
		})
	}
}

// While the process is down, before the backoff has passed, ping reports
// it and requests get the failure mode. The backoff is long, so the test
// sees the plugin down however slowly it runs; restarts after it are
// TestPluginKilledMidRequest's.
func TestDownWhileRestarting(t *testing.T) {
	for _, tc := range []struct {
		fail     string
		status   int
		required bool
	}{
		{"closed", 500, true},
		{"open", 200, false},
	} {
		t.Run(tc.fail, func(t *testing.T) {
			srv, _ := newGateway(t, "policy", "    fail: "+tc.fail+"\n    restart_min: 1h\n    restart_max: 1h\n")
			syscall.Kill(pluginPID(t), syscall.SIGKILL)
			var h gateway.PluginHealth
			if !externaltest.Eventually(10*time.Second, func() bool {
				h = ping(srv)
				return h.Status == gateway.StatusDown && strings.Contains(h.Detail, "restarting in")
			}) {
				t.Fatalf("ping never showed the plugin down, waiting to restart: %+v", h)
			}
			if h.Required != tc.required || !strings.Contains(h.Detail, "process exited") {
				t.Errorf("ping while down: %+v", h)
			}
			rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil)
			if rec.Code != tc.status || (tc.status == 200 && rec.Header().Get("X-Seen-Pid") != "") {
				t.Errorf("request while down: %d %v", rec.Code, rec.Header())
			}
			if !strings.Contains(scrape(t, srv), `omnigate_external_failures_total{kind="down",phase="request",plugin="policy"} 1`) {
				t.Errorf("down failure not counted")
			}
		})
	}
}

// A call that overruns the deadline is cut there; the plugin ignores its
// deadline and hangs far longer, so the outcome does not depend on speed.
func TestHangingPluginIsCutAtTheDeadline(t *testing.T) {
	srv, logs := newGateway(t, "policy", "    timeout: 100ms\n")
	rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil, "X-Test", "hang")
	if rec.Code != 500 || !isOutcome(rec) {
		t.Fatalf("hanging call: %d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(scrape(t, srv), `omnigate_external_failures_total{kind="deadline",phase="request",plugin="policy"} 1`) {
		t.Errorf("deadline not counted")
	}
	if !strings.Contains(logs.String(), `"kind":"deadline"`) {
		t.Errorf("deadline not logged:\n%s", logs)
	}
}

// A call the plugin is stuck in does not hold the process up: it serves
// other calls meanwhile.
func TestProcessServesWhileACallHangs(t *testing.T) {
	marks := t.TempDir()
	t.Setenv(markEnv, marks) // inherited by the plugin
	srv, _ := newGateway(t, "policy", "")
	pid := pluginPID(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stuck := make(chan int, 1)
	go func() {
		req := httptest.NewRequest("GET", "/fhir/R4/Patient/1", nil).WithContext(ctx)
		req.Header.Set("X-Test", "block") // in the plugin until the call is given up
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		stuck <- rec.Code
	}()
	if !externaltest.Eventually(10*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(marks, "blocked"))
		return err == nil
	}) {
		t.Fatal("the blocking call never reached the plugin")
	}
	rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil)
	if rec.Code != 200 || rec.Header().Get("X-Seen-Pid") != fmt.Sprint(pid) {
		t.Errorf("while a call hangs: %d %v", rec.Code, rec.Header())
	}
	cancel() // the client goes away: the gateway gives the call up
	select {
	case code := <-stuck:
		if code != 500 {
			t.Errorf("the call given up got %d, want 500", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call was not given up when its client went away")
	}
}

func TestLoadErrors(t *testing.T) {
	up := externaltest.Upstream(t)
	for _, tc := range []struct {
		name, mode, extra string
		want              []string
	}{
		{"handshake: protocol version", "mismatch", "", []string{"plugins.policy", "handshake refused", "another contract version", "Plugin version: 2"}},
		{"handshake: magic cookie", "cookie", "", []string{"handshake refused", "magic cookie"}},
		{"not a plugin", "not-a-plugin", "", []string{"handshake refused", "not an OmniGate external plugin"}},
		{"config refused", "policy", "    config: {refuse: true}\n", []string{"plugin refused its config: config: refused as asked"}},
		{"config with an unknown key", "policy", "    config: {colour: red}\n", []string{"plugin refused its config", `unknown field "colour"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			yaml := strings.Replace(config(up.URL, tc.mode, ""), "    config: {greeting: hello}\n", tc.extra, 1)
			srv, _, err := externaltest.TryGateway(yaml)
			if err == nil {
				externaltest.Shutdown(srv)
				t.Fatal("loaded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if kids := externaltest.Children(t); len(kids) != 0 {
				t.Errorf("processes left after a failed load: %v", kids)
			}
		})
	}
	_, _, err := externaltest.TryGateway(strings.Replace(config(up.URL, "policy", ""), os.Args[0], "/nonexistent/plugin", 1))
	if err == nil || !strings.Contains(err.Error(), "start /nonexistent/plugin") {
		t.Errorf("missing executable: %v", err)
	}
}

func TestShutdownAndReloadLeaveNoProcess(t *testing.T) {
	up := externaltest.Upstream(t)
	two := strings.Replace(config(up.URL, "policy", ""), "routes:", fmt.Sprintf(`  second:
    type: external
    path: %s
    env: {%s: response-headers}
%sroutes:`, os.Args[0], helperEnv, withDefaults("")), 1)
	two = strings.Replace(two, "plugins: [ident, policy]", "plugins: [ident, policy, second]", 1)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where the plugins' socket directories go
	srv, logs := externaltest.Gateway(t, two)
	before := externaltest.Children(t)
	if len(before) != 2 {
		t.Fatalf("want 2 plugin processes, have %v", before)
	}
	if rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil); rec.Code != 200 || rec.Header().Get("X-Response-Seen") == "" {
		t.Fatalf("both plugins: %d %v\n%s", rec.Code, rec.Header(), logs)
	}
	cfg, err := gateway.Parse("test.yaml", []byte(two), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	var after []int
	if !externaltest.Eventually(10*time.Second, func() bool {
		after = externaltest.Children(t)
		return len(after) == 2 && !slices.Contains(after, before[0]) && !slices.Contains(after, before[1])
	}) {
		t.Fatalf("after a reload: processes %v, before %v", after, before)
	}
	if rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil); rec.Code != 200 {
		t.Fatalf("after reload: %d\n%s", rec.Code, logs)
	}
	externaltest.Shutdown(srv)
	if kids := externaltest.Children(t); len(kids) != 0 {
		t.Errorf("processes left after shutdown: %v", kids)
	}
	for _, pid := range append(before, after...) {
		if externaltest.Alive(pid) {
			t.Errorf("process %d alive after shutdown", pid)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "omnigate-plugin-*")); len(left) != 0 {
		t.Errorf("socket directories left: %v", left)
	}
}

func TestEnvironment(t *testing.T) {
	t.Setenv("OMNIGATE_TEST_ENV", "gateway")
	for _, tc := range []struct{ name, extra, want string }{
		{"inherited", "", "gateway"},
		{"env wins over the gateway's", "    env: {OMNIGATE_TEST_ENV: plugin, " + helperEnv + ": policy}\n", "plugin"},
		{"not inherited", "    inherit_env: false\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := externaltest.Upstream(t)
			yaml := config(up.URL, "policy", tc.extra)
			if strings.Contains(tc.extra, "env: {") {
				yaml = strings.Replace(yaml, fmt.Sprintf("    env: {%s: policy}\n", helperEnv), "", 1)
			}
			srv, _ := externaltest.Gateway(t, yaml)
			rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil)
			if rec.Code != 200 || rec.Header().Get("X-Seen-Env") != tc.want {
				t.Errorf("%d, plugin saw %q, want %q", rec.Code, rec.Header().Get("X-Seen-Env"), tc.want)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	_, err := gateway.Parse("test.yaml", []byte(`
plugins:
  policy:
    type: external
    fail: sometimes
    timeout: 0s
    restart_min: 2s
    restart_max: 1s
    health_failures: 0
    env: {"A=B": x}
routes:
  - path: /x
    upstream: http://127.0.0.1:9
    plugins: [policy]
`), nil)
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{
		"plugins.policy.path: required",
		"plugins.policy.fail: must be closed or open",
		"plugins.policy.timeout: must be positive",
		"plugins.policy.restart_max: must not be less than restart_min",
		"plugins.policy.health_failures: must be at least 1",
		`plugins.policy.env: invalid variable name "A=B"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestResponsePhaseKeepsHEADLength(t *testing.T) {
	srv, _ := newGateway(t, "response", "")
	rec := externaltest.Do(srv, "HEAD", "/fhir/R4/Patient/p1", nil)
	if rec.Code != 200 || rec.Body.Len() != 0 {
		t.Fatalf("HEAD: %d %q", rec.Code, rec.Body)
	}
	if got := rec.Header().Get("Content-Length"); got != "36" {
		t.Errorf("Content-Length %q, want the GET's 36", got)
	}
}

// stopped waits until every thread of process pid is stopped. SIGSTOP
// stops a process only once one of its threads has run to take the signal;
// on a busy machine the others serve calls meanwhile.
func stopped(t *testing.T, pid int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	if !externaltest.Eventually(10*time.Second, func() bool {
		tasks, err := os.ReadDir(dir)
		if err != nil || len(tasks) == 0 {
			return false
		}
		for _, task := range tasks {
			stat, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
			if err != nil {
				return false
			}
			if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) == 0 || f[0] != "T" {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("process %d not stopped", pid)
	}
}

// A process that is alive but answers nothing fails its health checks and
// is replaced. The health checks' deadline is generous, so only the
// stopped process fails them, however busy the machine.
func TestWedgedProcessIsRestarted(t *testing.T) {
	srv, logs := newGateway(t, "policy",
		"    health_interval: 50ms\n    health_timeout: 2s\n    health_failures: 2\n")
	pid := pluginPID(t)
	syscall.Kill(pid, syscall.SIGSTOP) // alive, but answers nothing
	defer syscall.Kill(pid, syscall.SIGCONT)
	stopped(t, pid)
	var h gateway.PluginHealth
	if !externaltest.Eventually(30*time.Second, func() bool {
		h = ping(srv)
		return h.Status == gateway.StatusUp && !strings.Contains(h.Detail, fmt.Sprintf("pid %d,", pid))
	}) {
		t.Fatalf("not restarted: %+v\n%s", h, logs)
	}
	rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil)
	if rec.Code != 200 || rec.Header().Get("X-Seen-Pid") == fmt.Sprint(pid) {
		t.Errorf("after the restart: %d %v", rec.Code, rec.Header())
	}
	if externaltest.Alive(pid) {
		t.Errorf("the wedged process %d lives", pid)
	}
	if !strings.Contains(logs.String(), "health checks failed") {
		t.Errorf("restart reason not logged")
	}
}

func TestBodiesOverTheCap(t *testing.T) {
	t.Run("request", func(t *testing.T) {
		srv, _ := newGateway(t, "policy", "    max_request_body: 10\n")
		rec := externaltest.Do(srv, "POST", "/fhir/R4/Patient", strings.NewReader(`{"resourceType":"Patient"}`))
		if rec.Code != 200 || rec.Header().Get("X-Seen-Body") != "too large" {
			t.Errorf("%d %v", rec.Code, rec.Header())
		}
	})
	t.Run("response", func(t *testing.T) {
		srv, _ := newGateway(t, "response", "    max_response_body: 10\n")
		rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/p1", nil)
		// Decided on without the body, which then streams unchanged.
		if rec.Code != 200 || rec.Body.String() != `{"resourceType":"Patient","id":"p1"}` ||
			rec.Header().Get("X-Response-Seen") != "200 /fhir/R4/Patient/p1" {
			t.Errorf("%d %v %s", rec.Code, rec.Header(), rec.Body)
		}
	})
}

func TestConcurrentRequests(t *testing.T) {
	srv, _ := newGateway(t, "policy", "")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				test, want := "", 200
				if (g+i)%3 == 0 {
					test, want = "deny", 403
				}
				user := fmt.Sprintf("u%d-%d", g, i)
				rec := externaltest.Do(srv, "GET", "/fhir/R4/Patient/1", nil, "X-Test", test, "X-Test-User", user)
				if rec.Code != want || want == 200 && !strings.HasPrefix(rec.Header().Get("X-Seen-User"), user+"/") {
					t.Errorf("%s %s: %d %v", test, user, rec.Code, rec.Header().Get("X-Seen-User"))
					return
				}
			}
		}()
	}
	wg.Wait()
}
