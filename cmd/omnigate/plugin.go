package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/omnigate/omnigate/plugins/wasm"
	"github.com/omnigate/omnigate/sdk/wasmtest"
)

const pluginUsage = `usage:
  omnigate plugin init NAME [-lang go|assemblyscript|external] [-dir DIR] [-module PATH] [-sdk CHECKOUT]
                                              write a plugin skeleton (source, tests, cases.yaml for Wasm,
                                              README, Makefile) that builds and passes its tests as written
  omnigate plugin build [-o OUT.wasm] DIR     build the Go plugin in DIR (GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared)
  omnigate plugin test [-timeout D] [-wall-timeout D] [-run REGEX] PLUGIN.wasm|DIR [CASES.yaml]
                                              run table-driven cases against a plugin (a .wasm, or a Go
                                              plugin's directory, built first; DIR/cases.yaml by default),
                                              each call under the gateway's default deadline (10ms of CPU,
                                              1s wall-clock) unless the file or the flags set another;
                                              exit 1 when a case fails, 2 for a bad cases file`

func runPlugin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, pluginUsage)
		return 2
	}
	switch args[0] {
	case "build":
		return runPluginBuild(ctx, args[1:], stdout, stderr)
	case "test":
		return runPluginTest(ctx, args[1:], stdout, stderr)
	case "init":
		return runPluginInit(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "omnigate plugin: unknown subcommand %q\n%s\n", args[0], pluginUsage)
	return 2
}

func runPluginBuild(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plugin build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "output file (default: DIR's name + .wasm, in the current directory)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, pluginUsage)
		return 2
	}
	dir := fs.Arg(0)
	if *out == "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		*out = filepath.Base(abs) + ".wasm"
	}
	if err := wasm.Build(ctx, dir, *out); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	st, err := os.Stat(*out)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "built %s (%d KiB): GOOS=wasip1 GOARCH=wasm go build %s\n", *out, st.Size()>>10, strings.Join(wasm.BuildFlags, " "))
	return 0
}

func runPluginTest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plugin test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var ro wasmtest.RunOptions
	fs.DurationVar(&ro.Timeout, "timeout", 0, "CPU budget of one call (the plugin's timeout; default the cases file's, else the gateway's 10ms)")
	fs.DurationVar(&ro.WallTimeout, "wall-timeout", 0, "wall-clock backstop of one call (the plugin's wall_timeout; default the larger of 1s and 10 × the budget)")
	run := fs.String("run", "", "run only the cases whose names match this regular expression")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() < 1 || fs.NArg() > 2 || ro.Timeout < 0 || ro.WallTimeout < 0 {
		fmt.Fprintln(stderr, pluginUsage)
		return 2
	}
	if *run != "" {
		re, err := regexp.Compile(*run)
		if err != nil {
			fmt.Fprintf(stderr, "omnigate plugin test: -run: %v\n", err)
			return 2
		}
		ro.Run = re
	}
	mod, cases := fs.Arg(0), fs.Arg(1)
	if st, err := os.Stat(mod); err == nil && st.IsDir() {
		// A plugin's directory: build it first; its cases.yaml by default.
		if cases == "" {
			cases = filepath.Join(mod, "cases.yaml")
		}
		tmp, err := os.MkdirTemp("", "omnigate-plugin-test")
		if err != nil {
			fmt.Fprintln(stderr, "omnigate plugin test:", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		out := filepath.Join(tmp, "plugin.wasm")
		if err := wasm.Build(ctx, mod, out); err != nil {
			fmt.Fprintln(stderr, "omnigate plugin test:", err)
			return 1
		}
		mod = out
	} else if cases == "" {
		fmt.Fprintln(stderr, pluginUsage)
		return 2
	}
	failed, err := wasmtest.RunFileWith(stdout, mod, cases, ro)
	switch {
	case errors.Is(err, wasmtest.ErrBadCases):
		fmt.Fprintln(stderr, "omnigate plugin test:", err)
		return 2
	case err != nil:
		fmt.Fprintln(stderr, "omnigate plugin test:", err)
		return 1
	case failed > 0:
		return 1
	}
	return 0
}
