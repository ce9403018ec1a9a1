package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPluginBuildAndTest builds every example with "omnigate plugin build"
// and runs its cases with "omnigate plugin test"; a deliberately wrong case
// must make the command fail.
func TestPluginBuildAndTest(t *testing.T) {
	examples := []string{"require-header", "smart-scopes", "phi-redact", "tenant-quota", "break-glass"}
	dir := t.TempDir()
	for _, ex := range examples {
		t.Run(ex, func(t *testing.T) {
			src := filepath.Join("..", "..", "examples", ex)
			mod := filepath.Join(dir, ex+".wasm")
			code, out, errOut := runCLI("plugin", "build", "-o", mod, src)
			if code != 0 || !strings.Contains(out, "built "+mod) {
				t.Fatalf("plugin build: exit %d\n%s%s", code, out, errOut)
			}
			code, out, errOut = runCLI("plugin", "test", mod, filepath.Join(src, "cases.yaml"))
			if code != 0 || strings.Contains(out, "FAIL") || !strings.Contains(out, "cases passed") {
				t.Fatalf("plugin test: exit %d\n%s%s", code, out, errOut)
			}
			// Under the gateway's default deadline.
			if !strings.Contains(out, "a call may use 10ms of CPU, 1s of wall-clock time") {
				t.Errorf("plugin test does not run under the default deadline:\n%s", out)
			}
		})
	}
	t.Run("wrong case", func(t *testing.T) {
		cases := filepath.Join(dir, "wrong.yaml")
		os.WriteFile(cases, []byte("config: {header: X-Tenant}\ncases:\n  - name: expects the wrong status\n    request: {path: /fhir/R4/Patient/1}\n    expect: {status: 200}\n"), 0o644)
		code, out, _ := runCLI("plugin", "test", filepath.Join(dir, "require-header.wasm"), cases)
		if code != 1 || !strings.Contains(out, "FAIL  expects the wrong status") || !strings.Contains(out, "status = 400, want 200") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("failures explained", func(t *testing.T) {
		testPluginTestExplains(t, dir)
	})
	t.Run("deadline flags", func(t *testing.T) {
		code, out, errOut := runCLI("plugin", "test", "-timeout", "50ms", "-wall-timeout", "2s",
			filepath.Join(dir, "require-header.wasm"), filepath.Join("..", "..", "examples", "require-header", "cases.yaml"))
		if code != 0 || !strings.Contains(out, "a call may use 50ms of CPU, 2s of wall-clock time") {
			t.Fatalf("exit %d:\n%s%s", code, out, errOut)
		}
		if code, _, errOut := runCLI("plugin", "test", "-timeout", "-1s", "a.wasm", "b.yaml"); code != 2 || !strings.Contains(errOut, "usage") {
			t.Fatalf("a negative timeout: exit %d: %s", code, errOut)
		}
	})
	t.Run("usage", func(t *testing.T) {
		if code, _, errOut := runCLI("plugin", "test", "only-one-arg"); code != 2 || !strings.Contains(errOut, "usage") {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if code, _, errOut := runCLI("plugin", "build", filepath.Join(dir, "nowhere")); code != 1 || !strings.Contains(errOut, "build plugin") {
			t.Fatalf("exit %d: %s", code, errOut)
		}
	})
}

// testPluginTestExplains runs "omnigate plugin test" on cases that fail in
// each way a case can, and on bad cases files, and checks what it says:
// the expectation, expected against got, the plugin's log lines and its
// failure, and the exit status.
func testPluginTestExplains(t *testing.T, dir string) {
	requireHeader := filepath.Join(dir, "require-header.wasm")
	smartScopes := filepath.Join(dir, "smart-scopes.wasm")
	failing := filepath.Join(dir, "failing.wasm")
	if code, out, errOut := runCLI("plugin", "build", "-o", failing, filepath.Join("testdata", "failing-plugin")); code != 0 {
		t.Fatalf("plugin build: exit %d\n%s%s", code, out, errOut)
	}
	write := func(name, yaml string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, tc := range []struct {
		name, module, cases string
		args                []string
		code                int
		want                []string
		absent              []string
	}{
		{name: "status, decision and header", module: requireHeader, code: 1, cases: `
config: {header: X-Tenant}
cases:
  - name: wrong status
    request: {path: /fhir/R4/Patient/1}
    expect: {decision: allow, status: 200, headers: {Content-Type: application/json}}
`, want: []string{"FAIL  wrong status", "decision = deny, want allow", "status = 400, want 200",
			`header Content-Type = "application/fhir+json; charset=utf-8", want "application/json"`,
			`response: deny 400 "{\"resourceType\":\"OperationOutcome\"`, "logs: none", "1 of 1 cases failed"}},
		{name: "exact body, as a diff", module: requireHeader, code: 1, cases: `
config: {header: X-Tenant}
cases:
  - name: exact body
    request: {path: /fhir/R4/Patient/1, headers: {X-Tenant: acme}}
    upstream: {body: '{"resourceType":"Patient","id":"1","active":true}'}
    expect: {body: '{"resourceType":"Patient","id":"2","active":true}'}
  - name: text body
    request: {path: /x, headers: {X-Tenant: acme}}
    upstream: {body: 'hello world'}
    expect: {body: 'hello there'}
`, want: []string{"body differs (- want, + got):", `-   "id": "2",`, `+   "id": "1",`, `    "active": true`,
			`- "hello there"`, `+ "hello world"`, "(first difference at byte 6)", "2 of 2 cases failed"}},
		{name: "partial JSON body", module: requireHeader, code: 1, cases: `
config: {header: X-Tenant}
cases:
  - name: json members
    request: {path: /fhir/R4/Patient/1}
    expect: {body_json: {resourceType: Patient, issue: [{severity: warning}]}}
`, want: []string{`body.resourceType = "OperationOutcome", want "Patient"`, `body.issue = [{"code":`}},
		{name: "the plugin's log lines", module: smartScopes, code: 1, cases: `
config: {break_glass_header: X-Break-Glass-Granted}
cases:
  - name: a patient reads another patient's observation
    request: {path: /fhir/R4/Observation/o2}
    identity: {user: pat1, role: patient, scopes: [patient/Observation.rs], patient: p1}
    upstream: {body: '{"resourceType":"Observation","id":"o2","subject":{"reference":"Patient/p2"}}'}
    expect: {decision: allow}
`, want: []string{"decision = deny, want allow", "logs:", "INFO smart-scopes withheld a read response outside the patient's compartment"}},
		{name: "the plugin's failure", module: failing, code: 1, cases: `
cases:
  - name: expects an allow
    request: {path: /fhir/R4/Patient/1, headers: {X-Panic: on purpose}}
    expect: {decision: allow}
`, want: []string{"decision = fail, want allow", "response: fail 500", "plugin failed in the request phase (trap): wasm error: unreachable",
			"INFO about to panic", "panic: failing-plugin: on purpose"}},
		{name: "-run selects cases", module: requireHeader, code: 0, args: []string{"-run", "^with the"}, cases: `
config: {header: X-Tenant}
cases:
  - name: without the header
    request: {path: /fhir/R4/Patient/1}
    expect: {status: 200}
  - name: with the header
    request: {path: /fhir/R4/Patient/1, headers: {X-Tenant: acme}}
    expect: {status: 200}
`, want: []string{"ok    with the header", "1 cases passed", "1 of 2 cases selected"}, absent: []string{"without the header"}},
		{name: "a string config is a JSON string", module: requireHeader, code: 1, cases: `
config: X-Tenant
cases: [{request: {path: /}}]
`, want: []string{"cannot unmarshal string"}},
		{name: "an unknown key", module: requireHeader, code: 2, cases: `
cases:
  - request: {path: /}
    expect: {statsu: 200}
`, want: []string{"bad cases file", "line 4: field statsu not found"}},
		{name: "an unknown decision", module: requireHeader, code: 2, cases: `
cases:
  - name: one
    expect: {decision: denied}
`, want: []string{`case "one": decision must be allow, deny or fail, not "denied"`}},
		{name: "no cases", module: requireHeader, code: 2, cases: "config: {header: X}\n", want: []string{"no cases"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := write(strings.ReplaceAll(tc.name, " ", "_")+".yaml", tc.cases)
			code, out, errOut := runCLI(append(append([]string{"plugin", "test"}, tc.args...), tc.module, f)...)
			all := out + errOut
			if code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			for _, w := range tc.absent {
				if strings.Contains(all, w) {
					t.Errorf("output has %q", w)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", all)
			}
		})
	}
	t.Run("a missing cases file", func(t *testing.T) {
		if code, _, errOut := runCLI("plugin", "test", requireHeader, filepath.Join(dir, "none.yaml")); code != 2 || !strings.Contains(errOut, "no such file") {
			t.Errorf("exit %d: %s", code, errOut)
		}
	})
	t.Run("a plugin directory", func(t *testing.T) {
		code, out, errOut := runCLI("plugin", "test", filepath.Join("..", "..", "examples", "require-header"))
		if code != 0 || !strings.Contains(out, "cases passed") {
			t.Errorf("exit %d:\n%s%s", code, out, errOut)
		}
	})
}

// TestConfigCheckPluginFiles: config check reports an external plugin's
// executable that serve would not find, with the line of its path; a
// missing .wasm file is a config error too.
func TestConfigCheckPluginFiles(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-exec")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	f := filepath.Join(dir, "omnigate.yaml")
	os.WriteFile(f, []byte(`plugins:
  missing: {type: external, path: ./bin/nothere}
  plain:
    type: external
    path: `+notExec+`
  unknown:
    type: external
    path: no-such-omnigate-plugin
routes:
  - path: /x/*rest
    upstream: http://127.0.0.1:9
    plugins: [missing, plain, unknown]
`), 0o644)
	code, out, errOut := runCLI("config", "check", f)
	if code != 1 || strings.Contains(out, "ok") {
		t.Errorf("exit %d, stdout %q", code, out)
	}
	for _, want := range []string{
		f + ":2:35: plugins.missing.path: stat ./bin/nothere: no such file or directory",
		f + ":5:11: plugins.plain.path: " + notExec + " is not an executable file",
		f + `:8:11: plugins.unknown.path: exec: "no-such-omnigate-plugin": executable file not found in $PATH`,
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	os.WriteFile(f, []byte(`plugins:
  w: {type: wasm, path: `+filepath.Join(dir, "nothere.wasm")+`}
routes:
  - {path: /x/*rest, upstream: "http://127.0.0.1:9", plugins: [w]}
`), 0o644)
	if code, _, errOut := runCLI("config", "check", f); code != 1 || !strings.Contains(errOut, "nothere.wasm") {
		t.Errorf("a missing .wasm: exit %d: %s", code, errOut)
	}
}
