package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// Update implements store.Store: fn runs in one transaction, serialized
// with every other write transaction on the database (see the package
// documentation), committed when fn returns nil.
func (s *Store) Update(ctx context.Context, fn func(tx store.Tx) error) error {
	bctx, cancel := context.WithTimeout(ctx, s.timeout)
	tx, err := s.pool.BeginTx(bctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		cancel()
		return fmt.Errorf("begin write: %w", classify(ctx, err))
	}
	// READ COMMITTED: every statement after the lock sees every commit
	// made before the lock was granted.
	_, err = tx.Exec(bctx, `SELECT pg_advisory_xact_lock($1)`, writeLockKey)
	cancel()
	if err != nil {
		s.rollback(ctx, tx)
		return fmt.Errorf("write lock: %w", classify(ctx, err))
	}
	w := &writeTx{reader: reader{tx, s.timeout}, tx: tx, s: s}
	defer func() {
		// A panic in fn must not leave the transaction open: it holds the
		// write lock of every instance.
		if r := recover(); r != nil {
			s.rollback(ctx, tx)
			panic(r)
		}
	}()
	err = fn(w)
	if err == nil {
		err = w.finish(ctx)
	}
	if err != nil {
		s.rollback(ctx, tx)
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	err = tx.Commit(cctx)
	cancel()
	if s.cache != nil && len(w.written) > 0 {
		// This instance sees its own writes at once, without waiting for
		// the notification; even a failed commit may have written.
		s.cache.invalidate(w.written)
	}
	if err != nil {
		return fmt.Errorf("commit: %w", classify(ctx, err))
	}
	return nil
}

func (s *Store) rollback(ctx context.Context, tx pgx.Tx) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	tx.Rollback(rctx) // a broken connection is closed and dropped by the pool
}

// Loader is the bulk write path: the store.Tx that Update passes to fn
// implements it. Transaction Bundles (and so the import command) and the
// copy command write through it: many resources in few round trips.
type Loader interface {
	// PutAll is Put of each version with its index entries (idx[i] for
	// vs[i], nil for a tombstone), in order: it writes exactly what those
	// Puts would (versions, history, Seq in order, index rows), and fills
	// in each version's Key and Seq. The caller sets Version and Updated
	// as for Put. The same resource may appear more than once.
	PutAll(ctx context.Context, vs []*store.Version, idx []*search.Entries) error
	// ReadAll returns the current versions (tombstones included) of the
	// resources named by refs ("Type/id"), by ref, in one round trip:
	// those that do not exist are left out. It sees the transaction's
	// writes.
	ReadAll(ctx context.Context, refs []string) (map[string]*store.Version, error)
}

var _ Loader = (*writeTx)(nil)

// Load writes the versions in one Update through Loader.PutAll.
func (s *Store) Load(ctx context.Context, vs []*store.Version, idx []*search.Entries) error {
	return s.Update(ctx, func(tx store.Tx) error { return tx.(Loader).PutAll(ctx, vs, idx) })
}

// readAllSQL reads the current versions of the resources named by two
// arrays of types and ids.
const readAllSQL = `SELECT ` + versionColumns + ` FROM unnest($1::text[], $2::text[]) AS k(type, id)
	JOIN resources r ON r.type = k.type AND r.id = k.id JOIN history h ON h.seq = r.seq`

// ReadAll implements Loader.
func (w *writeTx) ReadAll(ctx context.Context, refs []string) (map[string]*store.Version, error) {
	out := make(map[string]*store.Version, len(refs))
	if len(refs) == 0 {
		return out, nil
	}
	types, ids := make([]string, 0, len(refs)), make([]string, 0, len(refs))
	for _, ref := range refs {
		typ, id, ok := strings.Cut(ref, "/")
		if !ok {
			return nil, fmt.Errorf("read all: %q is not Type/id", ref)
		}
		types, ids = append(types, text(typ)), append(ids, text(id))
	}
	bctx, cancel := w.bound(ctx)
	defer cancel()
	vs, err := w.all(bctx, ctx, readAllSQL, types, ids)
	if err != nil {
		return nil, fmt.Errorf("read all: %w", err)
	}
	for _, v := range vs {
		out[v.Type+"/"+v.ID] = v
	}
	return out, nil
}

// writeTx implements store.Tx and Loader.
type writeTx struct {
	reader
	tx      pgx.Tx
	s       *Store
	written []string // cache keys of the resources written, notified at commit
	// pending are the index rows queued for insertion, by table (see
	// flush); pendingKeys the resources they belong to.
	pending     map[string]*rowSet
	pendingKeys map[string]bool
}

// putSQL writes a version in one statement: the resource's row (made or
// updated), the history row, and for a resource that existed, the removal
// of its index rows (its compartments filed first under the deletion when
// the version deletes it). The sub-statements all see the state before
// the statement. It returns the resource's rid and the version's seq.
var putSQL = func() string {
	var b strings.Builder
	b.WriteString(`WITH old AS (SELECT rid FROM resources WHERE type = $1 AND id = $2),
	r AS (INSERT INTO resources AS r (type, id, version, seq, updated, deleted)
		VALUES ($1, $2, $3, nextval('history_seq'), $4, $5)
		ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, seq = excluded.seq,
			updated = excluded.updated, deleted = excluded.deleted
		RETURNING rid, seq),
	h AS (INSERT INTO history (seq, rid, type, version, updated, deleted, method, body)
		SELECT seq, rid, $1, $3, $4, $5, $6, $7 FROM r),
	hc AS (INSERT INTO history_compartment (patient, seq)
		SELECT c.patient, r.seq FROM compartment c, r WHERE $5 AND c.rid = (SELECT rid FROM old)
		ON CONFLICT DO NOTHING)`)
	for i, t := range indexTables {
		fmt.Fprintf(&b, ",\n\td%d AS (DELETE FROM %s WHERE rid = (SELECT rid FROM old))", i, t)
	}
	b.WriteString("\nSELECT rid, seq FROM r")
	return b.String()
}()

// indexTables are the tables holding a resource's index entries.
var indexTables = []string{"sp_string", "sp_token", "sp_ref", "sp_date", "sp_number", "sp_quantity", "sp_uri", "compartment"}

func (w *writeTx) Put(ctx context.Context, v *store.Version, idx *search.Entries) error {
	k := cacheKey(v.Type, v.ID)
	if w.pendingKeys[k] {
		// Its rows of an earlier Put in this transaction are replaced.
		if err := w.flush(ctx); err != nil {
			return err
		}
	}
	bctx, cancel := w.bound(ctx)
	defer cancel()
	var body []byte
	if !v.Deleted {
		body = v.Body
	}
	var rid, seq int64
	err := w.tx.QueryRow(bctx, putSQL, text(v.Type), text(v.ID), v.Version, v.Updated.UnixMicro(), v.Deleted, v.Method, body).Scan(&rid, &seq)
	if err != nil {
		return fmt.Errorf("put: %w", classify(ctx, err))
	}
	v.Key, v.Seq = rid, seq
	w.written = append(w.written, k)
	if idx == nil || v.Deleted {
		return nil
	}
	w.queue(k, rid, seq, idx)
	if rowCount(w.pending) > maxPending {
		return w.flush(ctx)
	}
	return nil
}

// minCopyRows is the fewest rows PutAll writes with COPY rather than with
// one batch of INSERTs.
const minCopyRows = 64

// maxPending bounds the rows queued before they are written.
const maxPending = 20000

// queue adds a version's index rows to pending; they are written by
// flush, before the reads of the transaction that use the index, before a
// resource's rows are replaced, and at commit.
func (w *writeTx) queue(k string, rid, seq int64, e *search.Entries) {
	if w.pending == nil {
		w.pending = map[string]*rowSet{}
		w.pendingKeys = map[string]bool{}
	}
	w.pendingKeys[k] = true
	addRows(w.pending, rid, seq, e)
}

// flush writes the pending rows.
func (w *writeTx) flush(ctx context.Context) error {
	if len(w.pendingKeys) == 0 {
		return nil
	}
	err := w.writeRows(ctx, w.pending, false)
	clear(w.pending)
	clear(w.pendingKeys)
	return err
}

// finish writes what is pending and notifies the resources written; the
// notifications are delivered when the transaction commits.
func (w *writeTx) finish(ctx context.Context) error {
	if err := w.flush(ctx); err != nil {
		return err
	}
	if len(w.written) == 0 {
		return nil
	}
	payloads := w.written
	if len(payloads) > maxNotifyKeys {
		payloads = []string{notifyAll}
	}
	for _, p := range payloads {
		if len(p) > maxPayload {
			payloads = []string{notifyAll}
			break
		}
	}
	bctx, cancel := w.bound(ctx)
	defer cancel()
	if _, err := w.tx.Exec(bctx, `SELECT pg_notify($1, k) FROM unnest($2::text[]) k`, notifyChannel, textAll(payloads)); err != nil {
		return fmt.Errorf("notify: %w", classify(ctx, err))
	}
	return nil
}

func textAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = text(s)
	}
	return out
}

// The reads that use the index see the queued rows.

func (w *writeTx) Search(ctx context.Context, q *search.Query, offset, limit int) ([]store.Match, error) {
	if err := w.flush(ctx); err != nil {
		return nil, err
	}
	return w.reader.Search(ctx, q, offset, limit)
}

func (w *writeTx) Count(ctx context.Context, q *search.Query) (int, error) {
	if err := w.flush(ctx); err != nil {
		return 0, err
	}
	return w.reader.Count(ctx, q)
}

func (w *writeTx) Include(ctx context.Context, page []*store.Version, inc search.Include) ([]*store.Version, error) {
	if err := w.flush(ctx); err != nil {
		return nil, err
	}
	return w.reader.Include(ctx, page, inc)
}

// PutAll implements Loader. The versions are written in runs without a
// repeated resource; each run takes a few statements whatever its length:
// one for the resources' rows, and a COPY of their history and index rows
// per table (COPY cost less than INSERT … SELECT unnest(…) in
// BenchmarkIngest; docs/BENCHMARKS.md).
func (w *writeTx) PutAll(ctx context.Context, vs []*store.Version, idx []*search.Entries) error {
	if len(idx) != len(vs) {
		return errors.New("put all: one index entry set per version")
	}
	if err := w.flush(ctx); err != nil {
		return err
	}
	const maxRun = 5000
	for start := 0; start < len(vs); {
		seen := map[string]bool{}
		end := start
		for end < len(vs) && end-start < maxRun {
			k := cacheKey(vs[end].Type, vs[end].ID)
			if seen[k] {
				break
			}
			seen[k] = true
			end++
		}
		if err := w.putRun(ctx, vs[start:end], idx[start:end]); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// putRunSQL is putSQL for many resources (none twice) whose seqs are
// given: it makes or updates their rows, files the compartments of those
// deleted, removes the index rows of those that existed, and returns each
// one's rid by seq. The history rows are written apart.
var putRunSQL = func() string {
	var b strings.Builder
	b.WriteString(`WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bool[], $6::bigint[])
		AS t(type, id, version, updated, deleted, seq)),
	old AS (SELECT r.rid, i.deleted, i.seq FROM resources r JOIN input i ON r.type = i.type AND r.id = i.id),
	r AS (INSERT INTO resources AS r (type, id, version, seq, updated, deleted)
		SELECT type, id, version, seq, updated, deleted FROM input
		ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, seq = excluded.seq,
			updated = excluded.updated, deleted = excluded.deleted
		RETURNING rid, seq),
	hc AS (INSERT INTO history_compartment (patient, seq)
		SELECT c.patient, o.seq FROM old o JOIN compartment c ON c.rid = o.rid WHERE o.deleted
		ON CONFLICT DO NOTHING)`)
	for i, t := range indexTables {
		fmt.Fprintf(&b, ",\n\td%d AS (DELETE FROM %s WHERE rid IN (SELECT rid FROM old))", i, t)
	}
	b.WriteString("\nSELECT rid, seq FROM r")
	return b.String()
}()

func (w *writeTx) putRun(ctx context.Context, vs []*store.Version, idx []*search.Entries) error {
	n := len(vs)
	bctx, cancel := w.bound(ctx)
	defer cancel()
	// The run's seqs, in order: nobody else draws from the sequence while
	// this transaction holds the write lock.
	var last int64
	if err := w.tx.QueryRow(bctx, `SELECT setval('history_seq', nextval('history_seq') + $1 - 1)`, int64(n)).Scan(&last); err != nil {
		return fmt.Errorf("put: %w", classify(ctx, err))
	}
	first := last - int64(n) + 1
	types, ids, methods := make([]string, n), make([]string, n), make([]string, n)
	versions, updated, seqs := make([]int64, n), make([]int64, n), make([]int64, n)
	deleted := make([]bool, n)
	for i, v := range vs {
		types[i], ids[i], methods[i] = text(v.Type), text(v.ID), v.Method
		versions[i], updated[i], seqs[i] = v.Version, v.Updated.UnixMicro(), first+int64(i)
		deleted[i] = v.Deleted
	}
	rows, err := w.tx.Query(bctx, putRunSQL, types, ids, versions, updated, deleted, seqs)
	if err != nil {
		return fmt.Errorf("put: %w", classify(ctx, err))
	}
	rids := make(map[int64]int64, n)
	for rows.Next() {
		var rid, seq int64
		if err := rows.Scan(&rid, &seq); err != nil {
			rows.Close()
			return fmt.Errorf("put: %w", classify(ctx, err))
		}
		rids[seq] = rid
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("put: %w", classify(ctx, err))
	}
	set := map[string]*rowSet{}
	hist := &rowSet{}
	for i, v := range vs {
		seq := seqs[i]
		rid, ok := rids[seq]
		if !ok {
			return fmt.Errorf("put: no row for %s/%s", v.Type, v.ID)
		}
		v.Key, v.Seq = rid, seq
		w.written = append(w.written, cacheKey(v.Type, v.ID))
		var body []byte
		if !v.Deleted {
			body = v.Body
		}
		hist.add(seq, rid, types[i], v.Version, updated[i], v.Deleted, v.Method, body)
		if idx[i] != nil && !v.Deleted {
			addRows(set, rid, seq, idx[i])
		}
	}
	set["history"] = hist
	// COPY takes a round trip per table, the INSERT batch one in all: a
	// short run's rows go in the batch.
	return w.writeRows(ctx, set, !w.s.bulkInsert && rowCount(set) >= minCopyRows)
}
