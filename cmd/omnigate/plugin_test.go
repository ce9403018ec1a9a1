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
