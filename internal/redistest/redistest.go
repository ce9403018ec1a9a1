// Package redistest starts real redis-server processes for tests: on a free
// loopback port, with no persistence, killed when the test ends. A test can
// stop and restart the server (on the same port) to exercise failover.
//
// It never touches the shared Redis on port 6379.
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/redisproc"
)

// Server is a redis-server started for one test.
type Server struct {
	t    testing.TB
	port int
	dir  string
	args []string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Option adds redis-server arguments, e.g. Args("--maxmemory", "10mb").
type Option func(*Server)

// Args appends raw redis-server command-line arguments.
func Args(args ...string) Option {
	return func(s *Server) { s.args = append(s.args, args...) }
}

// Binary returns the path of redis-server, or fails the test with a message
// that says how to install it.
func Binary(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found on PATH: these tests run a real Redis. Install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)")
	}
	return p
}

// Start starts a redis-server on a free loopback port and registers its
// cleanup with t.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	Binary(t)
	s := &Server{t: t, port: freePort(t), dir: t.TempDir()}
	for _, o := range opts {
		o(s)
	}
	t.Cleanup(s.kill)
	s.Restart()
	return s
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL is redis://127.0.0.1:port.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Port is the server's port.
func (s *Server) Port() int { return s.port }

// Stop kills the server (SIGKILL, as a crash would) and waits until the
// port refuses connections.
func (s *Server) Stop() {
	s.t.Helper()
	s.kill()
}

// Restart starts the server again on the same port (after Stop), or for
// the first time, and waits until it answers PING.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.t.Fatalf("redistest: Restart while the server is running")
	}
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--protected-mode", "no", "--daemonize", "no",
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}
	args = append(args, s.args...)
	cmd := exec.Command(Binary(s.t), args...)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("redistest: start redis-server: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := ping(s.Addr()); err == nil {
			return
		} else if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redistest: redis-server on %s did not answer PING: %v\n%s", s.Addr(), err, log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *Server) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
	for i := 0; i < 200; i++ {
		c, err := net.DialTimeout("tcp", s.Addr(), 50*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
}

// Running reports whether the server process is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Do sends one command over a fresh connection and returns the reply as
// text (simple strings, integers and bulk strings; arrays joined by
// newlines). It is for test setup and checks, without a client library.
func (s *Server) Do(args ...string) (string, error) {
	return redisproc.Do(context.Background(), s.Addr(), args...)
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

func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("unexpected reply %q", strings.TrimSpace(line))
	}
	return nil
}

// freePort asks the kernel for a free loopback port. It never returns 6379.
func freePort(t testing.TB) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("redistest: find a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if port != 6379 {
			return port
		}
	}
}
