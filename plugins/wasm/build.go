package wasm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildFlags are the go build arguments that make a plugin module of a Go
// main package: a WASI reactor whose exports the host calls.
var BuildFlags = []string{"-buildmode=c-shared", "-trimpath"}

// Build compiles the Go plugin in dir into the module out (creating its
// folder) with the standard toolchain (go on PATH): GOOS=wasip1 GOARCH=wasm go build
// -buildmode=c-shared -trimpath -o out. It returns the compiler's output
// in the error when the build fails.
func Build(ctx context.Context, dir, out string) error {
	abs, err := filepath.Abs(out)
	if err != nil {
		return fmt.Errorf("build plugin: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return fmt.Errorf("build plugin: %w", err)
	}
	args := append([]string{"build"}, BuildFlags...)
	args = append(args, "-o", abs, ".")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build plugin %s: %w\n%s", dir, err, b)
	}
	return nil
}
