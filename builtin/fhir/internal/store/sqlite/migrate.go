package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
)

// fillHistoryCompartments files every stored version under the Patient
// compartments it was in when written (schema 1 to 2): the compartments its
// body names, and for a deletion those of the version before it. It reads
// the versions in (rid, version) order, a thousand at a time.
func fillHistoryCompartments(ctx context.Context, tx *sql.Tx) error {
	const page = 1000
	ins, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO history_compartment (patient, seq) VALUES (?, ?)`)
	if err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	defer ins.Close()
	var lastRID, lastVersion int64
	var prevRID int64 = -1
	var prev []string // the compartments of the previous version of prevRID
	for {
		rows, err := tx.QueryContext(ctx, `SELECT h.seq, h.rid, h.version, h.deleted, h.body, r.type, r.id
			FROM history h JOIN resources r ON r.rid = h.rid
			WHERE (h.rid, h.version) > (?, ?) ORDER BY h.rid, h.version LIMIT ?`, lastRID, lastVersion, page)
		if err != nil {
			return fmt.Errorf("read versions: %w", err)
		}
		type row struct {
			seq, rid, version int64
			deleted           bool
			body              []byte
			typ, id           string
		}
		var batch []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.seq, &r.rid, &r.version, &r.deleted, &r.body, &r.typ, &r.id); err != nil {
				rows.Close()
				return fmt.Errorf("read versions: %w", err)
			}
			batch = append(batch, r)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("read versions: %w", err)
		}
		for _, r := range batch {
			if r.rid != prevRID {
				prevRID, prev = r.rid, nil
			}
			if !r.deleted {
				d := json.NewDecoder(bytes.NewReader(r.body))
				d.UseNumber()
				var tree any
				if err := d.Decode(&tree); err != nil {
					return fmt.Errorf("decode %s/%s version %d: %w", r.typ, r.id, r.version, err)
				}
				prev = search.Compartments(r.typ, r.id, tree)
			}
			for _, p := range prev {
				if _, err := ins.ExecContext(ctx, p, r.seq); err != nil {
					return fmt.Errorf("file version: %w", err)
				}
			}
		}
		if len(batch) < page {
			return nil
		}
		lastRID, lastVersion = batch[len(batch)-1].rid, batch[len(batch)-1].version
	}
}

// migrateAbsoluteRefs (schema 2 to 3): absolute references were indexed
// with the type and id at the end of their URL, so that one to another
// server's Patient/85 matched, and joined the compartment of, this
// server's Patient/85. Their rows keep the URL only, and the compartments
// of the resources that held such a reference to a Patient are computed
// again, for the current version and every past one.
func migrateAbsoluteRefs(ctx context.Context, tx *sql.Tx) error {
	const absolute = `url <> '' AND (ttype <> '' OR tid <> '')`
	var touched []int64
	rows, err := tx.QueryContext(ctx, `SELECT DISTINCT rid FROM sp_ref WHERE `+absolute+` AND ttype = 'Patient'`)
	if err != nil {
		return fmt.Errorf("find references: %w", err)
	}
	for rows.Next() {
		var rid int64
		if err := rows.Scan(&rid); err != nil {
			rows.Close()
			return err
		}
		touched = append(touched, rid)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, q := range []string{
		`UPDATE OR IGNORE sp_ref SET ttype = '', tid = '' WHERE ` + absolute,
		`DELETE FROM sp_ref WHERE ` + absolute, // duplicates of a row the update made
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("reindex references: %w", err)
		}
	}
	for _, rid := range touched {
		var typ, id string
		var deleted bool
		var body []byte
		err := tx.QueryRowContext(ctx, `SELECT r.type, r.id, r.deleted, h.body FROM resources r
			JOIN history h ON h.rid = r.rid AND h.version = r.version WHERE r.rid = ?`, rid).Scan(&typ, &id, &deleted, &body)
		if err != nil {
			return fmt.Errorf("read resource %d: %w", rid, err)
		}
		for _, q := range []string{`DELETE FROM compartment WHERE rid = ?`,
			`DELETE FROM history_compartment WHERE seq IN (SELECT seq FROM history WHERE rid = ?)`} {
			if _, err := tx.ExecContext(ctx, q, rid); err != nil {
				return fmt.Errorf("reset compartments: %w", err)
			}
		}
		if deleted {
			continue
		}
		d := json.NewDecoder(bytes.NewReader(body))
		d.UseNumber()
		var tree any
		if err := d.Decode(&tree); err != nil {
			return fmt.Errorf("decode %s/%s: %w", typ, id, err)
		}
		for _, p := range search.Compartments(typ, id, tree) {
			if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO compartment (rid, patient) VALUES (?, ?)`, rid, p); err != nil {
				return fmt.Errorf("file compartment: %w", err)
			}
		}
	}
	if len(touched) == 0 {
		return nil
	}
	// The past versions of the resources touched are filed again (the
	// others' rows are already there and ignored).
	return fillHistoryCompartments(ctx, tx)
}

// migrateOfType (schema 3 to 4) adds the rows that index identifiers by
// their type (search.OfTypeSuffix) for the current version of every
// resource that may have one (a coding somewhere in its body).
func migrateOfType(ctx context.Context, tx *sql.Tx) error {
	return addIndexRows(ctx, tx, func(typ string, body []byte) bool { return bytes.Contains(body, []byte(`"coding"`)) },
		func(p string) bool { return strings.HasSuffix(p, search.OfTypeSuffix) })
}

// migrateComposites (schema 4 to 5) adds the rows of composite parameters
// (see search.CompositeKey) for the current version of every resource of
// a type that has some.
func migrateComposites(ctx context.Context, tx *sql.Tx) error {
	return addIndexRows(ctx, tx, func(typ string, _ []byte) bool { return search.HasComposites(typ) }, search.IsCompositeKey)
}

// addIndexRows adds, for the current version of every resource whose type
// and body pass want, the index rows whose parameter key passes keep, a
// thousand resources at a time.
func addIndexRows(ctx context.Context, tx *sql.Tx, want func(typ string, body []byte) bool, keep func(p string) bool) error {
	const page = 1000
	var last int64
	for {
		rows, err := tx.QueryContext(ctx, `SELECT r.rid, r.type, r.id, h.body FROM resources r JOIN history h ON h.seq = r.seq
			WHERE r.rid > ? AND r.deleted = 0 ORDER BY r.rid LIMIT ?`, last, page)
		if err != nil {
			return fmt.Errorf("read resources: %w", err)
		}
		type row struct {
			rid     int64
			typ, id string
			body    []byte
		}
		var batch []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.rid, &r.typ, &r.id, &r.body); err != nil {
				rows.Close()
				return fmt.Errorf("read resources: %w", err)
			}
			batch = append(batch, r)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("read resources: %w", err)
		}
		for _, r := range batch {
			if !want(r.typ, r.body) {
				continue
			}
			d := json.NewDecoder(bytes.NewReader(r.body))
			d.UseNumber()
			var tree any
			if err := d.Decode(&tree); err != nil {
				return fmt.Errorf("decode %s/%s: %w", r.typ, r.id, err)
			}
			if err := insertEntries(ctx, tx, r.rid, search.Index(r.typ, r.id, tree), keep); err != nil {
				return err
			}
		}
		if len(batch) < page {
			return nil
		}
		last = batch[len(batch)-1].rid
	}
}

// insertEntries inserts the index rows of e whose parameter passes keep,
// ignoring those already there.
func insertEntries(ctx context.Context, tx *sql.Tx, rid int64, e *search.Entries, keep func(p string) bool) error {
	e = e.Only(keep)
	ins := func(table string, vals ...any) error {
		q := `INSERT OR IGNORE INTO ` + table + ` VALUES (?` + strings.Repeat(", ?", len(vals)) + `)`
		if _, err := tx.ExecContext(ctx, q, append([]any{rid}, vals...)...); err != nil {
			return fmt.Errorf("index %s: %w", table, err)
		}
		return nil
	}
	var err error
	for _, x := range e.Strings {
		err = errors.Join(err, ins("sp_string", x.Param, x.Norm, x.Exact))
	}
	for _, x := range e.Tokens {
		err = errors.Join(err, ins("sp_token", x.Param, x.System, x.Code, x.Text))
	}
	for _, x := range e.Refs {
		err = errors.Join(err, ins("sp_ref", x.Param, x.Type, x.ID, x.URL))
	}
	for _, x := range e.Dates {
		err = errors.Join(err, ins("sp_date", x.Param, x.Lo, x.Hi))
	}
	for _, x := range e.Numbers {
		err = errors.Join(err, ins("sp_number", x.Param, x.Value))
	}
	for _, x := range e.Quantities {
		err = errors.Join(err, ins("sp_quantity", x.Param, x.Value, x.System, x.Code))
	}
	for _, x := range e.URIs {
		err = errors.Join(err, ins("sp_uri", x.Param, x.Value))
	}
	return err
}
