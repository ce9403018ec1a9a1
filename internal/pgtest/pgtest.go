// Package pgtest starts private PostgreSQL 15 servers for tests: initdb in
// a temporary folder, then the postgres server on a free loopback port with
// its unix socket in that folder, fsync off (commits still reach the
// operating system before they are acknowledged, so a killed server loses
// nothing acknowledged; only a machine crash would). It never uses or
// touches the machine's own PostgreSQL on port 5432.
//
// One server serves a whole test binary: it is started on first use
// (initdb and start take about one second) and stopped by Main, which the
// package's TestMain must call:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Each test then takes a fresh database with NewDatabase, dropped when the
// test ends. A test that stops and restarts a server starts its own with
// Start, so that the other tests keep theirs.
//
// The binaries come from /usr/lib/postgresql/15/bin (Debian's
// postgresql-15 package), or from the folder named by OMNIGATE_PGTEST_BIN.
// When the test runs as root, initdb and postgres run as the "postgres"
// user through runuser, since PostgreSQL refuses to run as root. If the
// test binary dies without stopping its servers (killed, timed out), they
// are asked to shut down (SIGTERM, as their parent process dies); their
// temporary folders stay.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultBin is where the PostgreSQL 15 binaries are looked for.
const DefaultBin = "/usr/lib/postgresql/15/bin"

// BinEnv names the environment variable that overrides DefaultBin.
const BinEnv = "OMNIGATE_PGTEST_BIN"

// Server is a PostgreSQL server in a temporary folder. Its methods are safe
// for concurrent use.
type Server struct {
	args []string // extra arguments of postgres
	bin  string
	dir  string // owned by the server's user; holds data/, the socket and log
	port int
	root bool // run the binaries as "postgres" through runuser

	mu      sync.Mutex
	cmd     *exec.Cmd     // nil while stopped
	exited  chan struct{} // closed when cmd has exited
	dbs     atomic.Int64  // names of created databases
	removed bool
}

// Bin returns the folder of the PostgreSQL binaries, or an error saying how
// to install them.
func Bin() (string, error) {
	bin := os.Getenv(BinEnv)
	if bin == "" {
		bin = DefaultBin
	}
	for _, b := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return "", fmt.Errorf("pgtest: %s not found in %s: these tests run a real PostgreSQL 15 "+
				"(Debian/Ubuntu: apt-get install postgresql-15; elsewhere set %s to the folder of initdb and postgres)", b, bin, BinEnv)
		}
	}
	return bin, nil
}

// New creates and starts a server in a new temporary folder, with args
// added to the postgres command line ("-c", "ssl=on", …). Close stops it
// and removes the folder.
func New(ctx context.Context, args ...string) (*Server, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{args: args, bin: bin, dir: dir, root: os.Geteuid() == 0}
	if err := chownToServer(dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	out, err := s.command(ctx, "initdb", "-D", s.data(), "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: initdb: %w: %s", err, out)
	}
	for attempt := 0; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			break
		}
		if err = s.Start(ctx); err == nil || attempt == 2 {
			break
		}
		// Another process may have taken the port meanwhile: try another.
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// chownToServer gives path to the postgres user when the test runs as
// root (the server runs as that user).
func chownToServer(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("pgtest: running as root needs a postgres user to run the server as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// ServerFiles writes files (name to content) into a new folder that only
// the server's user can read (as a server's TLS key must be), removed when
// the test ends, and returns the folder.
func ServerFiles(t testing.TB, files map[string][]byte) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgtest-files-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := chownToServer(dir); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := chownToServer(p); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// command runs a PostgreSQL binary, as the postgres user when root.
func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	path := filepath.Join(s.bin, name)
	var cmd *exec.Cmd
	if s.root {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = s.dir
	return cmd
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	for range 10 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("pgtest: free port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if port != 5432 { // never the machine's own server
			return port, nil
		}
	}
	return 0, errors.New("pgtest: no free port")
}

// Port is the server's loopback TCP port.
func (s *Server) Port() int { return s.port }

// Dir is the server's temporary folder (data/, the unix socket, server.log).
func (s *Server) Dir() string { return s.dir }

// URL is the connection URL of database db over loopback TCP, as the
// superuser "postgres" (trust authentication, no TLS).
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// Start starts the server (after Stop: on the same port, with the same
// data) and waits until it accepts connections.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return errors.New("pgtest: server closed")
	}
	if s.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, 2)
	// Not bound to ctx: the server outlives the call that starts it.
	cmd := s.command(context.Background(), "postgres", "-D", s.data(), "-p", strconv.Itoa(s.port),
		"-k", s.dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=300",
		"-c", "shared_buffers=64MB", "-c", "max_wal_size=1GB")
	cmd.Args = append(cmd.Args, s.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies without stopping the server, the server is
	// asked to shut down (runuser passes SIGTERM on to it).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := pgx.Connect(cctx, s.URL("postgres"))
		cancel()
		if err == nil {
			c.Close(ctx)
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("pgtest: postgres exited at start: %s", s.logSince(logStart))
		case <-ctx.Done():
			s.stopLocked()
			return fmt.Errorf("pgtest: start: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stopLocked()
			return fmt.Errorf("pgtest: postgres did not accept connections in 30s: %v: %s", err, s.logSince(logStart))
		}
	}
}

func (s *Server) logSince(off int64) string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
	if off < int64(len(b)) {
		b = b[off:]
	}
	return string(bytes.TrimSpace(b))
}

// Stop shuts the server down in immediate mode, as a crash would: no
// checkpoint, connections cut; the next Start recovers the committed
// transactions from the write-ahead log. It waits until the server has
// exited. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	if s.cmd == nil {
		return
	}
	// The postmaster's pid: cmd is runuser when root.
	pid := s.cmd.Process.Pid
	if b, err := os.ReadFile(filepath.Join(s.data(), "postmaster.pid")); err == nil {
		if line, _, _ := strings.Cut(string(b), "\n"); line != "" {
			if p, err := strconv.Atoi(strings.TrimSpace(line)); err == nil {
				pid = p
			}
		}
	}
	syscall.Kill(pid, syscall.SIGQUIT) // immediate shutdown
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Running reports whether the server process is running.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Close stops the server and removes its folder.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
	if !s.removed {
		s.removed = true
		os.RemoveAll(s.dir)
	}
}

// admin runs stmt on the postgres database.
func (s *Server) admin(ctx context.Context, stmt string) error {
	c, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("pgtest: %s: %w", stmt, err)
	}
	return nil
}

// CreateDatabase creates an empty database and returns its name; it lives
// until DropDatabase or the end of the server.
func (s *Server) CreateDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("test_%d", s.dbs.Add(1))
	if err := s.admin(ctx, `CREATE DATABASE `+name); err != nil {
		return "", err
	}
	return name, nil
}

// DropDatabase drops a database, closing the connections to it.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	return s.admin(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{name}.Sanitize()+` WITH (FORCE)`)
}

// NewDatabase creates an empty database, dropped when the test ends, and
// returns its URL.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name, err := s.CreateDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.Running() {
			if err := s.DropDatabase(context.Background(), name); err != nil {
				t.Errorf("drop test database: %v", err)
			}
		}
	})
	return s.URL(name)
}

// Start starts a private server for one test (with args added to its
// command line, as for New) and closes it when the test ends: for tests
// that stop and restart the server, or need another configuration.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	s, err := New(context.Background(), args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

var (
	sharedMu   sync.Mutex
	shared     *Server
	sharedErr  error
	mainCalled atomic.Bool
)

// Main runs the package's tests (m.Run) and then stops the shared server if
// one was started, and exits with the tests' status. Call it from TestMain.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main for a TestMain with more to do after the tests: it returns
// their status instead of exiting.
func Run(m *testing.M) int {
	mainCalled.Store(true)
	code := m.Run()
	sharedMu.Lock()
	if shared != nil {
		shared.Close()
	}
	sharedMu.Unlock()
	return code
}

// Shared returns the test binary's server, started on first use and
// stopped by Main. Tests must not stop it (see Start).
func Shared(t testing.TB) *Server {
	t.Helper()
	s, err := SharedServer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// SharedServer is Shared for code without a testing.TB (a store opener
// that a test hook calls).
func SharedServer(ctx context.Context) (*Server, error) {
	if !mainCalled.Load() {
		return nil, errors.New("pgtest: the shared server needs TestMain to call pgtest.Main (it stops the server)")
	}
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = New(ctx)
	}
	return shared, sharedErr
}

// NewDatabase creates an empty database on the shared server, dropped
// when the test ends, and returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	return Shared(t).NewDatabase(t)
}
