package postgres

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/internal/pgtest"
)

func TestOptionsValidate(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, []byte("x"), 0o600)
	for _, c := range []struct {
		opt  Options
		want string // "" for valid
	}{
		{Options{}, "url is required"},
		{Options{URL: "  "}, "url is required"},
		{Options{URL: "postgres://h/db", MaxConns: -1}, "max_conns"},
		{Options{URL: "postgres://h/db", StatementTimeout: -time.Second}, "statement_timeout"},
		{Options{URL: "postgres://h/db", StatementTimeout: time.Microsecond}, "at least 1ms"},
		{Options{URL: "postgres://h/db", SSLMode: "sometimes"}, "sslmode must be"},
		{Options{URL: "postgres://h/db", CAFile: "/nonexistent/ca.pem"}, "ca_file"},
		{Options{URL: "postgres://h/db", CacheBytes: -1}, "cache_bytes"},
		{Options{URL: "postgres://h/db", SSLMode: "verify-full", CAFile: ca}, ""},
		{Options{URL: "host=h dbname=db"}, ""},
	} {
		err := c.opt.validate()
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.opt, err, c.want)
		}
	}
	opt := Options{URL: "postgres://h/db"}
	if err := opt.validate(); err != nil || opt.MaxConns < 8 || opt.StatementTimeout != 5*time.Second {
		t.Errorf("defaults: %+v %v", opt, err)
	}
	// Open refuses bad options before connecting.
	if _, err := Open(context.Background(), Options{URL: "postgres://h/db", SSLMode: "x"}); err == nil {
		t.Error("Open accepted a bad sslmode")
	}
	// Errors do not show the password: a URL that does not parse, a
	// server that does not answer.
	for _, u := range []string{"postgres://omni:s3cretpw@127.0.0.1:notaport/db", "postgres://omni:s3cretpw@127.0.0.1:1/db?connect_timeout=2",
		"host=127.0.0.1 port=1 user=omni password=s3cretpw dbname=db"} {
		_, err := Open(context.Background(), Options{URL: u})
		if err == nil || strings.Contains(err.Error(), "s3cretpw") {
			t.Errorf("Open(%s): %v", Redact(u), err)
		}
		if _, err := Migrate(context.Background(), Options{URL: u}, true); err == nil || strings.Contains(err.Error(), "s3cretpw") {
			t.Errorf("Migrate(%s): %v", Redact(u), err)
		}
	}
}

// SSLMode and CAFile reach the connection settings, in both forms of
// connection string; without a mode, a CA file means verify-full.
func TestConnString(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, []byte("x"), 0o600)
	for _, c := range []struct {
		opt  Options
		want string
	}{
		{Options{URL: "postgres://u:p@h/db"}, "postgres://u:p@h/db"},
		{Options{URL: "postgres://u:p@h/db", SSLMode: "require"}, "postgres://u:p@h/db?sslmode=require"},
		{Options{URL: "postgres://u:p@h/db?sslmode=disable", SSLMode: "require"}, "postgres://u:p@h/db?sslmode=require"},
		{Options{URL: "postgres://h/db", CAFile: ca}, "postgres://h/db?sslmode=verify-full&sslrootcert=" + strings.ReplaceAll(ca, "/", "%2F")},
		{Options{URL: "postgres://h/db?sslmode=verify-ca", CAFile: ca}, "postgres://h/db?sslmode=verify-ca&sslrootcert=" + strings.ReplaceAll(ca, "/", "%2F")},
		{Options{URL: "host=h dbname=db", SSLMode: "disable"}, "host=h dbname=db sslmode='disable'"},
		{Options{URL: "host=h sslmode=require", CAFile: ca}, "host=h sslmode=require sslrootcert='" + ca + "'"},
	} {
		if err := c.opt.validate(); err != nil {
			t.Fatal(err)
		}
		got, err := c.opt.connString()
		if err != nil || got != c.want {
			t.Errorf("%+v: %q %v, want %q", c.opt, got, err, c.want)
		}
	}
}

func TestRedact(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"postgres://omni:s3cret@db.example:5432/fhir?sslmode=verify-full", "postgres://omni@db.example:5432/fhir?sslmode=verify-full"},
		{"postgresql://omni:p%40ss@db/fhir", "postgresql://omni@db/fhir"},
		{"postgres://omni@db/fhir", "postgres://omni@db/fhir"},
		{"postgres://db/fhir?user=omni&password=s3cret", "postgres://db/fhir?user=omni"},
		{"postgres://omni:s3cret@db/s3cret", "postgres://(redacted)"},
		{"postgres://omni:pa/ss@db/fhir", "postgres://(unparsable URL)"},
		{"host=db user=omni password=s3cret dbname=fhir", "host=db user=omni dbname=fhir"},
		{`host=db password='it\'s a \\ secret' dbname=fhir`, "host=db dbname=fhir"},
		{"password = s3cret host=db", "host=db"},
		{"host=db sslpassword=k3y", "host=db"},
	} {
		got := Redact(c.in)
		if got != c.want {
			t.Errorf("Redact(%q) = %q, want %q", c.in, got, c.want)
		}
		if strings.Contains(got, "s3cret") || strings.Contains(got, "secret") || strings.Contains(got, "k3y") {
			t.Errorf("Redact(%q) = %q shows the password", c.in, got)
		}
	}
}

func tableExists(t *testing.T, url, table string) bool {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var ok bool
	if err := c.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func exec(t *testing.T, url, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Migrate applies the migrations once, dry runs apply none, NoMigrate
// refuses a database that needs some, and a database migrated by a newer
// build is refused.
func TestMigrate(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	opt := Options{URL: url, NoMigrate: true}
	if _, err := Open(ctx, opt); !errors.Is(err, ErrMigrationNeeded) {
		t.Fatalf("NoMigrate on an empty database: %v", err)
	}
	names, err := Migrate(ctx, Options{URL: url}, true)
	if err != nil || strings.Join(names, ",") != "0001_init.sql,0002_page_snapshots.sql,0003_composite_rows.sql" {
		t.Fatalf("dry run: %v %v", names, err)
	}
	if tableExists(t, url, "resources") {
		t.Fatal("the dry run migrated")
	}
	if names, err = Migrate(ctx, Options{URL: url}, false); err != nil || len(names) != 3 {
		t.Fatalf("migrate: %v %v", names, err)
	}
	if !tableExists(t, url, "resources") {
		t.Fatal("not migrated")
	}
	if names, err = Migrate(ctx, Options{URL: url}, false); err != nil || len(names) != 0 {
		t.Fatalf("migrate again: %v %v", names, err)
	}
	s, err := Open(ctx, opt)
	if err != nil {
		t.Fatalf("NoMigrate on a migrated database: %v", err)
	}
	s.Close()
	if SchemaVersion() != 3 {
		t.Errorf("schema version %d", SchemaVersion())
	}
	exec(t, url, `INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_future.sql')`)
	for _, o := range []Options{{URL: url}, opt} {
		if _, err := Open(ctx, o); !errors.Is(err, ErrSchemaNewer) || !strings.Contains(err.Error(), "9999_future.sql") {
			t.Errorf("Open of a newer schema (NoMigrate %v): %v", o.NoMigrate, err)
		}
	}
	if _, err := Migrate(ctx, Options{URL: url}, true); !errors.Is(err, ErrSchemaNewer) {
		t.Errorf("Migrate of a newer schema: %v", err)
	}
}

// Instances that open an empty database together migrate it once.
func TestMigrateTogether(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	const n = 4
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(ctx, Options{URL: url})
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var rows int
	if err := c.QueryRow(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&rows); err != nil || rows != int(SchemaVersion()) {
		t.Errorf("schema_migrations has %d rows (%v), want %d", rows, err, SchemaVersion())
	}
}
