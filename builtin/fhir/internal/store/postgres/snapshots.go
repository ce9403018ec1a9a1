package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

var _ store.Snapshots = (*Store)(nil)

// PutSnapshot implements store.Snapshots: the snapshot goes into the
// page_snapshots table, and snapshots that expired before this one was
// made are deleted on the way.
func (s *Store) PutSnapshot(ctx context.Context, token string, data []byte, expires time.Time) error {
	bctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM page_snapshots WHERE expires < $1`, expires.Add(-24*time.Hour))
	b.Queue(`INSERT INTO page_snapshots (token, data, expires) VALUES ($1, $2, $3)
		ON CONFLICT (token) DO UPDATE SET data = EXCLUDED.data, expires = EXCLUDED.expires`, token, data, expires)
	if err := s.pool.SendBatch(bctx, b).Close(); err != nil {
		return fmt.Errorf("put snapshot: %w", classify(ctx, err))
	}
	return nil
}

// GetSnapshot implements store.Snapshots.
func (s *Store) GetSnapshot(ctx context.Context, token string, now time.Time) ([]byte, error) {
	bctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var data []byte
	err := s.pool.QueryRow(bctx, `SELECT data FROM page_snapshots WHERE token = $1 AND expires >= $2`, token, now).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get snapshot: %w", classify(ctx, err))
	}
	return data, nil
}
