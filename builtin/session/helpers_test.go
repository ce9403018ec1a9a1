package session

import (
	"log/slog"
	"sync"
	"testing"
	"time"

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

// testT0 is the fake clocks' start: a fixed instant, so no expectation
// depends on today's date.
var testT0 = time.Date(2031, 3, 14, 9, 0, 0, 0, time.UTC)

// fakeClock is a clock that moves only when the test advances it.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: testT0} }

// Now returns the clock's time.
func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// waitFor polls cond until it holds, and fails the test when it still does
// not after timeout. Timeouts only bound a failing test: they are long, so
// a loaded machine does not fail a correct one.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
