package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/pgtest"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "omnigate-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "omnigate")
	out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build omnigate: %v\n%s", err, out)
		os.Exit(1)
	}
	code := pgtest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func TestExampleConfigsCheck(t *testing.T) {
	files, _ := filepath.Glob("../../examples/configs/*.yaml")
	if len(files) < 2 {
		t.Fatalf("expected example configs, found %v", files)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cmd := exec.Command(binary, "config", "check", f)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("omnigate config check %s: %v\n%s", f, err, out)
			}
			if !strings.Contains(string(out), ": ok\n") || !strings.Contains(string(out), "routes:") {
				t.Errorf("unexpected output:\n%s", out)
			}
		})
	}
}

func TestConfigCheckPrintsChainsAndErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte(`
routes:
  - name: legacy
    path: /legacy/*rest
    methods: [GET]
    upstream: http://127.0.0.1:9
`), 0o644)
	code, out, errOut := runCLI("config", "check", good)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "legacy  GET  /legacy/*rest  upstream http://127.0.0.1:9") {
		t.Errorf("chain not printed:\n%s", out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("routes:\n  - path: /x\n    upstream: http://h\n    plugins: [nope]\n"), 0o644)
	code, _, errOut = runCLI("config", "check", bad)
	if code != 1 || !strings.Contains(errOut, bad+`:4:15: routes[0].plugins[0]: no plugin named "nope"`) {
		t.Errorf("bad config: exit %d, stderr %q", code, errOut)
	}
	// A FHIR package that cannot be read is an error at its key and line.
	pkgs := filepath.Join(dir, "packages.yaml")
	os.WriteFile(pkgs, []byte("fhir:\n  validation:\n    packages:\n      - "+filepath.Join(dir, "missing.tgz")+"\n"), 0o644)
	code, _, errOut = runCLI("config", "check", pkgs)
	if code != 1 || !strings.Contains(errOut, pkgs+":4:") || !strings.Contains(errOut, "fhir.validation.packages[0]") {
		t.Errorf("missing package: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ := runCLI("config", "check", filepath.Join(dir, "missing.yaml")); code != 1 {
		t.Errorf("missing file: exit %d", code)
	}
	if code, out, _ := runCLI("config", "default"); code != 0 || !strings.Contains(out, "routes:") {
		t.Errorf("config default: %d %q", code, out)
	}
	// The embedded default config checks, with its chains.
	code, out, errOut = runCLI("config", "check")
	if code != 0 || !strings.Contains(out, "session -> audit -> authz -> ratelimit -> cache -> fhir") {
		t.Errorf("config check of the embedded config: %d %s %s", code, out, errOut)
	}
	if code, _, errOut := runCLI("frobnicate"); code != 2 || !strings.Contains(errOut, "unknown command") {
		t.Errorf("unknown command: %d %q", code, errOut)
	}
}

// proc is a running omnigate serve.
type proc struct {
	cmd           *exec.Cmd
	mu            sync.Mutex
	log           bytes.Buffer
	listen, admin string
	ready         chan struct{}
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

func startServe(t *testing.T, args ...string) *proc {
	t.Helper()
	return startServeBinary(t, binary, args...)
}

// startServeBinary runs bin serve args on loopback ports.
func startServeBinary(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{ready: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"serve"}, args...)...)
	p.cmd.Env = append(os.Environ(), "OMNIGATE_LISTEN=127.0.0.1:0", "OMNIGATE_ADMIN=127.0.0.1:0")
	p.cmd.Dir = t.TempDir()
	stderr, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			var m struct{ Msg, Listen, Admin string }
			if json.Unmarshal([]byte(line), &m) == nil && m.Msg == "serving" {
				p.listen, p.admin = m.Listen, m.Admin
				once.Do(func() { close(p.ready) })
			}
		}
	}()
	select {
	case <-p.ready:
	case <-time.After(2 * time.Minute): // a deadline, not an expectation: a loaded machine starts slowly
		t.Fatalf("omnigate serve did not start:\n%s", p.logs())
	}
	return p
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServeReloadOnSIGHUPAndDrainOnSIGTERM(t *testing.T) {
	// /slow is answered when the test says so: it is in flight while the
	// gateway drains.
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			select {
			case <-release:
			case <-time.After(time.Minute):
			}
		}
		io.WriteString(w, "upstream "+r.URL.Path)
	}))
	defer up.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	file := filepath.Join(t.TempDir(), "omnigate.yaml")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("routes:\n  - name: one\n    path: /one/*rest\n    upstream: " + up.URL + "\n  - name: slow\n    path: /slow\n    upstream: " + up.URL + "\n")
	p := startServe(t, "-config", file)
	base, admin := "http://"+p.listen, "http://"+p.admin

	if code, body := httpGet(t, admin+"/ping"); code != 200 || !strings.Contains(body, `"status": "ok"`) {
		t.Fatalf("/ping: %d %s", code, body)
	}
	if code, body := httpGet(t, base+"/one/x"); code != 200 || body != "upstream /one/x" {
		t.Fatalf("/one/x: %d %s", code, body)
	}

	// A new config swaps in on SIGHUP.
	write("routes:\n  - name: two\n    path: /two/*rest\n    upstream: " + up.URL + "\n  - name: slow\n    path: /slow\n    upstream: " + up.URL + "\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload", func() bool { code, _ := httpGet(t, base+"/two/y"); return code == 200 })
	if code, _ := httpGet(t, base+"/one/x"); code != 404 {
		t.Errorf("old route still served after reload: %d", code)
	}

	// A bad config on SIGHUP is rejected; the running one keeps serving.
	write("routes:\n  - name: three\n    path: /three\n    upstream: http://h\n    plugins: [ghost]\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the rejection", func() bool { return strings.Contains(p.logs(), "config reload rejected") })
	if !strings.Contains(p.logs(), `no plugin named \"ghost\"`) {
		t.Errorf("rejection does not say why:\n%s", p.logs())
	}
	if code, body := httpGet(t, base+"/two/y"); code != 200 {
		t.Errorf("running config stopped serving after a bad reload: %d %s", code, body)
	}

	// SIGTERM drains: an in-flight request completes, then the process exits 0.
	slow := make(chan int, 1)
	go func() { code, _ := httpGet(t, base+"/slow"); slow <- code }()
	select {
	case <-arrived:
	case <-time.After(time.Minute):
		t.Fatal("the slow request never reached the upstream")
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, "the drain", func() bool { return strings.Contains(p.logs(), `"msg":"draining"`) })
	close(release)
	if code := <-slow; code != 200 {
		t.Errorf("in-flight request during drain: %d", code)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, p.logs())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("did not exit after SIGTERM")
	}
	if !strings.Contains(p.logs(), `"msg":"stopped"`) {
		t.Errorf("no clean stop in logs:\n%s", p.logs())
	}
}

func TestUserAdd(t *testing.T) {
	file := filepath.Join(t.TempDir(), "users.yaml")
	code, out, errOut := runCLI("user", "add", "-file", file, "-username", "dana", "-role", "nurse", "-scopes", "user/*.rs, openid")
	if code != 0 || !strings.Contains(out, "password: ") {
		t.Fatalf("exit %d: %s %s", code, out, errOut)
	}
	stdin = strings.NewReader("a-long-enough-password\n")
	defer func() { stdin = os.Stdin }()
	code, out, errOut = runCLI("user", "add", "-file", file, "-username", "pat", "-role", "patient", "-patient", "85", "-password-stdin")
	if code != 0 || strings.Contains(out, "password:") {
		t.Fatalf("exit %d: %s %s", code, out, errOut)
	}
	data, _ := os.ReadFile(file)
	for _, want := range []string{"username: dana", "role: nurse", "- user/*.rs", "- openid", "username: pat", "patient: \"85\"", "password_hash: $2a$"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("users file lacks %q:\n%s", want, data)
		}
	}
	if strings.Contains(string(data), "a-long-enough-password") {
		t.Error("plain password stored")
	}
	stdin = strings.NewReader("short\n")
	if code, _, errOut := runCLI("user", "add", "-file", file, "-username", "x", "-role", "nurse", "-password-stdin"); code != 1 || !strings.Contains(errOut, "at least 8") {
		t.Errorf("short password: %d %s", code, errOut)
	}
	if code, _, _ := runCLI("user", "add", "-file", file, "-role", "nurse"); code != 2 {
		t.Errorf("missing username: %d", code)
	}
}

// TestUserAddKeepsWhatItDoesNotChange: adding an existing user again (the
// documented way to reset a password) keeps the role, scopes and patient
// the command line does not give, and says it updated the user.
func TestUserAddKeepsWhatItDoesNotChange(t *testing.T) {
	file := filepath.Join(t.TempDir(), "users.yaml")
	if code, out, errOut := runCLI("user", "add", "-file", file, "-username", "dana", "-role", "nurse", "-scopes", "user/*.rs,openid", "-patient", "85"); code != 0 {
		t.Fatalf("exit %d: %s %s", code, out, errOut)
	}
	before, _ := os.ReadFile(file)
	code, out, errOut := runCLI("user", "add", "-file", file, "-username", "dana")
	if code != 0 || !strings.Contains(out, "user dana (nurse) updated in") || !strings.Contains(out, "password changed, the rest kept") {
		t.Fatalf("exit %d: %q %q", code, out, errOut)
	}
	after, _ := os.ReadFile(file)
	for _, want := range []string{"role: nurse", "- user/*.rs", "- openid", "patient: \"85\""} {
		if !strings.Contains(string(after), want) {
			t.Errorf("users file lost %q:\n%s", want, after)
		}
	}
	if string(before) == string(after) {
		t.Error("the password hash did not change")
	}
	// Given flags change only what they name; an empty -scopes clears them.
	if code, out, errOut := runCLI("user", "add", "-file", file, "-username", "dana", "-role", "physician", "-scopes", ""); code != 0 || !strings.Contains(out, "role, scopes, password changed") {
		t.Fatalf("exit %d: %q %q", code, out, errOut)
	}
	after, _ = os.ReadFile(file)
	if !strings.Contains(string(after), "role: physician") || strings.Contains(string(after), "openid") || !strings.Contains(string(after), "patient: \"85\"") {
		t.Errorf("users file after a role and scope change:\n%s", after)
	}
	// A new user still needs a role; extra arguments are refused.
	if code, _, errOut := runCLI("user", "add", "-file", file, "-username", "eve"); code != 1 || !strings.Contains(errOut, "-role is required") {
		t.Errorf("new user without a role: %d %q", code, errOut)
	}
	if code, _, _ := runCLI("user", "add", "-file", file, "-username", "dana", "extra"); code != 2 {
		t.Errorf("extra argument: %d", code)
	}
}

// TestReadmeLoginFailsLoudly runs the README tour's login helper against
// the embedded default config: the right password gives a bare token, a
// wrong one a message on stderr, a failing status and an empty variable
// (not an error document where the token should be).
func TestReadmeLoginFailsLoudly(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)\nlogin\(\) \{.*?; \}; \}\n`).Find(readme)
	if m == nil {
		t.Fatal("README.md has no login() helper")
	}
	p := startServe(t)
	var pass string
	for _, line := range strings.Split(p.logs(), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "physician" {
			pass = f[1]
		}
	}
	if pass == "" {
		t.Fatalf("no first-run password printed:\n%s", p.logs())
	}
	fn := strings.ReplaceAll(string(m), "localhost:8080", p.listen)
	login := func(password string) (code int, stdout, stderr string) {
		cmd := exec.Command("bash", "-c", fn+`TOKEN=$(login physician "$1") || exit 3; printf %s "$TOKEN"`, "bash", password)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, o.String(), e.String()
	}
	code, out, errOut := login(pass)
	if code != 0 || len(out) < 20 || strings.ContainsAny(out, "{}\" \n") {
		t.Errorf("right password: exit %d, token %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = login("wrong-password")
	if code != 3 || out != "" || !strings.Contains(errOut, "login as physician failed") {
		t.Errorf("wrong password: exit %d, token %q, stderr %q", code, out, errOut)
	}
}

// TestCLIHelpAndArguments: help works the same on every command and
// subcommand (to stdout, exit 0, that command's usage), --version works,
// config check takes -config like the other commands, and extra arguments
// are refused.
func TestCLIHelpAndArguments(t *testing.T) {
	helps := map[string]string{
		"help":                  "usage: omnigate <command>",
		"--help":                "usage: omnigate <command>",
		"help serve":            "usage: omnigate serve",
		"serve -h":              "-config",
		"serve --help":          "-config",
		"config -h":             "usage: omnigate config check",
		"config check -h":       "usage: omnigate config check [-config FILE | FILE]",
		"help config check":     "-config",
		"config default --help": "usage: omnigate config default",
		"user -h":               "usage: omnigate user add",
		"user add -h":           "-password-stdin",
		"plugin -h":             "usage: omnigate plugin init",
		"plugin init -h":        "-lang",
		"plugin build -h":       "-o",
		"fhir -h":               "usage: omnigate fhir import",
		"fhir import -h":        "-config",
		"fhir check --help":     "-config",
		"fhir copy -h":          "-force",
		"help fhir migrate":     "-dry-run",
		"scaletest -h":          "-instances",
		"version -h":            "omnigate ",
	}
	for args, want := range helps {
		code, out, errOut := runCLI(strings.Fields(args)...)
		if code != 0 || !strings.Contains(out, want) || errOut != "" || strings.Contains(out, "unknown subcommand") {
			t.Errorf("omnigate %s: exit %d, stdout %q, stderr %q; want exit 0 and %q on stdout", args, code, out, errOut, want)
		}
	}
	if code, out, _ := runCLI("--version"); code != 0 || !strings.HasPrefix(out, "omnigate ") {
		t.Errorf("--version: %d %q", code, out)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	os.WriteFile(file, []byte("routes:\n  - path: /a\n    upstream: http://127.0.0.1:1\n"), 0o600)
	if code, out, errOut := runCLI("config", "check", "-config", file); code != 0 || !strings.Contains(out, file+": ok") {
		t.Errorf("config check -config: %d %q %q", code, out, errOut)
	}
	for _, args := range [][]string{
		{"serve", "extra"}, {"scaletest", "extra"}, {"version", "extra"}, {"config", "default", "extra"},
		{"config", "check", file, "extra"}, {"config", "check", "-config", file, file},
		{"fhir", "check", "extra"}, {"fhir", "migrate", "extra"}, {"user", "add", "-username", "x", "extra"},
	} {
		if code, _, errOut := runCLI(args...); code != 2 || errOut == "" {
			t.Errorf("omnigate %s: exit %d, stderr %q; want 2 and a message", strings.Join(args, " "), code, errOut)
		}
	}
}
