package sqlite

import (
	"context"
	"fmt"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

var _ store.Copier = (*Store)(nil)

// Versions implements store.Copier.
func (s *Store) Versions(ctx context.Context, after int64, limit int) ([]*store.Version, error) {
	rows, err := s.read.QueryContext(ctx, selectVersion+`WHERE h.seq > ? ORDER BY h.seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("versions: %w", err)
	}
	return scanAll(rows)
}

// Clear implements store.Copier; the history's numbering starts again.
func (s *Store) Clear(ctx context.Context) error {
	return s.Update(ctx, func(tx store.Tx) error {
		w := tx.(*writeTx)
		for _, t := range append([]string{"resources", "history", "history_compartment"}, indexTables...) {
			if _, err := w.tx.ExecContext(ctx, `DELETE FROM `+t); err != nil {
				return fmt.Errorf("clear %s: %w", t, err)
			}
		}
		if _, err := w.tx.ExecContext(ctx, `DELETE FROM sqlite_sequence WHERE name = 'history'`); err != nil {
			return fmt.Errorf("clear history numbering: %w", err)
		}
		if s.cache != nil {
			s.cache.clear()
		}
		return nil
	})
}
