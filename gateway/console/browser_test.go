package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	_ "github.com/omnigate/omnigate/builtin/audit"
	_ "github.com/omnigate/omnigate/builtin/authz"
	_ "github.com/omnigate/omnigate/builtin/cache"
	_ "github.com/omnigate/omnigate/builtin/fhir"
	_ "github.com/omnigate/omnigate/builtin/ratelimit"
	_ "github.com/omnigate/omnigate/builtin/session"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/redistest"
)

// EnvScreenshots names a folder; when set, the browser test writes a PNG
// of each page of the console there (docs/console is made this way).
const EnvScreenshots = "OMNIGATE_CONSOLE_SCREENSHOTS"

const adminToken = "console-test-admin-token-4f9c-0123456789"

// chromium finds Debian's Chromium (or another headless-capable build).
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// syncBuffer is the gateway's log, read by the test while it serves.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// consoleGateway serves sessions (a users file), the audit trail, access
// control, rate limits with blocking, the cache and the embedded FHIR
// server on a real Redis, with an admin token.
func consoleGateway(t *testing.T, logs io.Writer) *gateway.Server {
	t.Helper()
	rd := redistest.Start(t)
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	var users strings.Builder
	users.WriteString("users:\n")
	for _, u := range [][2]string{{"nurse", "nurse"}, {"physician", "physician"}, {"alice", "physician"}, {"auditor", "admin"}} {
		fmt.Fprintf(&users, "  - {username: %s, password_hash: %q, role: %s}\n", u[0], hash, u[1])
	}
	usersFile := filepath.Join(dir, "users.yaml")
	if err := os.WriteFile(usersFile, []byte(users.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(`
listen: "127.0.0.1:0"
admin: {listen: "127.0.0.1:0", token: %q}
log: {access_log: false}
redis: {url: %q}
fhir:
  validate: false # compiling the schema takes long under -race; not what this test is about
  store: {path: %q, backup_dir: %q}
plugins:
  session:
    type: session
    users: {file: %q}
  audit:
    type: audit
    spool_dir: %q
    sinks: [{type: fhir}]
  authz:
    type: authz
  ratelimit:
    type: ratelimit
    default: {limit: 10000, window: 1m, burst: 40, burst_window: 1s}
    roles:
      nurse: {limit: 5, window: 1m}
    block: {after: 3, within: 1m, duration: 10m}
  cache:
    type: cache
    l1: {enabled: true}
routes:
  - name: fhir-metadata
    path: /fhir/R4/metadata
    methods: [GET, HEAD, OPTIONS]
    fhir: true
    plugins: [ratelimit]
  - name: fhir
    fhir: true
    plugins: [session, audit, authz, ratelimit, cache]
`, adminToken, rd.URL(), filepath.Join(dir, "fhir.db"), filepath.Join(dir, "backups"), usersFile, filepath.Join(dir, "audit"))
	cfg, err := gateway.Parse("console.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil)), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv
}

// client makes requests to one listener and fails the test on transport
// errors.
type client struct {
	t    *testing.T
	base string
}

func (c client) do(method, path, token, body string) (*http.Response, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
		if !strings.HasPrefix(path, "/fhir/") {
			req.Header.Set("Content-Type", "application/json")
		}
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, b
}

func (c client) json(method, path, token string, v any) {
	c.t.Helper()
	res, b := c.do(method, path, token, "")
	if res.StatusCode != 200 {
		c.t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
}

func (c client) login(user string) string {
	c.t.Helper()
	res, b := c.do("POST", "/auth/login", "", `{"username":"`+user+`","password":"pw"}`)
	if res.StatusCode != 200 {
		c.t.Fatalf("login %s: %d %s", user, res.StatusCode, b)
	}
	var out struct{ Token string }
	json.Unmarshal(b, &out)
	return out.Token
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestConsoleInBrowser opens the console in headless Chromium against a
// gateway on a real Redis: it logs in with the admin token, loads every
// page without a console error, sees the charts drawn, and unblocks a
// client, revokes sessions, purges the cache and backs up the store with
// the pages' buttons (confirming in the page's dialog), each checked
// through the admin API; a request without the token is refused.
func TestConsoleInBrowser(t *testing.T) {
	bin := chromium()
	if bin == "" {
		if os.Getenv("OMNIGATE_BROWSER_TEST") == "1" {
			t.Fatal("Chromium is required (OMNIGATE_BROWSER_TEST=1): apt-get install -y chromium")
		}
		t.Skip("Chromium not found: the console's browser test is skipped. Install it (Debian: apt-get install -y chromium) " +
			"and run: go test -run TestConsoleInBrowser ./gateway/console/ (.ci/run installs it and runs this test)")
	}
	logs := &syncBuffer{}
	srv := consoleGateway(t, logs)
	pub := client{t, "http://" + srv.Addr()}
	adm := client{t, "http://" + srv.AdminAddr()}

	// Data: patients and observations, two sessions of the physician, one
	// of alice, and the nurse over her limit until she is blocked.
	doc := pub.login("physician")
	pub.login("physician")
	pub.login("alice")
	for i := 1; i <= 4; i++ {
		res, b := pub.do("PUT", fmt.Sprintf("/fhir/R4/Patient/p%d", i), doc, fmt.Sprintf(`{"resourceType":"Patient","id":"p%d"}`, i))
		if res.StatusCode/100 != 2 {
			t.Fatalf("put patient: %d %s", res.StatusCode, b)
		}
	}
	for i := 0; i < 3; i++ {
		pub.do("POST", "/fhir/R4/Observation", doc, `{"resourceType":"Observation","status":"final","code":{"text":"pulse"},"subject":{"reference":"Patient/p1"}}`)
	}
	nurse := pub.login("nurse")
	for i := 0; i < 12; i++ {
		pub.do("GET", "/fhir/R4/Patient/p2", nurse, "")
	}
	var blocks struct{ Blocks []struct{ Key string } }
	adm.json("GET", "/admin/ratelimit/blocks", adminToken, &blocks)
	if len(blocks.Blocks) != 1 || blocks.Blocks[0].Key != "user:nurse" {
		t.Fatalf("blocks before the test: %+v", blocks)
	}

	// Background traffic for the charts: reads (cache hits) and a few 404s.
	stop := make(chan struct{})
	var traffic sync.WaitGroup
	traffic.Add(1)
	go func() {
		defer traffic.Done()
		tick := time.NewTicker(40 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			path := fmt.Sprintf("/fhir/R4/Patient/p%d", 1+i%4)
			if i%9 == 0 {
				path = "/fhir/R4/Patient/missing"
			}
			req, _ := http.NewRequest("GET", pub.base+path, nil)
			req.Header.Set("Authorization", "Bearer "+doc)
			if res, err := http.DefaultClient.Do(req); err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		}
	}()
	defer func() { close(stop); traffic.Wait() }()

	// The console's data is refused without the token; its page is not.
	for _, p := range []string{"/ui/api/overview", "/ui/api/plugins", "/admin/metrics/series", "/ping"} {
		if res, _ := adm.do("GET", p, "", ""); res.StatusCode != 401 {
			t.Errorf("GET %s without the token: %d, want 401", p, res.StatusCode)
		}
	}
	if res, _ := adm.do("GET", "/ui/api/overview", "wrong", ""); res.StatusCode != 401 {
		t.Errorf("GET /ui/api/overview with a wrong token: %d, want 401", res.StatusCode)
	}
	if res, _ := adm.do("GET", "/ui/", "", ""); res.StatusCode != 200 {
		t.Errorf("GET /ui/ without the token: %d, want 200", res.StatusCode)
	}

	// Chromium, headless, with a fresh profile and no network services.
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 800),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true), chromedp.Flag("hide-scrollbars", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()

	var mu sync.Mutex
	var problems []string
	listen := func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeWarning || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				problems = append(problems, fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(args, " ")))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			problems = append(problems, "exception: "+msg)
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.EntryLevelError || ev.Entry.Level == cdplog.EntryLevelWarning {
				problems = append(problems, fmt.Sprintf("log %s %s: %s %s", ev.Entry.Level, ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
			}
		}
	}
	bctx, cancelTab := chromedp.NewContext(actx, chromedp.WithListener(listen))
	defer cancelTab()
	// The first call starts the browser, and lives as long as it: no
	// deadline on it, one on everything after.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	budget := 60 * time.Second
	if os.Getenv(EnvScreenshots) != "" {
		budget *= 2 // the charts get a minute of samples first
	}
	ctx, cancelTime := context.WithTimeout(bctx, budget)
	defer cancelTime()
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	evalInt := func(js string) int {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[int](js))
		if err != nil {
			t.Fatalf("evaluate %s: %v", js, err)
		}
		return v
	}
	evalString := func(js string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("evaluate %s: %v", js, err)
		}
		return v
	}
	shots := os.Getenv(EnvScreenshots)
	shoot := func(name string) {
		t.Helper()
		if shots == "" {
			return
		}
		buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		img, err := png.Decode(bytes.NewReader(buf))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		(&png.Encoder{CompressionLevel: png.BestCompression}).Encode(&out, img)
		if err := os.WriteFile(filepath.Join(shots, name+".png"), out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	page := func(name string) {
		t.Helper()
		run("open "+name, chromedp.Click(`#nav a[data-page="`+name+`"]`, chromedp.NodeVisible),
			chromedp.WaitReady(`body[data-loaded="`+name+`"]`))
	}
	// confirm accepts the page's confirmation dialog.
	confirm := func() {
		t.Helper()
		run("confirm", chromedp.WaitVisible(`#confirm[open] #confirm-ok`), chromedp.Click(`#confirm-ok`, chromedp.NodeVisible),
			chromedp.WaitNotPresent(`#confirm[open]`))
	}

	ui := "http://" + srv.AdminAddr() + "/ui/"
	// The page asks for the token, keeps it for the tab and opens.
	run("log in", chromedp.EmulateViewport(1280, 800), chromedp.Navigate(ui),
		chromedp.WaitVisible(`#login-form`), chromedp.SendKeys(`#token`, adminToken), chromedp.Click(`#login-form button[type="submit"]`, chromedp.NodeVisible),
		chromedp.WaitReady(`body[data-loaded="overview"]`))
	if stored := evalString(`sessionStorage.getItem('omnigate.admin.token')`); stored != adminToken {
		t.Errorf("the token in sessionStorage: %q", stored)
	}

	// Overview: the charts draw once the sampler has a few samples (more
	// for the screenshots).
	points := 6
	if shots != "" {
		points = 2 * 40
	}
	waitFor(t, "the request chart to draw", 50*time.Second, func() bool {
		return evalInt(`Number(document.getElementById('chart-rps').dataset.points || 0)`) >= points
	})
	for _, id := range []string{"chart-rps", "chart-latency", "chart-status", "chart-cache"} {
		if evalInt(`document.querySelectorAll('#`+id+` path.series').length`) == 0 {
			t.Errorf("%s: no series drawn", id)
		}
	}
	routes := evalInt(`document.querySelectorAll('#ov-routes tbody tr').length`)
	comps := evalInt(`document.querySelectorAll('#ov-components tbody tr').length`)
	if routes != 2 || comps < 6 {
		t.Errorf("overview: %d routes, %d components", routes, comps)
	}
	shoot("overview")

	// Rate limiting: unblock the nurse.
	page("ratelimit")
	run("rate limit tables", chromedp.WaitVisible(`button[data-action="unblock"][data-key="user:nurse"]`))
	shoot("ratelimit")
	run("unblock", chromedp.Click(`button[data-action="unblock"][data-key="user:nurse"]`, chromedp.NodeVisible))
	confirm()
	waitFor(t, "the block to be lifted", 5*time.Second, func() bool {
		adm.json("GET", "/admin/ratelimit/blocks", adminToken, &blocks)
		return len(blocks.Blocks) == 0
	})

	// Sessions: the physician's two, revoke one, then all.
	page("sessions")
	run("list sessions", chromedp.SendKeys(`#ss-user`, "physician"), chromedp.Click(`#ss-form button[type="submit"]`, chromedp.NodeVisible),
		chromedp.WaitVisible(`button[data-action="revoke"]`))
	if listed := evalInt(`document.querySelectorAll('button[data-action="revoke"]').length`); listed != 2 {
		t.Errorf("the physician's sessions in the page: %d, want 2", listed)
	}
	shoot("sessions")
	var sess struct{ Sessions []struct{ ID string } }
	adm.json("GET", "/admin/users/physician/sessions", adminToken, &sess)
	if len(sess.Sessions) != 2 {
		t.Fatalf("the physician's sessions: %+v", sess)
	}
	run("revoke one", chromedp.Click(`button[data-action="revoke"][data-id="`+sess.Sessions[0].ID+`"]`, chromedp.NodeVisible))
	confirm()
	waitFor(t, "one session to be revoked", 5*time.Second, func() bool {
		adm.json("GET", "/admin/users/physician/sessions", adminToken, &sess)
		return len(sess.Sessions) == 1
	})
	run("revoke all", chromedp.WaitVisible(`#ss-list button[data-action="revoke"]`), chromedp.Click(`#ss-revoke-all`, chromedp.NodeVisible))
	confirm()
	waitFor(t, "every session of the physician to be revoked", 5*time.Second, func() bool {
		adm.json("GET", "/admin/users/physician/sessions", adminToken, &sess)
		return len(sess.Sessions) == 0
	})
	if res, _ := pub.do("GET", "/fhir/R4/Patient/p1", doc, ""); res.StatusCode != 401 {
		t.Errorf("a revoked session still reads: %d", res.StatusCode)
	}

	// Cache: alice's read of Patient/p3 is a hit until the page purges it.
	al := pub.login("alice")
	pub.do("GET", "/fhir/R4/Patient/p3", al, "")
	if res, _ := pub.do("GET", "/fhir/R4/Patient/p3", al, ""); res.Header.Get("X-Cache") != "HIT" {
		t.Fatalf("second read: X-Cache %q, want HIT", res.Header.Get("X-Cache"))
	}
	page("cache")
	shoot("cache")
	run("purge", chromedp.SendKeys(`#ca-tags`, "Patient/p3"), chromedp.Click(`#ca-purge button[type="submit"]`, chromedp.NodeVisible))
	confirm()
	run("purge notice", chromedp.WaitVisible(`#notice:not([hidden])`))
	if note := evalString(`document.getElementById('notice').textContent`); !strings.Contains(note, "Purged") {
		t.Errorf("notice after the purge: %q", note)
	}
	if res, _ := pub.do("GET", "/fhir/R4/Patient/p3", al, ""); res.Header.Get("X-Cache") == "HIT" {
		t.Errorf("a read after the purge is still a HIT")
	}

	// Plugins.
	page("plugins")
	if plugins := evalInt(`document.querySelectorAll('#pl-list tbody tr').length`); plugins != 5 {
		t.Errorf("plugins page: %d rows, want 5", plugins)
	}
	shoot("plugins")

	// FHIR store: counts, a backup from the button, the audit trail.
	page("fhir")
	if patients := evalString(`[...document.querySelectorAll('#fh-types .bar')].map(b => b.textContent).join('|')`); !strings.Contains(patients, "Patient4") {
		t.Errorf("resource counts in the page: %q", patients)
	}
	run("backup", chromedp.Click(`#fh-backup-now`, chromedp.NodeVisible))
	confirm()
	var st struct {
		Backups    int
		LastBackup *struct{ Path string } `json:"last_backup"`
	}
	waitFor(t, "a backup", 10*time.Second, func() bool {
		adm.json("GET", "/admin/fhir/stats", adminToken, &st)
		return st.Backups == 1 && st.LastBackup != nil
	})
	waitFor(t, "the nurse's reads in the audit trail", 10*time.Second, func() bool {
		var b struct{ Entry []any }
		adm.json("GET", "/admin/audit/events?patient=p2", adminToken, &b)
		return len(b.Entry) > 0
	})
	run("audit search", chromedp.SendKeys(`#au-patient`, "p2"), chromedp.Click(`#au-form button[type="submit"]`, chromedp.NodeVisible),
		chromedp.WaitVisible(`#au-events tbody tr`))
	if evalInt(`document.querySelectorAll('#au-events tbody tr td:not(.empty)').length`) == 0 {
		t.Error("the audit search in the page found nothing")
	}
	run("reload the page's data", chromedp.Click(`#nav a[data-page="fhir"]`), chromedp.WaitReady(`body[data-loaded="fhir"]`))
	shoot("fhir")

	mu.Lock()
	if len(problems) > 0 {
		t.Errorf("the console logged problems:\n%s", strings.Join(problems, "\n"))
	}
	mu.Unlock()

	// Every action was logged with who made it, never the token.
	out := logs.String()
	if strings.Contains(out, adminToken) {
		t.Error("the admin token is in the log")
	}
	for _, want := range []string{`"path":"/admin/ratelimit/blocks/user:nurse"`, `"path":"/admin/users/physician/sessions"`,
		`"path":"/admin/cache/purge"`, `"path":"/admin/fhir/backup"`} {
		found := false
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, `"msg":"admin action"`) && strings.Contains(line, want) &&
				strings.Contains(line, `"token":"`+gateway.TokenFingerprintOf(adminToken)+`"`) && strings.Contains(line, `"client_ip":"127.0.0.1"`) {
				found = true
			}
		}
		if !found {
			t.Errorf("no admin action logged with %s", want)
		}
	}
}
