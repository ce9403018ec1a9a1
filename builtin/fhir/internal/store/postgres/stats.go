package postgres

import (
	"context"
	"fmt"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

var _ store.Statser = (*Store)(nil)

// Stats implements store.Statser: the live resources by type, the versions
// written and the size of the database (pg_database_size).
func (s *Store) Stats(ctx context.Context) (store.Stats, error) {
	st := store.Stats{Backend: "postgres", ByType: map[string]int{}}
	bctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := s.pool.Query(bctx, `SELECT type, count(*) FROM resources WHERE NOT deleted GROUP BY type`)
	if err != nil {
		return st, fmt.Errorf("count resources: %w", classify(ctx, err))
	}
	for rows.Next() {
		var typ string
		var n int
		if err := rows.Scan(&typ, &n); err != nil {
			rows.Close()
			return st, fmt.Errorf("count resources: %w", classify(ctx, err))
		}
		st.ByType[typ] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("count resources: %w", classify(ctx, err))
	}
	if err := s.pool.QueryRow(bctx, `SELECT count(*) FROM history`).Scan(&st.Versions); err != nil {
		return st, fmt.Errorf("count versions: %w", classify(ctx, err))
	}
	if err := s.pool.QueryRow(bctx, `SELECT pg_database_size(current_database())`).Scan(&st.Bytes); err != nil {
		return st, fmt.Errorf("size: %w", classify(ctx, err))
	}
	return st, nil
}

// Check implements store.Statser: the database answers.
func (s *Store) Check(ctx context.Context) error { return s.Ping(ctx) }
