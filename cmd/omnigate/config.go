package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/plugins/external"
)

// defaultConfig is served when no config file is given.
//
//go:embed default.yaml
var defaultConfig []byte

// EnvConfig names the config file when -config is not given.
const EnvConfig = "OMNIGATE_CONFIG"

// loadConfig reads file, or the embedded default when file is "".
func loadConfig(file string) (*gateway.Config, error) {
	if file == "" {
		return gateway.Parse("embedded default config", defaultConfig, os.LookupEnv)
	}
	return gateway.Load(file)
}

func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: omnigate config check [-config FILE | FILE] | omnigate config default")
		return 2
	}
	switch args[0] {
	case "default":
		if len(args) > 1 && isHelpFlag(args[1]) {
			fmt.Fprintln(stdout, "usage: omnigate config default   print the embedded default config")
			return 0
		}
		if len(args) > 1 {
			fmt.Fprintf(stderr, "omnigate config default: unexpected argument %q\n", args[1])
			return 2
		}
		stdout.Write(defaultConfig)
		return 0
	case "check":
		fs := flag.NewFlagSet("config check", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.Usage = func() {
			fmt.Fprintln(fs.Output(), "usage: omnigate config check [-config FILE | FILE]   validate a config (default: the embedded one) and print each route's chain")
			fs.PrintDefaults()
		}
		flagFile := fs.String("config", "", "config file (or give it as the argument)")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		file := *flagFile
		switch {
		case fs.NArg() > 1 || fs.NArg() == 1 && file != "":
			fmt.Fprintln(stderr, "omnigate config check: one config file, as -config FILE or as the argument")
			return 2
		case fs.NArg() == 1:
			file = fs.Arg(0)
		}
		cfg, err := loadConfig(file)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if errs := checkPluginFiles(cfg); len(errs) > 0 {
			for _, err := range errs {
				fmt.Fprintln(stderr, err)
			}
			return 1
		}
		printChains(stdout, cfg)
		return 0
	}
	fmt.Fprintf(stderr, "omnigate config: unknown subcommand %q\n", args[0])
	return 2
}

// printChains prints the resolved config: listeners, Redis and each route's
// chain from first plugin to terminal.
func printChains(w io.Writer, cfg *gateway.Config) {
	fmt.Fprintf(w, "%s: ok\n", cfg.File)
	redis := "disabled (in-process state)"
	switch {
	case cfg.Redis.URL != "":
		redis = "single node " + redactedURL(cfg.Redis.URL)
	case cfg.Redis.Sentinel != nil:
		redis = fmt.Sprintf("sentinel master %q via %s", cfg.Redis.Sentinel.MasterName, strings.Join(cfg.Redis.Sentinel.Addrs, ","))
	case cfg.Redis.Cluster != nil:
		redis = "cluster " + strings.Join(cfg.Redis.Cluster.Addrs, ",")
	}
	fmt.Fprintf(w, "listen %s, admin %s, redis %s\n", cfg.Listen, cfg.Admin.Listen, redis)
	if len(cfg.Plugins) > 0 {
		fmt.Fprintln(w, "plugins:")
		for _, p := range cfg.Plugins {
			fmt.Fprintf(w, "  %s (%s)\n", p.Name, p.Type)
		}
	}
	fmt.Fprintln(w, "routes:")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, r := range cfg.Routes {
		chain := append([]string{}, r.Plugins...)
		if r.FHIR {
			chain = append(chain, "fhir")
		} else {
			chain = append(chain, "upstream "+r.Upstream.URL)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", r.Name, strings.Join(r.Methods, ","), r.Path, strings.Join(chain, " -> "))
	}
	tw.Flush()
}

// checkPluginFiles reports the external plugins whose executable serve
// would not find (a path that is not there or not an executable file, a
// bare name not in PATH), each as FILE:LINE:COL: plugins.NAME.path: the
// problem. (A wasm plugin's missing .wasm file is a config error already.)
func checkPluginFiles(cfg *gateway.Config) []error {
	var errs []error
	for _, p := range cfg.Plugins {
		c, ok := p.Config.(*external.Config)
		if !ok {
			continue
		}
		var err error
		if strings.ContainsRune(c.Path, '/') {
			var st os.FileInfo
			if st, err = os.Stat(c.Path); err == nil && (st.IsDir() || st.Mode().Perm()&0o111 == 0) {
				err = fmt.Errorf("%s is not an executable file", c.Path)
			}
		} else {
			_, err = exec.LookPath(c.Path)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: plugins.%s.path: %w", position(cfg.File, p.Node, "path"), p.Name, err))
		}
	}
	return errs
}

// position is FILE:LINE:COL of key's value in the mapping node n, or of n.
func position(file string, n *yaml.Node, key string) string {
	if n == nil {
		return file
	}
	line, col := n.Line, n.Column
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			line, col = n.Content[i+1].Line, n.Content[i+1].Column
		}
	}
	return fmt.Sprintf("%s:%d:%d", file, line, col)
}
