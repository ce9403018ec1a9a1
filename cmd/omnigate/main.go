// Command omnigate is the OmniGate gateway: a FHIR R4 API gateway that runs
// per-route plugin chains (sessions, rate limits, caching, WebAssembly and
// external policy plugins) in front of an embedded FHIR server or an
// upstream.
//
// Usage:
//
//	omnigate serve [-config FILE]     serve (default: the embedded config)
//	omnigate config check [FILE]      validate a config and print each route's chain
//	omnigate config default           print the embedded default config
//	omnigate user add -username U -role R   add a user to the user directory
//	omnigate plugin init NAME [-lang go|assemblyscript|external]   write a plugin skeleton
//	omnigate plugin build [-o OUT] DIR   build a Go WebAssembly policy plugin
//	omnigate plugin test PLUGIN.wasm|DIR [CASES.yaml]   run a plugin's test cases
//	omnigate fhir import FILE...      load Bundles or NDJSON into the FHIR store
//	omnigate fhir check               report the problems of the FHIR store's resources
//	omnigate fhir migrate [-dry-run]  apply the PostgreSQL store's schema migrations
//	omnigate fhir copy -from STORE -to STORE   copy a FHIR store with its history (SQLite, PostgreSQL)
//	omnigate scaletest [flags]        start a fleet on one Redis, load it, fail Redis over, report
//	omnigate version                  print the version
package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	name, usage string
	// subs are the subcommands, each with its own flags.
	subs []string
	run  func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"serve", "serve [-config FILE]   serve the gateway (default: embedded config)", nil, runServe},
		{"config", "config check [-config FILE | FILE] | config default   validate a config, or print the embedded one", []string{"check", "default"}, runConfig},
		{"user", "user add -username NAME [-role ROLE] [-file F] [-scopes a,b] [-patient ID] [-password-stdin]   add or update a user of the user directory", []string{"add"}, runUser},
		{"plugin", "plugin init NAME | plugin build [-o OUT] DIR | plugin test PLUGIN.wasm|DIR [CASES.yaml]   write a plugin skeleton, build a Go wasm plugin, or run its test cases", []string{"init", "build", "test"}, runPlugin},
		{"fhir", "fhir import [-config FILE] FILE... | fhir check [-config FILE] | fhir migrate [-config FILE] [-dry-run] | fhir copy -from STORE -to STORE [-force]   load transaction/batch Bundles or NDJSON into the FHIR store, report the problems of its resources, apply the PostgreSQL store's migrations, or copy a store with its history", []string{"import", "check", "migrate", "copy"}, runFHIR},
		{"scaletest", "scaletest [-instances 3] [-redis single|cluster|sentinel] [-duration 60s] [-out DIR] …   fleet test: load, Redis failover, checks and a report", nil, runScaletest},
		{"version", "version   print the version (also: --version)", nil, func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
			if len(args) > 0 && !isHelpFlag(args[0]) {
				fmt.Fprintf(stderr, "omnigate version: unexpected argument %q\n", args[0])
				return 2
			}
			fmt.Fprintln(stdout, "omnigate", version)
			return 0
		}},
	}
}

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches to a command. Help works the same everywhere: "omnigate
// help", "-h" or "--help" print the list of commands; "omnigate help CMD
// [SUB]" and "-h"/"--help" anywhere after a command print that command's
// (or subcommand's) usage, to standard output, with exit status 0.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(stdout)
		return 0
	case "--version", "-version":
		args = []string{"version"}
	case "help":
		if len(args) == 1 {
			usage(stdout)
			return 0
		}
		args = append(args[1:], "-h")
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		if i := slices.IndexFunc(args[1:], isHelpFlag); i >= 0 {
			help(ctx, c, args[1:i+1], stdout)
			return 0
		}
		return c.run(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "omnigate: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func isHelpFlag(s string) bool { return s == "-h" || s == "-help" || s == "--help" }

// help prints the usage of command c, or of its subcommand when before (the
// arguments before the help flag) names one, with the flags that command
// parses (which its flag set prints for -h, to the writer given).
func help(ctx context.Context, c command, before []string, w io.Writer) {
	sub := len(before) > 0 && slices.Contains(c.subs, before[0])
	if len(c.subs) > 0 && !sub {
		fmt.Fprintln(w, "usage: omnigate "+c.usage)
		return
	}
	var b bytes.Buffer
	h := []string{"-h"}
	if sub {
		h = []string{before[0], "-h"}
	}
	c.run(ctx, h, &b, &b)
	out := b.String()
	if !strings.Contains(out, "usage:") {
		fmt.Fprintln(w, "usage: omnigate "+c.usage)
	}
	if i := strings.Index(out, "Usage of "); i >= 0 {
		if j := strings.IndexByte(out[i:], '\n'); j >= 0 {
			out = out[:i] + "flags:" + out[i+j:]
		}
	}
	io.WriteString(w, out)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: omnigate <command> [arguments]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintln(w, "  "+c.usage)
	}
}
