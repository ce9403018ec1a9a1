package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tryMake runs make in dir with the test's environment plus
// GOFLAGS=-mod=mod and the omnigate binary built for the tests, for at
// most timeout; its process group is killed at the deadline.
func tryMake(dir, target string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", target, "OMNIGATE="+binary)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod "+os.Getenv("GOFLAGS"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// runMake is tryMake failing the test with make's output when it fails.
func runMake(t *testing.T, dir, target string) string {
	t.Helper()
	out, err := tryMake(dir, target, 5*time.Minute)
	if err != nil {
		t.Fatalf("make %s in %s: %v\n%s", target, dir, err, out)
	}
	return out
}

// TestPluginInit writes a skeleton of each kind into a directory outside
// the repository and builds and tests it there with its own Makefile, the
// Go ones against this checkout's SDK modules (-sdk).
func TestPluginInit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds three modules outside the repository")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	root := repoRoot(t)
	for _, tc := range []struct {
		lang  string
		files []string
		want  []string // in the output of make test
	}{
		{"go", []string{"main.go", "main_test.go", "cases.yaml", "go.mod", "Makefile", "README.md"},
			[]string{"ok  \tmy-go", "ok    cases.yaml: 2 cases passed"}},
		{"external", []string{"main.go", "main_test.go", "go.mod", "Makefile", "README.md"},
			[]string{"ok  \tmy-external"}},
		{"assemblyscript", []string{"assembly/index.ts", "package.json", "asconfig.json", "cases.yaml", "Makefile", "README.md"},
			[]string{"ok    cases.yaml: 2 cases passed"}},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			t.Parallel()
			name := "my-" + tc.lang
			dir := filepath.Join(t.TempDir(), name)
			code, out, errOut := runCLI("plugin", "init", name, "-lang", tc.lang, "-dir", dir, "-sdk", root)
			if code != 0 || !strings.Contains(out, "wrote "+tc.lang+" plugin "+name) {
				t.Fatalf("exit %d:\n%s%s", code, out, errOut)
			}
			for _, f := range tc.files {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Errorf("no %s: %v", f, err)
				}
			}
			if tc.lang == "assemblyscript" {
				for _, tool := range []string{"node", "npm", "npx"} {
					if _, err := exec.LookPath(tool); err != nil {
						t.Skipf("the AssemblyScript skeleton was written; building it needs %s, which is not installed", tool)
					}
				}
				// assemblyscript comes from the npm registry.
				if out, err := tryMake(dir, "node_modules", 3*time.Minute); err != nil {
					t.Skipf("the AssemblyScript skeleton was written; npm install failed (is the npm registry reachable?): %v\n%s", err, out)
				}
			}
			out = runMake(t, dir, "test")
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("make test lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestPluginInitErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x"), nil, 0o644)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"Bad_Name"}, 2, "use lower-case letters"},
		{[]string{"p", "-lang", "rust"}, 2, `-lang "rust": go, assemblyscript or external`},
		{[]string{"p", "-dir", dir}, 1, "exists and is not empty"},
		{[]string{"p", "-sdk", dir}, 2, "is not a checkout of the omnigate repository"},
		{nil, 2, "usage"},
	} {
		code, _, errOut := runCLI(append([]string{"plugin", "init"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("plugin init %v: exit %d: %s", tc.args, code, errOut)
		}
	}
	// Without -sdk, go.mod says how to use a checkout until the SDK is tagged.
	out := filepath.Join(dir, "plain")
	if code, _, errOut := runCLI("plugin", "init", "plain", "-lang", "external", "-dir", out); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	mod, _ := os.ReadFile(filepath.Join(out, "go.mod"))
	if !strings.Contains(string(mod), "// \tgithub.com/omnigate/omnigate/sdk/external => ../omnigate/sdk/external") ||
		!strings.Contains(string(mod), "sdk/external/v0.x.y") {
		t.Errorf("go.mod:\n%s", mod)
	}
}
