// Package external is the Go SDK for OmniGate's external policy plugins:
// programs that the gateway starts and talks to over gRPC (through
// hashicorp/go-plugin), for policies that need what the WebAssembly sandbox
// denies — a database, a consent service, a library with cgo.
//
// A plugin is a main package with one type that implements Policy, served
// by Serve. A complete plugin that denies requests without a configured
// header:
//
//	package main
//
//	import (
//		"context"
//
//		"github.com/omnigate/omnigate/sdk/external"
//	)
//
//	type requireHeader struct{ Header string }
//
//	func (p *requireHeader) Configure(ctx context.Context, c external.Config) error {
//		return c.Decode(p)
//	}
//
//	func (p *requireHeader) OnRequest(ctx context.Context, r *external.Request) error {
//		if r.Header.Get(p.Header) == "" {
//			r.Deny(400, "missing required header "+p.Header)
//		}
//		return nil
//	}
//
//	func main() { external.Serve(&requireHeader{Header: "X-Tenant"}) }
//
// Build it with "go build" and name the binary in omnigate.yaml:
//
//	plugins:
//	  require-tenant:
//	    type: external
//	    path: ./bin/require-header
//	    config: {header: X-Tenant}
//
// The gateway gives the plugin its config once per process start
// (Configurer), then calls OnRequest for every request, concurrently, and
// OnResponse (ResponsePolicy) for responses. Each call has a deadline
// (50ms by default) carried by ctx; an error, a panic or a missed deadline
// fails that request by the plugin's "fail" setting (closed: 500; open: the
// request goes on). When the process dies the gateway restarts it.
//
// Logs: write them with Logger (JSON lines with levels) or the log
// package; anything the process writes to stdout or stderr ends up in the
// gateway log tagged with the plugin's name. Never log tokens or PHI.
//
// Running the binary by hand only prints that it is a plugin: it must be
// started by the gateway.
package external

import (
	"context"
	"log/slog"
	"os"

	"github.com/hashicorp/go-plugin"

	"github.com/omnigate/omnigate/sdk/external/contract"
)

// Policy decides on requests. OnRequest is called for every request of the
// routes the plugin is on, from many goroutines at once. Returning an error
// fails the request by the plugin's failure mode; to refuse a request, call
// r.Deny and return nil.
type Policy interface {
	OnRequest(ctx context.Context, r *Request) error
}

// Configurer is implemented by policies that take config. Configure is
// called once per process start, before any request; an error refuses the
// config (the gateway does not load it, or keeps restarting the process).
type Configurer interface {
	Configure(ctx context.Context, c Config) error
}

// ResponsePolicy is implemented by policies that look at responses.
// OnResponse is called with the response's status and headers before they
// are sent and, when the policy also implements ResponseBodyReader, with
// its body.
type ResponsePolicy interface {
	OnResponse(ctx context.Context, r *Response) error
}

// RequestBodyReader is implemented by policies that read request bodies:
// when ReadRequestBody returns true the gateway buffers request bodies (up
// to its cap) and sends them with the request.
type RequestBodyReader interface {
	ReadRequestBody() bool
}

// ResponseBodyReader is implemented by response policies that read or
// replace response bodies: when ReadResponseBody returns true the gateway
// buffers response bodies (up to its cap), which costs memory and latency.
type ResponseBodyReader interface {
	ReadResponseBody() bool
}

// ResponseOnly is embedded in a policy that only looks at responses, so
// that the gateway does not call it on requests.
type ResponseOnly struct{}

// OnRequest lets every request through.
func (ResponseOnly) OnRequest(context.Context, *Request) error { return nil }

func (ResponseOnly) responseOnly() {}

// Serve serves p as a plugin and exits when the gateway stops the process.
// Call it from main.
func Serve(p Policy) {
	plugin.Serve(ServeConfig(p))
}

// ServeConfig returns the go-plugin configuration Serve uses, for a main
// that needs to adjust it (a logger, a gRPC server with options).
func ServeConfig(p Policy) *plugin.ServeConfig {
	return &plugin.ServeConfig{
		HandshakeConfig: contract.Handshake,
		Plugins:         contract.PluginSet(newServer(p)),
		GRPCServer:      plugin.DefaultGRPCServer,
	}
}

// Logger writes JSON lines to the process's stderr, which the gateway reads
// into its own log with the level kept and the plugin's name added. It is
// made when the package is initialized, before Serve redirects os.Stderr.
var Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
