package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The modules a plugin outside this repository depends on, and where they
// are in it. Until the SDKs are tagged, such a plugin replaces them with a
// checkout, as the tests below do.
var sdkModules = map[string]string{
	"github.com/omnigate/omnigate":              ".",
	"github.com/omnigate/omnigate/sdk/wasm":     "sdk/wasm",
	"github.com/omnigate/omnigate/sdk/external": "sdk/external",
}

// repoRoot is the repository's root directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// goCmd runs the go command in dir, with the test's environment plus
// GOFLAGS=-mod=mod (go.sum is written as modules are resolved), and fails
// the test with its output when it fails.
func goCmd(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod "+os.Getenv("GOFLAGS"))
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// useLocalSDK makes the module in dir require the given modules of this
// repository at v0.0.0, replaced by the checkout, as a plugin author does
// before the SDKs are tagged; every module of the repository is replaced,
// since the replaces of a dependency's go.mod do not apply. Then it tidies
// the module.
func useLocalSDK(t *testing.T, dir string, require ...string) {
	t.Helper()
	root := repoRoot(t)
	args := []string{"mod", "edit"}
	for _, m := range require {
		args = append(args, "-require="+m+"@v0.0.0")
	}
	for m, sub := range sdkModules {
		args = append(args, "-replace="+m+"="+filepath.Join(root, sub))
	}
	goCmd(t, dir, nil, args...)
	goCmd(t, dir, nil, "mod", "tidy")
}

// copyExample copies the files of examples/name into a new module outside
// the repository and returns its directory.
func copyExample(t *testing.T, name, module string) string {
	t.Helper()
	src := filepath.Join(repoRoot(t), "examples", name)
	dir := filepath.Join(t.TempDir(), name)
	if err := os.CopyFS(dir, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	goCmd(t, dir, nil, "mod", "init", module)
	return dir
}

// TestExamplesBuildOutsideTheRepository copies a Wasm and an external
// example into modules of their own outside the repository, depending on
// the SDK modules (replaced by this checkout), and builds and tests them
// there: what a plugin in its own repository does.
func TestExamplesBuildOutsideTheRepository(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two modules outside the repository")
	}
	t.Run("wasm require-header", func(t *testing.T) {
		t.Parallel()
		dir := copyExample(t, "require-header", "example.com/require-header")
		// The guest needs only sdk/wasm; its test, the host-side harness
		// sdk/wasmtest, which is part of the gateway's module.
		useLocalSDK(t, dir, "github.com/omnigate/omnigate/sdk/wasm", "github.com/omnigate/omnigate")
		goCmd(t, dir, []string{"GOOS=wasip1", "GOARCH=wasm"}, "build", "-buildmode=c-shared", "-o", "plugin.wasm", ".")
		if st, err := os.Stat(filepath.Join(dir, "plugin.wasm")); err != nil || st.Size() == 0 {
			t.Fatalf("no module built: %v", err)
		}
		out := goCmd(t, dir, nil, "test", "-count=1", "./...")
		if !strings.Contains(out, "ok  \texample.com/require-header") {
			t.Fatalf("go test:\n%s", out)
		}
	})
	t.Run("external external-audit", func(t *testing.T) {
		t.Parallel()
		dir := copyExample(t, "external-audit", "example.com/external-audit")
		useLocalSDK(t, dir, "github.com/omnigate/omnigate/sdk/external")
		mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		// The external SDK and its harness need neither the gateway nor
		// the guest SDK.
		for _, line := range strings.Split(string(mod), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "github.com/omnigate/omnigate v") ||
				strings.HasPrefix(strings.TrimSpace(line), "github.com/omnigate/omnigate/sdk/wasm v") {
				t.Errorf("the external plugin depends on %q:\n%s", line, mod)
			}
		}
		goCmd(t, dir, nil, "build", "-o", "plugin", ".")
		out := goCmd(t, dir, nil, "test", "-count=1", "./...")
		if !strings.Contains(out, "ok  \texample.com/external-audit") {
			t.Fatalf("go test:\n%s", out)
		}
	})
}
