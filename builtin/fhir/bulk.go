package fhir

import (
	"context"
	"errors"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/postgres"
)

// bulkTx batches the writes of a transaction on a store with a bulk write
// path (postgres.Loader): Put queues the version, and the queue is written
// with one PutAll before any read that needs the index or history (Search,
// Count, Include, Fetch, History, VRead) and at the end of the
// transaction. Read answers from the versions queued and from those
// prefetched with ReadAll, so the transaction reads its own writes as it
// would through Put. A transaction Bundle of n entries then costs a few
// round trips instead of two per entry (docs/BENCHMARKS.md, "PostgreSQL
// import").
type bulkTx struct {
	store.Tx
	load postgres.Loader
	vs   []*store.Version
	idx  []*search.Entries
	// cur holds the current version of the resources prefetched or
	// written, by "Type/id"; nil for one known not to exist.
	cur map[string]*store.Version
}

// bulkUpdate is h.store.Update with fn's writes batched through a bulkTx
// when the store has a bulk write path; fn gets the plain Tx otherwise.
func (h *Handler) bulkUpdate(ctx context.Context, fn func(tx store.Tx) error) error {
	return h.store.Update(ctx, func(tx store.Tx) error {
		load, ok := tx.(postgres.Loader)
		if !ok || h.noBulk {
			return fn(tx)
		}
		b := &bulkTx{Tx: tx, load: load, cur: map[string]*store.Version{}}
		if err := fn(b); err != nil {
			return err
		}
		return b.flush(ctx)
	})
}

// prefetch reads the current versions of the resources that entries
// write by id (updates, patches and deletes, and creates with an id
// settled by a condition) in one round trip, for Read. It does nothing
// unless tx is a bulkTx.
func prefetch(ctx context.Context, tx store.Tx, entries []*bundleEntry) error {
	b, ok := tx.(*bulkTx)
	if !ok {
		return nil
	}
	var refs []string
	for _, e := range entries {
		if o := e.op; o != nil && o.id != "" {
			if _, done := b.cur[o.typ+"/"+o.id]; !done {
				refs = append(refs, o.typ+"/"+o.id)
				b.cur[o.typ+"/"+o.id] = nil
			}
		}
	}
	if len(refs) == 0 {
		return nil
	}
	found, err := b.load.ReadAll(ctx, refs)
	if err != nil {
		return err
	}
	for k, v := range found {
		b.cur[k] = v
	}
	return nil
}

// flush writes the queued versions.
func (b *bulkTx) flush(ctx context.Context) error {
	if len(b.vs) == 0 {
		return nil
	}
	err := b.load.PutAll(ctx, b.vs, b.idx)
	b.vs, b.idx = b.vs[:0], b.idx[:0]
	return err
}

// Put queues v; its Key and Seq are set when the queue is written, before
// the transaction commits.
func (b *bulkTx) Put(ctx context.Context, v *store.Version, idx *search.Entries) error {
	b.vs = append(b.vs, v)
	b.idx = append(b.idx, idx)
	b.cur[v.Type+"/"+v.ID] = v
	return nil
}

func (b *bulkTx) Read(ctx context.Context, typ, id string) (*store.Version, error) {
	if v, ok := b.cur[typ+"/"+id]; ok {
		if v == nil {
			return nil, store.ErrNotFound
		}
		return v, nil
	}
	v, err := b.Tx.Read(ctx, typ, id)
	switch {
	case err == nil:
		b.cur[typ+"/"+id] = v
	case errors.Is(err, store.ErrNotFound):
		b.cur[typ+"/"+id] = nil
	}
	return v, err
}

func (b *bulkTx) VRead(ctx context.Context, typ, id string, version int64) (*store.Version, error) {
	if err := b.flush(ctx); err != nil {
		return nil, err
	}
	return b.Tx.VRead(ctx, typ, id, version)
}

func (b *bulkTx) History(ctx context.Context, q store.HistoryQuery) ([]*store.Version, int, error) {
	if err := b.flush(ctx); err != nil {
		return nil, 0, err
	}
	return b.Tx.History(ctx, q)
}

func (b *bulkTx) Search(ctx context.Context, q *search.Query, offset, limit int) ([]store.Match, error) {
	if err := b.flush(ctx); err != nil {
		return nil, err
	}
	return b.Tx.Search(ctx, q, offset, limit)
}

func (b *bulkTx) Count(ctx context.Context, q *search.Query) (int, error) {
	if err := b.flush(ctx); err != nil {
		return 0, err
	}
	return b.Tx.Count(ctx, q)
}

func (b *bulkTx) Fetch(ctx context.Context, ms []store.Match) ([]*store.Version, error) {
	if err := b.flush(ctx); err != nil {
		return nil, err
	}
	return b.Tx.Fetch(ctx, ms)
}

func (b *bulkTx) Include(ctx context.Context, page []*store.Version, inc search.Include) ([]*store.Version, error) {
	if err := b.flush(ctx); err != nil {
		return nil, err
	}
	return b.Tx.Include(ctx, page, inc)
}

var _ store.Tx = (*bulkTx)(nil)
