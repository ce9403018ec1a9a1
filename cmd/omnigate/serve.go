package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/omnigate/omnigate/gateway"
)

func redactedURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", os.Getenv(EnvConfig), "config file (default: $"+EnvConfig+", else the embedded default)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "omnigate serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := loadConfig(*file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	srv, err := gateway.New(ctx, cfg, gateway.Options{LogOutput: stderr, Version: version})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	logger := srv.Logger()
	if err := srv.Start(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	for {
		select {
		case err := <-srv.Err():
			logger.Error("listener failed", "error", err)
			srv.Shutdown(context.Background())
			return 1
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reload(ctx, srv, *file)
				continue
			}
			logger.Info("signal received", "signal", sig.String())
			if err := srv.Shutdown(context.Background()); err != nil {
				return 1
			}
			return 0
		}
	}
}

// reload re-reads the config file and swaps it in; a bad config is logged
// and the running one keeps serving.
func reload(ctx context.Context, srv *gateway.Server, file string) {
	log := srv.Logger()
	err := srv.ReloadFrom(ctx, func() (*gateway.Config, error) { return loadConfig(file) })
	if err != nil {
		log.Error("config reload rejected; the previous config keeps serving", "error", err)
	}
}
