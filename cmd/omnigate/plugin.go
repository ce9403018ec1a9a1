package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/omnigate/omnigate/plugins/wasm"
	"github.com/omnigate/omnigate/sdk/wasmtest"
)

const pluginUsage = `usage:
  omnigate plugin build [-o OUT.wasm] DIR     build the Go plugin in DIR (GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared)
  omnigate plugin test PLUGIN.wasm CASES.yaml  run table-driven cases against a built plugin`

func runPlugin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, pluginUsage)
		return 2
	}
	switch args[0] {
	case "build":
		return runPluginBuild(ctx, args[1:], stdout, stderr)
	case "test":
		return runPluginTest(args[1:], stdout, stderr)
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

func runPluginTest(args []string, stdout, stderr io.Writer) int {
	if len(args) != 2 {
		fmt.Fprintln(stderr, pluginUsage)
		return 2
	}
	failed, err := wasmtest.RunFile(stdout, args[0], args[1])
	if err != nil {
		fmt.Fprintln(stderr, "omnigate plugin test:", err)
		return 1
	}
	if failed > 0 {
		return 1
	}
	return 0
}
