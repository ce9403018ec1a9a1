package fhir

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/postgres"
)

// CopyOptions configure CopyStore.
type CopyOptions struct {
	// Force empties a target that holds resources before copying into it.
	// Default false: such a target is refused with ErrTargetNotEmpty.
	Force bool
	// Progress, if not nil, is called after each batch with the versions
	// copied so far and the source's total.
	Progress func(done, total int64)
}

// CopySummary counts what CopyStore copied.
type CopySummary struct {
	// Versions is how many versions were copied (creates, updates and
	// deletions); Resources how many distinct resources they are.
	Versions, Resources int64
}

// ErrTargetNotEmpty is returned by CopyStore for a target that holds
// versions, unless CopyOptions.Force is set.
var ErrTargetNotEmpty = errors.New("the target store is not empty")

// copyBatch is how many versions CopyStore writes per transaction.
const copyBatch = 2000

// CopyStore copies every version of the store from names into the store
// to names, in the order they were written: each version keeps its
// versionId, meta.lastUpdated, method and body, deletions included, so
// reads, ETags and _history answer the same from either store; search
// index entries are computed anew from the bodies. The source is read as
// it is while the copy runs: copy a store no server writes to. A SQLite
// source must exist. The target is migrated (created) if needed. Errors
// never show a password.
func CopyStore(ctx context.Context, from, to *StoreConfig, opt CopyOptions) (CopySummary, error) {
	var sum CopySummary
	if from.Driver != "postgres" {
		if _, err := os.Stat(from.Path); err != nil {
			return sum, fmt.Errorf("source: %w", err)
		}
	}
	if from.Describe() == to.Describe() && from.Driver == to.Driver {
		return sum, errors.New("the source and the target are the same store")
	}
	src, err := openCopyStore(ctx, from)
	if err != nil {
		return sum, fmt.Errorf("open source: %w", err)
	}
	defer src.Close()
	dst, err := openCopyStore(ctx, to)
	if err != nil {
		return sum, fmt.Errorf("open target: %w", err)
	}
	defer dst.Close()
	stats, err := src.(store.Statser).Stats(ctx)
	if err != nil {
		return sum, fmt.Errorf("source: %w", err)
	}
	switch existing, _, err := dst.History(ctx, store.HistoryQuery{Count: 1}); {
	case err != nil:
		return sum, fmt.Errorf("target: %w", err)
	case len(existing) > 0 && !opt.Force:
		return sum, ErrTargetNotEmpty
	case len(existing) > 0:
		if err := dst.(store.Copier).Clear(ctx); err != nil {
			return sum, fmt.Errorf("empty the target: %w", err)
		}
	}
	seen := map[string]bool{}
	for after := int64(0); ; {
		vs, err := src.(store.Copier).Versions(ctx, after, copyBatch)
		if err != nil {
			return sum, fmt.Errorf("read source: %w", err)
		}
		if len(vs) == 0 {
			break
		}
		after = vs[len(vs)-1].Seq
		if err := copyVersions(ctx, dst, vs); err != nil {
			return sum, fmt.Errorf("write target: %w", err)
		}
		for _, v := range vs {
			seen[v.Type+"/"+v.ID] = true
		}
		sum.Versions += int64(len(vs))
		if opt.Progress != nil {
			opt.Progress(sum.Versions, max(stats.Versions, sum.Versions))
		}
	}
	sum.Resources = int64(len(seen))
	return sum, nil
}

// openCopyStore opens the store sc names, without a read cache.
func openCopyStore(ctx context.Context, sc *StoreConfig) (store.Store, error) {
	cfg := DefaultConfig()
	def := cfg.Store
	cfg.Store = *sc
	if cfg.Store.Sync == "" {
		cfg.Store.Sync = def.Sync
	}
	if cfg.Store.BackupDir == "" {
		cfg.Store.BackupDir = def.BackupDir
	}
	cfg.Store.ReadCache = 0
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return openConfiguredStore(ctx, cfg)
}

// copyVersions writes vs, as they are, in one transaction: through the
// bulk path where the store has one.
func copyVersions(ctx context.Context, dst store.Store, vs []*store.Version) error {
	idx := make([]*search.Entries, len(vs))
	errs := make([]error, len(vs))
	out := make([]*store.Version, len(vs))
	parallel(len(vs), func(i int) {
		v := *vs[i]
		v.Key, v.Seq = 0, 0
		out[i] = &v
		if v.Deleted {
			v.Body = nil
			return
		}
		tree, err := decodeJSON(v.Body)
		if err != nil {
			errs[i] = fmt.Errorf("%s/%s version %d: %w", v.Type, v.ID, v.Version, err)
			return
		}
		idx[i] = search.Index(v.Type, v.ID, tree)
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return dst.Update(ctx, func(tx store.Tx) error {
		if l, ok := tx.(postgres.Loader); ok {
			return l.PutAll(ctx, out, idx)
		}
		for i, v := range out {
			if err := tx.Put(ctx, v, idx[i]); err != nil {
				return err
			}
		}
		return nil
	})
}
