package fhir

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/postgres"
	"github.com/omnigate/omnigate/internal/pgtest"
)

// testStoreEnv chooses the store the package's tests run on: "sqlite"
// (the default) or "postgres", a PostgreSQL server the test binary starts
// (internal/pgtest):
//
//	OMNIGATE_TEST_STORE=postgres go test ./builtin/fhir/
const testStoreEnv = "OMNIGATE_TEST_STORE"

func TestMain(m *testing.M) {
	switch v := os.Getenv(testStoreEnv); v {
	case "", "sqlite":
		code := m.Run()
		closeShared()
		os.Exit(code)
	case "postgres":
		openStore = openTestPostgres
		pgtest.Main(m)
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: want sqlite or postgres\n", testStoreEnv, v)
		os.Exit(2)
	}
}

// onPostgres reports whether the tests run on the PostgreSQL store.
func onPostgres() bool { return os.Getenv(testStoreEnv) == "postgres" }

// skipOnPostgres skips a test of what only the SQLite store does.
func skipOnPostgres(t testing.TB, why string) {
	t.Helper()
	if onPostgres() {
		t.Skip("SQLite store only: " + why)
	}
}

var (
	pgFilesMu sync.Mutex
	pgFiles   = map[string]string{} // store path -> database URL
)

// openTestPostgres stands in for openStore on PostgreSQL. The store path
// names the database: ":memory:" a new one, dropped when the store
// closes (as an in-memory SQLite store is gone); a file path one kept for
// the run, so that reopening the path finds its data; a postgres:// URL
// that database (a child process given its parent's).
func openTestPostgres(ctx context.Context, cfg *Config) (store.Store, error) {
	opt := postgres.Options{CacheBytes: int64(cfg.Store.ReadCache)}
	path := cfg.Store.Path
	if strings.HasPrefix(path, "postgres://") {
		opt.URL = path
		return postgres.Open(ctx, opt)
	}
	srv, err := pgtest.SharedServer(ctx)
	if err != nil {
		return nil, err
	}
	if path != ":memory:" {
		pgFilesMu.Lock()
		defer pgFilesMu.Unlock()
		if pgFiles[path] == "" {
			name, err := srv.CreateDatabase(ctx)
			if err != nil {
				return nil, err
			}
			pgFiles[path] = srv.URL(name)
		}
		opt.URL = pgFiles[path]
		return postgres.Open(ctx, opt)
	}
	name, err := srv.CreateDatabase(ctx)
	if err != nil {
		return nil, err
	}
	opt.URL = srv.URL(name)
	s, err := postgres.Open(ctx, opt)
	if err != nil {
		return nil, err
	}
	return &droppedAtClose{Store: s, srv: srv, name: name}, nil
}

// droppedAtClose is a store whose database is dropped when it closes.
type droppedAtClose struct {
	*postgres.Store
	srv  *pgtest.Server
	name string
}

func (d *droppedAtClose) Close() error {
	err := d.Store.Close()
	if err := d.srv.DropDatabase(context.Background(), d.name); err != nil {
		return err
	}
	return err
}

// testStorePath returns the path of a store for a test that opens it
// more than once (a file on SQLite, a database URL on PostgreSQL).
func testStorePath(t testing.TB, file string) string {
	t.Helper()
	if onPostgres() {
		return pgtest.NewDatabase(t)
	}
	return file
}
