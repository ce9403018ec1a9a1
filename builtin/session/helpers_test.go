package session

import (
	"log/slog"
	"testing"

	"github.com/omnigate/omnigate/gateway"

	"github.com/omnigate/omnigate/internal/redistest"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func startRedis(t testing.TB) string {
	t.Helper()
	return redistest.Start(t).URL()
}

// parseSessionConfig checks a session plugin config through the gateway's
// config loader.
func parseSessionConfig(yaml string) (*gateway.Config, error) {
	return gateway.Parse("t.yaml", []byte("plugins:\n  session:\n    type: session\n"+indent(yaml, "    ")+
		"\nroutes: [{path: /x, upstream: 'http://h', plugins: [session]}]\n"), nil)
}
