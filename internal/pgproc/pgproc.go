// Package pgproc starts and stops private PostgreSQL 15 servers: initdb in
// a temporary folder, then the postgres server on a free loopback port with
// its unix socket in that folder, fsync off (commits still reach the
// operating system before they are acknowledged, so a killed server loses
// nothing acknowledged; only a machine crash would). It never uses or
// touches the machine's own PostgreSQL on port 5432. Tools (omnigate
// scaletest) and tests (through internal/pgtest) use it.
//
// The binaries come from /usr/lib/postgresql/15/bin (Debian's
// postgresql-15 package), or from the folder named by OMNIGATE_PGTEST_BIN.
// When run as root, initdb and postgres run as the "postgres" user through
// runuser, since PostgreSQL refuses to run as root. If the process that
// started a server dies without stopping it, the server is asked to shut
// down (SIGTERM, as its parent process dies); its temporary folder stays.
package pgproc

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
			return "", fmt.Errorf("pgproc: %s not found in %s: a private PostgreSQL 15 is started from there "+
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
	dir, err := os.MkdirTemp("", "pgproc-")
	if err != nil {
		return nil, fmt.Errorf("pgproc: %w", err)
	}
	s := &Server{args: args, bin: bin, dir: dir, root: os.Geteuid() == 0}
	if err := ChownToServer(dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	out, err := s.command(ctx, "initdb", "-D", s.data(), "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgproc: initdb: %w: %s", err, out)
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

// ChownToServer gives path to the postgres user when run as root (the
// server runs as that user); otherwise it does nothing.
func ChownToServer(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("pgproc: running as root needs a postgres user to run the server as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("pgproc: %w", err)
	}
	return nil
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
			return 0, fmt.Errorf("pgproc: free port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if port != 5432 { // never the machine's own server
			return port, nil
		}
	}
	return 0, errors.New("pgproc: no free port")
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
		return errors.New("pgproc: server closed")
	}
	if s.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		return fmt.Errorf("pgproc: %w", err)
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
	// If the process that started it dies without stopping the server, it is
	// asked to shut down (runuser passes SIGTERM on to it).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgproc: start postgres: %w", err)
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
			return fmt.Errorf("pgproc: postgres exited at start: %s", s.logSince(logStart))
		case <-ctx.Done():
			s.stopLocked()
			return fmt.Errorf("pgproc: start: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stopLocked()
			return fmt.Errorf("pgproc: postgres did not accept connections in 30s: %v: %s", err, s.logSince(logStart))
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
	pid := s.cmd.Process.Pid
	if p := s.postmaster(); p > 0 {
		pid = p
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

// postmaster reads the postmaster's pid from its pid file (the started
// command is runuser when root), or returns 0.
func (s *Server) postmaster() int {
	b, err := os.ReadFile(filepath.Join(s.data(), "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	p, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	return p
}

// PID is the postmaster's process id, or 0 while the server is stopped.
// Its backends are its children.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.postmaster()
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
		return fmt.Errorf("pgproc: %w", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("pgproc: %s: %w", stmt, err)
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
