package pgtest

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func query(t *testing.T, url, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var out string
	if strings.HasPrefix(sql, "CREATE") {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return ""
	}
	if err := c.QueryRow(ctx, sql).Scan(&out); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// Each test gets its own database on the shared server, which runs as a
// PostgreSQL 15 on a private loopback port, with its socket in its folder.
func TestNewDatabase(t *testing.T) {
	a, b := NewDatabase(t), NewDatabase(t)
	if a == b {
		t.Fatal("two tests got the same database")
	}
	s := Shared(t)
	if s.Port() == 5432 {
		t.Fatal("must never use the machine's port 5432")
	}
	if v := query(t, a, `SHOW server_version_num`); v[:2] != "15" {
		t.Errorf("server version %s, want 15", v)
	}
	if got := query(t, a, `SHOW unix_socket_directories`); got != s.Dir() {
		t.Errorf("socket folder %s, want %s", got, s.Dir())
	}
	if got := query(t, a, `SHOW fsync`); got != "off" {
		t.Errorf("fsync %s", got)
	}
	if got := query(t, a, `SELECT current_database()`); got == query(t, b, `SELECT current_database()`) {
		t.Errorf("same database %s", got)
	}
	// Dropped at the end of the test that made it.
	var name string
	t.Run("inner", func(t *testing.T) {
		name = query(t, NewDatabase(t), `SELECT current_database()`)
	})
	if n := query(t, s.URL("postgres"), `SELECT count(*)::text FROM pg_database WHERE datname = '`+name+`'`); n != "0" {
		t.Errorf("database %s still there after its test", name)
	}
}

// A private server stops like a crash and starts again on the same port
// with its committed data.
func TestStopStart(t *testing.T) {
	s := Start(t)
	url := s.NewDatabase(t)
	query(t, url, `CREATE TABLE k AS SELECT 'kept' AS v`)
	s.Stop()
	if s.Running() {
		t.Fatal("Running after Stop")
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.Port()), time.Second); err == nil {
		c.Close()
		t.Fatal("port still accepts connections after Stop")
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := query(t, url, `SELECT v FROM k`); got != "kept" {
		t.Errorf("after restart: %q", got)
	}
}
