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
//	omnigate scaletest [flags]        start a fleet on one Redis, load it, fail Redis over, report
//	omnigate version                  print the version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	name, usage string
	run         func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"serve", "serve [-config FILE]   serve the gateway (default: embedded config)", runServe},
		{"config", "config check [FILE] | config default   validate a config, or print the embedded one", runConfig},
		{"user", "user add -username NAME -role ROLE [-file F] [-scopes a,b] [-patient ID] [-password-stdin]   add a user to the user directory", runUser},
		{"plugin", "plugin init NAME | plugin build [-o OUT] DIR | plugin test PLUGIN.wasm|DIR [CASES.yaml]   write a plugin skeleton, build a Go wasm plugin, or run its test cases", runPlugin},
		{"fhir", "fhir import [-config FILE] FILE... | fhir check [-config FILE] | fhir migrate [-config FILE] [-dry-run]   load transaction/batch Bundles or NDJSON into the FHIR store, report the problems of its resources, or apply the PostgreSQL store's migrations", runFHIR},
		{"scaletest", "scaletest [-instances 3] [-redis single|cluster|sentinel] [-duration 60s] [-out DIR] …   fleet test: load, Redis failover, checks and a report", runScaletest},
		{"version", "version   print the version", func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
			fmt.Fprintln(stdout, "omnigate", version)
			return 0
		}},
	}
}

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "omnigate: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: omnigate <command> [arguments]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintln(w, "  "+c.usage)
	}
}
