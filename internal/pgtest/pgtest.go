// Package pgtest gives tests private PostgreSQL 15 servers (internal/pgproc):
// initdb in a temporary folder, the server on a free loopback port, fsync
// off. It never uses or touches the machine's own PostgreSQL on port 5432.
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
// The binaries come from /usr/lib/postgresql/15/bin, or from the folder
// named by OMNIGATE_PGTEST_BIN (see pgproc). If the test binary dies
// without stopping its servers (killed, timed out), they are asked to shut
// down; their temporary folders stay.
package pgtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/omnigate/omnigate/internal/pgproc"
)

// DefaultBin is where the PostgreSQL 15 binaries are looked for.
const DefaultBin = pgproc.DefaultBin

// BinEnv names the environment variable that overrides DefaultBin.
const BinEnv = pgproc.BinEnv

// Server is a PostgreSQL server in a temporary folder (pgproc.Server) with
// the helpers tests use. Its methods are safe for concurrent use.
type Server struct {
	*pgproc.Server
}

// Bin returns the folder of the PostgreSQL binaries, or an error saying how
// to install them.
func Bin() (string, error) { return pgproc.Bin() }

// New creates and starts a server in a new temporary folder, with args
// added to the postgres command line ("-c", "ssl=on", …). Close stops it
// and removes the folder.
func New(ctx context.Context, args ...string) (*Server, error) {
	s, err := pgproc.New(ctx, args...)
	if err != nil {
		return nil, err
	}
	return &Server{s}, nil
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
	if err := pgproc.ChownToServer(dir); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := pgproc.ChownToServer(p); err != nil {
			t.Fatal(err)
		}
	}
	return dir
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
