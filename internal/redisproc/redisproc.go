// Package redisproc starts and stops real redis-server processes on
// loopback ports: a single node, a Redis Cluster or a primary with a
// replica and sentinels. Tools (omnigate scaletest) and tests use it.
//
// Every process runs in its own process group and is killed with that
// group; on Linux it is also killed when the process that started it dies,
// so nothing is left behind. It never uses the port 6379.
package redisproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/omnigate/omnigate/internal/procgroup"
)

// Options configure one redis-server.
type Options struct {
	// Binary is the redis-server executable. Default: redis-server on PATH.
	Binary string
	// Dir is the working directory (data files, log). Required.
	Dir string
	// Port to listen on (127.0.0.1). Default: a free port, below 55536 so
	// that a Cluster bus port (port+10000) exists.
	Port int
	// Persistent turns on the append-only file (fsync every second) so a
	// restart keeps the data. Default false: no RDB, no AOF.
	Persistent bool
	// Args are appended to the command line, e.g. "--maxmemory", "10mb".
	Args []string
	// StartTimeout bounds the wait for PING after a start. Default 10s.
	StartTimeout time.Duration
	// Sentinel runs the process as a Redis Sentinel with a config file
	// written into Dir: the listener settings plus the SentinelConf
	// lines (for example "sentinel monitor mymaster 127.0.0.1 7000 2").
	// Persistent and Args are then ignored.
	Sentinel     bool
	SentinelConf []string
}

// Server is one redis-server process (running or stopped).
type Server struct {
	opts Options
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// ErrNotInstalled is returned when redis-server is not on PATH.
var ErrNotInstalled = errors.New("redis-server not found on PATH (Debian/Ubuntu: apt-get install redis-server)")

// Binary returns the path of redis-server.
func Binary() (string, error) {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", ErrNotInstalled
	}
	return p, nil
}

// Start starts a redis-server and waits until it answers PING.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("redisproc: Dir is required")
	}
	if opts.Binary == "" {
		b, err := Binary()
		if err != nil {
			return nil, err
		}
		opts.Binary = b
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 10 * time.Second
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("redisproc: %w", err)
	}
	s := &Server{opts: opts, port: opts.Port}
	if s.port == 0 {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		s.port = p
	}
	if err := s.Restart(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Addr is 127.0.0.1:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL is redis://127.0.0.1:port.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Port is the server's port.
func (s *Server) Port() int { return s.port }

// Dir is the server's working directory.
func (s *Server) Dir() string { return s.opts.Dir }

// PID is the process id, or 0 while stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Running reports whether the process is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

func (s *Server) args() ([]string, error) {
	if s.opts.Sentinel {
		return s.sentinelArgs()
	}
	a := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--dir", s.opts.Dir, "--protected-mode", "no", "--daemonize", "no",
		"--logfile", filepath.Join(s.opts.Dir, "redis.log"),
	}
	if s.opts.Persistent {
		a = append(a, "--save", "", "--appendonly", "yes", "--appendfsync", "everysec")
	} else {
		a = append(a, "--save", "", "--appendonly", "no")
	}
	return append(a, s.opts.Args...), nil
}

// sentinelArgs writes sentinel.conf (Sentinel rewrites it as it learns the
// topology, so it is written only once).
func (s *Server) sentinelArgs() ([]string, error) {
	conf := filepath.Join(s.opts.Dir, "sentinel.conf")
	if _, err := os.Stat(conf); err != nil {
		lines := append([]string{
			"port " + strconv.Itoa(s.port), "bind 127.0.0.1", "protected-mode no", "daemonize no",
			"dir " + s.opts.Dir, "logfile " + filepath.Join(s.opts.Dir, "redis.log"),
		}, s.opts.SentinelConf...)
		if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("redisproc: %w", err)
		}
	}
	return []string{conf, "--sentinel"}, nil
}

// Restart starts the process again on the same port (after Kill or
// Shutdown), or for the first time, and waits until it answers PING.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return fmt.Errorf("redisproc: %s is already running", s.Addr())
	}
	args, err := s.args()
	if err != nil {
		s.mu.Unlock()
		return err
	}
	cmd := exec.Command(s.opts.Binary, args...)
	cmd.Dir = s.opts.Dir
	cmd.SysProcAttr = procgroup.Attr()
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("redisproc: start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return s.waitReady(ctx, done)
}

func (s *Server) waitReady(ctx context.Context, exited <-chan struct{}) error {
	deadline := time.Now().Add(s.opts.StartTimeout)
	for {
		err := ping(ctx, s.Addr())
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return fmt.Errorf("redisproc: redis-server on %s exited at start: %s", s.Addr(), s.logTail())
		case <-ctx.Done():
			s.Kill()
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redisproc: redis-server on %s did not answer PING: %w: %s", s.Addr(), err, s.logTail())
		}
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.opts.Dir, "redis.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// Kill stops the process with SIGKILL, as a crash would, and waits until
// it is gone. It does nothing when the server is stopped.
func (s *Server) Kill() { s.stop(syscall.SIGKILL, 0) }

// Shutdown stops the process with SIGTERM (Redis then writes its
// persistence files) and waits up to ten seconds, then kills it.
func (s *Server) Shutdown() { s.stop(syscall.SIGTERM, 10*time.Second) }

func (s *Server) stop(sig syscall.Signal, grace time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	procgroup.Stop(s.cmd.Process.Pid, s.done, sig, grace)
	s.cmd = nil
	for range 200 {
		c, err := net.DialTimeout("tcp", s.Addr(), 50*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
}

// Do sends one command to the server; see [Do].
func (s *Server) Do(ctx context.Context, args ...string) (string, error) {
	return Do(ctx, s.Addr(), args...)
}

// Do sends one command over a fresh connection to addr and returns the
// reply as text: simple strings, integers and bulk strings as they are,
// arrays joined by newlines, error replies as errors. It is meant for
// setup and checks, not for traffic.
func Do(ctx context.Context, addr string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	return readReply(bufio.NewReader(c))
}

func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("redisproc: empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := readFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, _ := strconv.Atoi(line[1:])
		parts := make([]string, 0, max(n, 0))
		for range n {
			p, err := readReply(r)
			if err != nil {
				return "", err
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, "\n"), nil
	}
	return "", fmt.Errorf("redisproc: unexpected reply %q", line)
}

func readFull(r *bufio.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func ping(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	got, err := Do(ctx, addr, "PING")
	if err != nil {
		return err
	}
	if got != "PONG" {
		return fmt.Errorf("unexpected reply %q", got)
	}
	return nil
}

// poll calls check every interval until it returns nil, ctx ends or
// timeout passes; the error then says what check last found wrong.
func poll(ctx context.Context, timeout, interval time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redisproc: after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// FreePort asks the kernel for a free loopback port below 55536 whose
// Cluster bus port (port+10000) is free too. It never returns 6379.
func FreePort() (int, error) {
	for range 1000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("redisproc: find a free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if port == 6379 || port > 55535 {
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		if err != nil {
			continue
		}
		bus.Close()
		return port, nil
	}
	return 0, errors.New("redisproc: no free port found")
}
