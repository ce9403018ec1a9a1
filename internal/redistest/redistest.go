// Package redistest starts real redis-server processes for tests: on a free
// loopback port, with no persistence, killed when the test ends. A test can
// stop and restart the server (on the same port) to exercise failover.
// It is redisproc with the test's lifecycle and failures.
//
// It never touches the shared Redis on port 6379.
package redistest

import (
	"context"
	"testing"

	"github.com/omnigate/omnigate/internal/redisproc"
)

// Server is a redis-server started for one test.
type Server struct {
	*redisproc.Server
	t testing.TB
}

// Option adds redis-server arguments, e.g. Args("--maxmemory", "10mb").
type Option func(*redisproc.Options)

// Args appends raw redis-server command-line arguments.
func Args(args ...string) Option {
	return func(o *redisproc.Options) { o.Args = append(o.Args, args...) }
}

// Binary returns the path of redis-server, or fails the test with a message
// that says how to install it.
func Binary(t testing.TB) string {
	t.Helper()
	p, err := redisproc.Binary()
	if err != nil {
		t.Fatalf("redis-server not found on PATH: these tests run a real Redis. Install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)")
	}
	return p
}

// Start starts a redis-server on a free loopback port and registers its
// cleanup with t.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	o := redisproc.Options{Binary: Binary(t), Dir: t.TempDir()}
	for _, opt := range opts {
		opt(&o)
	}
	srv, err := redisproc.Start(context.Background(), o)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(srv.Kill)
	return &Server{Server: srv, t: t}
}

// Stop kills the server (SIGKILL, as a crash would) and waits until the
// port refuses connections.
func (s *Server) Stop() { s.Kill() }

// Restart starts the server again on the same port (after Stop), or for
// the first time, and waits until it answers PING.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.Server.Restart(context.Background()); err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
}

// Do sends one command over a fresh connection and returns the reply as
// text (simple strings, integers and bulk strings; arrays joined by
// newlines). It is for test setup and checks, without a client library.
func (s *Server) Do(args ...string) (string, error) {
	return s.Server.Do(context.Background(), args...)
}

// Cluster starts a three-master Redis Cluster on free loopback ports
// (see redisproc.StartCluster) and registers its cleanup with t.
func Cluster(t testing.TB) *redisproc.Cluster {
	t.Helper()
	Binary(t)
	c, err := redisproc.StartCluster(context.Background(), redisproc.ClusterOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Sentinel starts a primary, a replica and three sentinels on free
// loopback ports (see redisproc.StartSentinel) and registers their cleanup
// with t.
func Sentinel(t testing.TB) *redisproc.Sentinel {
	t.Helper()
	Binary(t)
	s, err := redisproc.StartSentinel(context.Background(), redisproc.SentinelOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}
