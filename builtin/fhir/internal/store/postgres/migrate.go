package postgres

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// The schema is a sequence of migrations, the SQL files of migrations/
// named NNNN_name.sql and applied in the order of their numbers. Each is
// applied in one transaction and recorded in schema_migrations; a
// published migration never changes, the next change is a new file.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// ErrSchemaNewer is returned by Open and Migrate when the database has
// migrations this build does not know: a newer version of the gateway
// migrated it. Run that version, or restore the database.
var ErrSchemaNewer = errors.New("database schema is newer than this build")

// ErrMigrationNeeded is returned by Open with NoMigrate when the database
// lacks migrations this build needs (it is empty, or an older build made
// it): apply them with Migrate (omnigate fhir migrate) first.
var ErrMigrationNeeded = errors.New("database schema needs migrations")

type migration struct {
	version int64
	name    string // the file name, e.g. "0001_init.sql"
	sql     string
}

// migrations returns the embedded migrations in order.
func migrations() ([]migration, error) {
	entries, err := migrationFiles.ReadDir("migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: the name must start with a positive number and _", e.Name())
		}
		b, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{v, e.Name(), string(b)})
	}
	slices.SortFunc(out, func(a, b migration) int { return int(a.version - b.version) })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s have the same number", out[i-1].name, out[i].name)
		}
	}
	return out, nil
}

// goSteps are the parts of migrations written in Go, run in a migration's
// transaction after its SQL: index rows that only the search indexer can
// compute.
var goSteps = map[string]func(ctx context.Context, tx pgx.Tx) error{
	"0003_composite_rows.sql": addCompositeRows,
}

// addCompositeRows adds the rows of composite parameters (see
// search.CompositeKey) for the current version of every resource of a
// type that has some, a thousand resources at a time.
func addCompositeRows(ctx context.Context, tx pgx.Tx) error {
	var types []string
	for _, t := range spec.ResourceTypes {
		if search.HasComposites(t) {
			types = append(types, t)
		}
	}
	const page = 1000
	var last int64
	for {
		rows, err := tx.Query(ctx, `SELECT r.rid, r.seq, r.type, r.id, h.body FROM resources r JOIN history h ON h.seq = r.seq
			WHERE r.rid > $1 AND NOT r.deleted AND r.type = ANY($2) ORDER BY r.rid LIMIT $3`, last, types, page)
		if err != nil {
			return fmt.Errorf("read resources: %w", err)
		}
		set := map[string]*rowSet{}
		n := 0
		for rows.Next() {
			var rid, seq int64
			var typ, id string
			var body []byte
			if err := rows.Scan(&rid, &seq, &typ, &id, &body); err != nil {
				rows.Close()
				return fmt.Errorf("read resources: %w", err)
			}
			n, last = n+1, rid
			d := json.NewDecoder(bytes.NewReader(body))
			d.UseNumber()
			var tree any
			if err := d.Decode(&tree); err != nil {
				rows.Close()
				return fmt.Errorf("decode %s/%s: %w", typ, id, err)
			}
			addRows(set, rid, seq, search.Index(typ, id, tree).Only(search.IsCompositeKey))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read resources: %w", err)
		}
		for _, t := range bulkTables {
			if r := set[t.name]; r != nil && len(r.rows) > 0 {
				if _, err := tx.CopyFrom(ctx, pgx.Identifier{t.name}, t.cols, pgx.CopyFromRows(r.rows)); err != nil {
					return fmt.Errorf("index %s: %w", t.name, err)
				}
			}
		}
		if n < page {
			return nil
		}
	}
}

// SchemaVersion is the number of the last migration this build knows.
func SchemaVersion() int64 {
	ms, err := migrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

// Lock keys of pg_advisory_lock (a 64-bit key space shared by every user of
// the database; these spell "omnigate fhir migrate" and "… write").
const (
	migrateLockKey int64 = 0x6f6d6e6967617465 // "omnigate"
	writeLockKey   int64 = 0x6f6d6e6977726974 // "omniwrit"
)

// Migrate applies the migrations the database lacks, in order, and returns
// the names of those it applied (with dryRun: of those it would apply,
// applying none). Instances that migrate at the same time take turns on a
// PostgreSQL advisory lock, so each migration is applied once. It returns
// ErrSchemaNewer (applying nothing) if the database has a migration this
// build does not know. Only opt.URL, SSLMode and CAFile are used; the
// statements of migrations are not bound by StatementTimeout (a migration
// of a large database may take long), only by ctx.
func Migrate(ctx context.Context, opt Options, dryRun bool) (applied []string, err error) {
	cfg, err := opt.connConfig()
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", classify(ctx, err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return migrate(ctx, conn, dryRun, false)
}

// migrate runs the migrations on conn under the migration lock; with
// checkOnly it applies none and reports ErrMigrationNeeded if some are
// pending.
func migrate(ctx context.Context, conn *pgx.Conn, dryRun, checkOnly bool) ([]string, error) {
	ms, err := migrations()
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, `SET statement_timeout = 0`); err != nil {
		return nil, fmt.Errorf("migrate: %w", classify(ctx, err))
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrateLockKey); err != nil {
		return nil, fmt.Errorf("migrate: lock: %w", classify(ctx, err))
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrateLockKey)
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version bigint PRIMARY KEY,
		name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("migrate: %w", classify(ctx, err))
	}
	rows, err := conn.Query(ctx, `SELECT version, name FROM schema_migrations ORDER BY version`)
	if err != nil {
		return nil, fmt.Errorf("migrate: read schema version: %w", classify(ctx, err))
	}
	done := map[int64]bool{}
	var unknown []string
	known := map[int64]bool{}
	for _, m := range ms {
		known[m.version] = true
	}
	for rows.Next() {
		var v int64
		var name string
		if err := rows.Scan(&v, &name); err != nil {
			rows.Close()
			return nil, fmt.Errorf("migrate: read schema version: %w", err)
		}
		done[v] = true
		if !known[v] {
			unknown = append(unknown, name)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("migrate: read schema version: %w", classify(ctx, err))
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("%w: it has %s, this build knows up to %s", ErrSchemaNewer,
			strings.Join(unknown, ", "), ms[len(ms)-1].name)
	}
	var pending []migration
	for _, m := range ms {
		if !done[m.version] {
			pending = append(pending, m)
		}
	}
	var names []string
	for _, m := range pending {
		names = append(names, m.name)
	}
	if checkOnly && len(pending) > 0 {
		return nil, fmt.Errorf("%w: %s (run omnigate fhir migrate)", ErrMigrationNeeded, strings.Join(names, ", "))
	}
	if dryRun || checkOnly {
		return names, nil
	}
	for _, m := range pending {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			if step := goSteps[m.name]; step != nil {
				if err := step(ctx, tx); err != nil {
					return err
				}
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("migrate: %s: %w", m.name, classify(ctx, err))
		}
	}
	return names, nil
}
