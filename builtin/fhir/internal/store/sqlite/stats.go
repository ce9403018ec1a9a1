package sqlite

import (
	"context"
	"fmt"
	"os"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

var _ store.Statser = (*Store)(nil)

// Stats counts the live resources by type and the versions written, and
// sizes the database: its pages and, for a file, its write-ahead log.
func (s *Store) Stats(ctx context.Context) (store.Stats, error) {
	st := store.Stats{Backend: "sqlite", ByType: map[string]int{}}
	rows, err := s.read.QueryContext(ctx, `SELECT type, COUNT(*) FROM resources WHERE deleted = 0 GROUP BY type`)
	if err != nil {
		return st, fmt.Errorf("count resources: %w", err)
	}
	for rows.Next() {
		var typ string
		var n int
		if err := rows.Scan(&typ, &n); err != nil {
			rows.Close()
			return st, fmt.Errorf("count resources: %w", err)
		}
		st.ByType[typ] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("count resources: %w", err)
	}
	// seq is AUTOINCREMENT and versions are never removed: the largest is
	// the number written.
	if err := s.read.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM history`).Scan(&st.Versions); err != nil {
		return st, fmt.Errorf("count versions: %w", err)
	}
	var pages, size int64
	if err := s.read.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
		return st, fmt.Errorf("size: %w", err)
	}
	if err := s.read.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&size); err != nil {
		return st, fmt.Errorf("size: %w", err)
	}
	st.Bytes = pages * size
	if s.path != ":memory:" {
		if fi, err := os.Stat(s.path + "-wal"); err == nil {
			st.Bytes += fi.Size()
		}
	}
	return st, nil
}

// Check runs a query on the read pool.
func (s *Store) Check(ctx context.Context) error {
	var one int
	if err := s.read.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("check store: %w", err)
	}
	return nil
}
