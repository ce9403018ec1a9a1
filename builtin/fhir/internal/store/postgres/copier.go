package postgres

import (
	"context"
	"fmt"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

var _ store.Copier = (*Store)(nil)

// Versions implements store.Copier.
func (s *Store) Versions(ctx context.Context, after int64, limit int) ([]*store.Version, error) {
	bctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	vs, err := s.reader().all(bctx, ctx, selectVersion+`WHERE h.seq > $1 ORDER BY h.seq LIMIT $2`, after, int64(limit))
	if err != nil {
		return nil, fmt.Errorf("versions: %w", err)
	}
	return vs, nil
}

// Clear implements store.Copier: the tables are truncated, the history's
// numbering starts again, and every instance's read cache is emptied.
func (s *Store) Clear(ctx context.Context) error {
	tables := append([]string{"resources", "history", "history_compartment", "page_snapshots"}, indexTables...)
	return s.Update(ctx, func(tx store.Tx) error {
		w := tx.(*writeTx)
		bctx, cancel := w.bound(ctx)
		defer cancel()
		if _, err := w.tx.Exec(bctx, `TRUNCATE `+strings.Join(tables, ", ")+` RESTART IDENTITY`); err != nil {
			return fmt.Errorf("clear: %w", classify(ctx, err))
		}
		if _, err := w.tx.Exec(bctx, `SELECT setval('history_seq', 1, false), pg_notify($1, $2)`, notifyChannel, notifyAll); err != nil {
			return fmt.Errorf("clear: %w", classify(ctx, err))
		}
		if s.cache != nil {
			s.cache.clear()
		}
		return nil
	})
}
