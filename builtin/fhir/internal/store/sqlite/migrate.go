package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

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
