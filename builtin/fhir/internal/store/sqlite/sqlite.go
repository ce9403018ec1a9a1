// Package sqlite is the embedded FHIR store: one SQLite file in WAL mode,
// through a driver that needs no cgo (github.com/ncruces/go-sqlite3).
//
// Every resource version is kept (history); the current version of each
// resource is indexed for search in one table per parameter type. Writes go
// through one connection, serialized; reads use a pool and see the last
// committed state, so searches never wait for writes.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	_ "github.com/ncruces/go-sqlite3/driver" // registers the "sqlite3" database/sql driver

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// Options configure Open.
type Options struct {
	// Sync is the durability of commits: "full" (default) fsyncs the WAL on
	// every commit, so acknowledged writes survive power loss; "normal"
	// fsyncs only at checkpoints: acknowledged writes survive a crash of
	// the process (kill -9) but not of the machine.
	Sync string
	// ReadConns is the size of the read pool. Default: 2 per CPU, at
	// least 4.
	ReadConns int
	// CacheBytes bounds the cache of recently read resources (their JSON
	// sizes added up). Default 0: no cache. The fhir package sets 64MiB.
	CacheBytes int64
	// Driver is the database/sql driver name. Default "sqlite3"
	// (github.com/ncruces/go-sqlite3); the benchmark that chose it also
	// runs "sqlite" (modernc.org/sqlite).
	Driver string
}

// Store is the SQLite store. It is safe for concurrent use.
type Store struct {
	path   string
	write  *sql.DB // one connection: writes are serialized
	read   *sql.DB // readers; the same as write for ":memory:"
	mu     sync.Mutex
	closed bool
	stmts  sync.Map // SQL -> *sql.Stmt prepared on write
	// readStmt is readSQL prepared on the read pool.
	readStmt *sql.Stmt
	cache    *readCache // nil: none
	lock     *os.File   // the store file's lock, nil in memory
	driver   string     // for Backup's own connection
	dsn      string
}

// writeStmts are the statements of writes, prepared once on the write
// connection when the store opens, so that SQLite parses each once.
var writeStmts = []string{
	`SELECT rid FROM resources WHERE type = ? AND id = ?`,
	`INSERT INTO resources (type, id, version, seq, updated, deleted) VALUES (?, ?, ?, 0, 0, ?)`,
	`INSERT INTO history (rid, type, version, updated, deleted, method, body) VALUES (?, ?, ?, ?, ?, ?, ?)`,
	`UPDATE resources SET version = ?, seq = ?, updated = ?, deleted = ? WHERE rid = ?`,
}

// indexColumns is the number of columns of each index table.
var indexColumns = map[string]int{
	"sp_string": 4, "sp_token": 5, "sp_ref": 5, "sp_date": 4, "sp_number": 3, "sp_quantity": 5, "sp_uri": 3, "compartment": 2,
	"history_compartment": 2,
}

// batchSizes are the row counts of the prepared multi-row inserts; a
// resource's rows go in as few statements as these sizes allow.
var batchSizes = []int{32, 16, 8, 4, 2, 1}

// insertSQL is the statement inserting n rows into an index table.
func insertSQL(table string, n int) string {
	row := "(?" + strings.Repeat(", ?", indexColumns[table]-1) + ")"
	return `INSERT OR IGNORE INTO ` + table + ` VALUES ` + row + strings.Repeat(", "+row, n-1)
}

func init() {
	for _, t := range indexTables {
		writeStmts = append(writeStmts, `DELETE FROM `+t+` WHERE rid = ?`)
		for _, n := range batchSizes {
			writeStmts = append(writeStmts, insertSQL(t, n))
		}
	}
	for _, n := range batchSizes {
		writeStmts = append(writeStmts, insertSQL("history_compartment", n))
	}
	writeStmts = append(writeStmts, deletionCompartmentsSQL)
}

// deletionCompartmentsSQL files a deletion (its seq, then the rid) under
// the compartments of the version it deletes.
const deletionCompartmentsSQL = `INSERT OR IGNORE INTO history_compartment (patient, seq) SELECT patient, ? FROM compartment WHERE rid = ?`

func (s *Store) prepare(ctx context.Context) error {
	for _, q := range writeStmts {
		st, err := s.write.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		s.stmts.Store(q, st)
	}
	return nil
}

// stmt returns the prepared statement of query, or nil if it is not one of
// writeStmts.
func (s *Store) stmt(query string) *sql.Stmt {
	if st, ok := s.stmts.Load(query); ok {
		return st.(*sql.Stmt)
	}
	return nil
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database file at path, or a private
// in-memory database for ":memory:". The parent folder is created. Errors
// name the file.
func Open(ctx context.Context, path string, opt Options) (*Store, error) {
	if opt.Sync == "" {
		opt.Sync = "full"
	}
	if opt.Sync != "full" && opt.Sync != "normal" {
		return nil, fmt.Errorf("sqlite: sync must be full or normal, not %q", opt.Sync)
	}
	if opt.Driver == "" {
		opt.Driver = "sqlite3"
	}
	if opt.ReadConns <= 0 {
		opt.ReadConns = max(4, 2*runtime.NumCPU())
	}
	memory := path == ":memory:"
	var lock *os.File
	if !memory {
		if dir := filepath.Dir(path); dir != "" {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, fmt.Errorf("create store folder: %w", err)
			}
		}
		var err error
		if lock, err = lockFile(path); err != nil {
			return nil, err
		}
		if err := createOwnerOnly(path); err != nil {
			lock.Close()
			return nil, err
		}
	}
	dsn := func(readOnly bool) string {
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		if !memory {
			q.Add("_pragma", "journal_mode(WAL)")
		}
		q.Add("_pragma", "synchronous("+opt.Sync+")")
		q.Add("_pragma", "cache_size(-32000)")
		q.Add("_pragma", "temp_store(memory)")
		if readOnly {
			q.Add("_pragma", "query_only(1)")
		} else {
			q.Set("_txlock", "immediate")
		}
		if memory {
			return "file::memory:?" + q.Encode()
		}
		// The -wal and -journal files the driver creates (and deletes and
		// creates again) get the database file's permissions: owner only.
		q.Set("modeof", path)
		return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	}
	w, err := sql.Open(opt.Driver, dsn(false))
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	s := &Store{path: path, write: w, read: w, lock: lock, cache: newReadCache(opt.CacheBytes),
		driver: opt.Driver, dsn: dsn(false)}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if !memory {
		r, err := sql.Open(opt.Driver, dsn(true))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
		r.SetMaxOpenConns(opt.ReadConns)
		r.SetMaxIdleConns(opt.ReadConns)
		r.SetConnMaxIdleTime(0)
		s.read = r
	}
	if s.readStmt, err = s.read.PrepareContext(ctx, readSQL); err != nil {
		s.Close()
		return nil, fmt.Errorf("open %s: prepare: %w", path, err)
	}
	return s, nil
}

// createOwnerOnly creates the database file and its -wal and -shm files,
// those that do not exist yet, readable and writable by the owner only,
// before the driver opens them (it would create them 0644 under the usual
// umask): they hold patient data. Existing files keep their permissions.
func createOwnerOnly(path string) error {
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		fh, err := os.OpenFile(f, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("create store file: %w", err)
		}
		if err := fh.Close(); err != nil {
			return fmt.Errorf("create store file: %w", err)
		}
	}
	return nil
}

// Path is the database file ("":memory:" for an in-memory store).
func (s *Store) Path() string { return s.path }

// Backup writes a consistent copy of the database to path (which must not
// exist, or be empty) while the store keeps serving: SQLite's VACUUM INTO
// reads one snapshot, so writes made meanwhile are either all in the copy
// or not.
func (s *Store) Backup(ctx context.Context, path string) error {
	if s.path == ":memory:" {
		return errors.New("backup: an in-memory store has no file to copy")
	}
	if st, err := os.Stat(path); err == nil && st.Size() > 0 {
		return fmt.Errorf("backup: %s exists", path)
	}
	// It holds patient data: the file is made owner-only before a byte is
	// written (VACUUM INTO writes into an empty file).
	created := false
	if f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
		f.Close()
		created = true
	} else if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("backup: %w", err)
	}
	if err := s.vacuumInto(ctx, path); err != nil {
		if created {
			os.Remove(path)
		}
		return err
	}
	return os.Chmod(path, 0o600) // an empty file given by the caller
}

func (s *Store) vacuumInto(ctx context.Context, path string) error {
	// Its own connection: the read pool is query-only, and the writer
	// must stay free for writes while the copy is made.
	db, err := sql.Open(s.driver, s.dsn)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", path); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	return nil
}

// Close closes the database. Further calls fail.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.stmts.Range(func(_, v any) bool { v.(*sql.Stmt).Close(); return true })
	if s.readStmt != nil {
		s.readStmt.Close()
	}
	var err error
	if s.read != s.write {
		err = s.read.Close()
	}
	err = errors.Join(err, s.write.Close())
	if s.lock != nil {
		s.lock.Close()
	}
	return err
}

// schemaVersion 2 added history_compartment; 3 indexes absolute
// references by their URL only (see migrateAbsoluteRefs); 4 indexes
// identifiers by their type, for :of-type (see migrateOfType); 5 indexes
// composite parameters (see migrateComposites).
const schemaVersion = 5

var schema = []string{
	`CREATE TABLE IF NOT EXISTS resources (
		rid INTEGER PRIMARY KEY,
		type TEXT NOT NULL,
		id TEXT NOT NULL,
		version INTEGER NOT NULL,
		seq INTEGER NOT NULL,
		updated INTEGER NOT NULL,
		deleted INTEGER NOT NULL,
		UNIQUE (type, id)
	)`,
	`CREATE TABLE IF NOT EXISTS history (
		seq INTEGER PRIMARY KEY AUTOINCREMENT,
		rid INTEGER NOT NULL,
		type TEXT NOT NULL,
		version INTEGER NOT NULL,
		updated INTEGER NOT NULL,
		deleted INTEGER NOT NULL,
		method TEXT NOT NULL,
		body BLOB
	)`,
	`CREATE UNIQUE INDEX IF NOT EXISTS history_rid ON history (rid, version)`,
	`CREATE INDEX IF NOT EXISTS history_type ON history (type, seq)`,
	// Index tables are clustered by resource (rid first in the primary
	// key), so that replacing a resource's rows is a range delete, with one
	// secondary index for searching by parameter and value.
	`CREATE TABLE IF NOT EXISTS sp_string (rid INTEGER NOT NULL, p TEXT NOT NULL, norm TEXT NOT NULL, exact TEXT NOT NULL,
		PRIMARY KEY (rid, p, norm, exact)) WITHOUT ROWID`,
	`CREATE INDEX IF NOT EXISTS sp_string_v ON sp_string (p, norm)`,
	`CREATE TABLE IF NOT EXISTS sp_token (rid INTEGER NOT NULL, p TEXT NOT NULL, sys TEXT NOT NULL, code TEXT NOT NULL, text TEXT NOT NULL,
		PRIMARY KEY (rid, p, code, sys, text)) WITHOUT ROWID`,
	`CREATE INDEX IF NOT EXISTS sp_token_v ON sp_token (p, code, sys)`,
	`CREATE TABLE IF NOT EXISTS sp_ref (rid INTEGER NOT NULL, p TEXT NOT NULL, ttype TEXT NOT NULL, tid TEXT NOT NULL, url TEXT NOT NULL,
		PRIMARY KEY (rid, p, tid, ttype, url)) WITHOUT ROWID`,
	`CREATE INDEX IF NOT EXISTS sp_ref_v ON sp_ref (p, tid, ttype)`,
	`CREATE TABLE IF NOT EXISTS sp_date (rid INTEGER NOT NULL, p TEXT NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
		PRIMARY KEY (rid, p, lo, hi)) WITHOUT ROWID`,
	`CREATE INDEX IF NOT EXISTS sp_date_v ON sp_date (p, lo)`,
	`CREATE TABLE IF NOT EXISTS sp_number (rid INTEGER NOT NULL, p TEXT NOT NULL, v REAL NOT NULL,
		PRIMARY KEY (rid, p, v)) WITHOUT ROWID`,
	`CREATE INDEX IF NOT EXISTS sp_number_v ON sp_number (p, v)`,
	`CREATE TABLE IF NOT EXISTS sp_quantity (rid INTEGER NOT NULL, p TEXT NOT NULL, v REAL NOT NULL, sys TEXT NOT NULL, code TEXT NOT NULL,
		PRIMARY KEY (rid, p, v, sys, code)) WITHOUT ROWID`,
	`CREATE INDEX IF NOT EXISTS sp_quantity_v ON sp_quantity (p, v)`,
	`CREATE TABLE IF NOT EXISTS sp_uri (rid INTEGER NOT NULL, p TEXT NOT NULL, v TEXT NOT NULL,
		PRIMARY KEY (rid, p, v)) WITHOUT ROWID`,
	`CREATE INDEX IF NOT EXISTS sp_uri_v ON sp_uri (p, v)`,
	`CREATE TABLE IF NOT EXISTS compartment (rid INTEGER NOT NULL, patient TEXT NOT NULL, PRIMARY KEY (rid, patient)) WITHOUT ROWID`,
	`CREATE INDEX IF NOT EXISTS compartment_p ON compartment (patient, rid)`,
	// The compartments of every version as written (a deletion: those of
	// the version it deleted), for histories confined to a compartment.
	// compartment holds the current versions' only.
	`CREATE TABLE IF NOT EXISTS history_compartment (patient TEXT NOT NULL, seq INTEGER NOT NULL,
		PRIMARY KEY (patient, seq)) WITHOUT ROWID`,
}

// indexTables are the tables holding a resource's index entries.
var indexTables = []string{"sp_string", "sp_token", "sp_ref", "sp_date", "sp_number", "sp_quantity", "sp_uri", "compartment"}

func (s *Store) migrate(ctx context.Context) error {
	var v int
	if err := s.write.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > schemaVersion {
		return fmt.Errorf("database schema version %d is newer than this build (%d)", v, schemaVersion)
	}
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin migration: %w", err)
	}
	defer tx.Rollback()
	for _, stmt := range schema {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
	}
	if v == 1 {
		if err := fillHistoryCompartments(ctx, tx); err != nil {
			return fmt.Errorf("migrate to schema 2: %w", err)
		}
	}
	if v >= 1 && v < 3 {
		if err := migrateAbsoluteRefs(ctx, tx); err != nil {
			return fmt.Errorf("migrate to schema 3: %w", err)
		}
	}
	if v >= 1 && v < 4 {
		if err := migrateOfType(ctx, tx); err != nil {
			return fmt.Errorf("migrate to schema 4: %w", err)
		}
	}
	if v >= 1 && v < 5 {
		if err := migrateComposites(ctx, tx); err != nil {
			return fmt.Errorf("migrate to schema 5: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, schemaVersion)); err != nil {
		return fmt.Errorf("set schema version: %w", err)
	}
	return tx.Commit()
}

// querier is what reads need: a *sql.DB, *sql.Conn or *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// reader implements store.Reader over a querier.
type reader struct{ q querier }

// Read implements store.Reader.
// The Version returned may be shared with other callers: do not modify it.
func (s *Store) Read(ctx context.Context, typ, id string) (*store.Version, error) {
	var gen uint64
	if s.cache != nil {
		if v := s.cache.get(typ, id); v != nil {
			return v, nil
		}
		gen = s.cache.gen.Load()
	}
	// A prepared statement: reads are the most frequent request.
	v, err := scanVersion(s.readStmt.QueryRowContext(ctx, typ, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	if s.cache != nil {
		s.cache.put(gen, v)
	}
	return v, nil
}

// VRead implements store.Reader.
func (s *Store) VRead(ctx context.Context, typ, id string, version int64) (*store.Version, error) {
	return reader{s.read}.VRead(ctx, typ, id, version)
}

// History implements store.Reader.
func (s *Store) History(ctx context.Context, q store.HistoryQuery) ([]*store.Version, int, error) {
	var out []*store.Version
	var n int
	err := s.readTx(ctx, func(r reader) (err error) {
		out, n, err = r.History(ctx, q)
		return err
	})
	return out, n, err
}

// Search implements store.Reader.
func (s *Store) Search(ctx context.Context, q *search.Query, offset, limit int) ([]store.Match, error) {
	return reader{s.read}.Search(ctx, q, offset, limit)
}

// Count implements store.Reader.
func (s *Store) Count(ctx context.Context, q *search.Query) (int, error) {
	return reader{s.read}.Count(ctx, q)
}

// Fetch implements store.Reader.
func (s *Store) Fetch(ctx context.Context, ms []store.Match) ([]*store.Version, error) {
	var out []*store.Version
	err := s.readTx(ctx, func(r reader) (err error) {
		out, err = r.Fetch(ctx, ms)
		return err
	})
	return out, err
}

// Include implements store.Reader.
func (s *Store) Include(ctx context.Context, page []*store.Version, inc search.Include) ([]*store.Version, error) {
	var out []*store.Version
	err := s.readTx(ctx, func(r reader) (err error) {
		out, err = r.Include(ctx, page, inc)
		return err
	})
	return out, err
}

// readTx runs fn in a read transaction, so that its queries see one state.
func (s *Store) readTx(ctx context.Context, fn func(r reader) error) error {
	if s.read == s.write { // in memory: one connection, no isolation needed
		return fn(reader{s.read})
	}
	tx, err := s.read.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("begin read: %w", err)
	}
	defer tx.Rollback()
	return fn(reader{tx})
}

// Update implements store.Store.
func (s *Store) Update(ctx context.Context, fn func(tx store.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin write: %w", err)
	}
	w := &writeTx{reader: reader{tx}, tx: tx, s: s}
	err = fn(w)
	if err == nil {
		err = w.flush(ctx)
	}
	if err != nil {
		tx.Rollback()
		return err
	}
	err = tx.Commit()
	if s.cache != nil && len(w.written) > 0 {
		// Even a failed commit may have written: drop the keys either way.
		s.cache.invalidate(w.written)
	}
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

const selectVersion = `SELECT h.rid, r.type, r.id, h.version, h.updated, h.deleted, h.method, h.body, h.seq FROM history h JOIN resources r ON r.rid = h.rid `

func scanVersion(sc interface{ Scan(...any) error }) (*store.Version, error) {
	v := &store.Version{}
	var updated int64
	var deleted int
	if err := sc.Scan(&v.Key, &v.Type, &v.ID, &v.Version, &updated, &deleted, &v.Method, &v.Body, &v.Seq); err != nil {
		return nil, err
	}
	v.Updated = time.UnixMicro(updated).UTC()
	v.Deleted = deleted != 0
	return v, nil
}

func (r reader) one(ctx context.Context, query string, args ...any) (*store.Version, error) {
	v, err := scanVersion(r.q.QueryRowContext(ctx, query, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return v, nil
}

// readSQL reads the current version of a resource.
const readSQL = `SELECT h.rid, r.type, r.id, h.version, h.updated, h.deleted, h.method, h.body, h.seq
	FROM resources r JOIN history h ON h.seq = r.seq WHERE r.type = ? AND r.id = ?`

func (r reader) Read(ctx context.Context, typ, id string) (*store.Version, error) {
	return r.one(ctx, readSQL, typ, id)
}

func (r reader) VRead(ctx context.Context, typ, id string, version int64) (*store.Version, error) {
	return r.one(ctx, selectVersion+`WHERE h.rid = (SELECT rid FROM resources WHERE type = ? AND id = ?) AND h.version = ?`, typ, id, version)
}

func (r reader) History(ctx context.Context, q store.HistoryQuery) ([]*store.Version, int, error) {
	where, args := "WHERE 1=1", []any{}
	switch {
	case q.ID != "":
		where += ` AND h.rid = (SELECT rid FROM resources WHERE type = ? AND id = ?)`
		args = append(args, q.Type, q.ID)
	case q.Type != "":
		where += ` AND h.type = ?`
		args = append(args, q.Type)
	}
	if !q.Since.IsZero() {
		where += ` AND h.updated >= ?`
		args = append(args, q.Since.UnixMicro())
	}
	if q.Compartment != "" {
		where += ` AND h.seq IN (SELECT seq FROM history_compartment WHERE patient = ?)`
		args = append(args, q.Compartment)
	}
	if len(q.ExcludeTypes) > 0 {
		where += ` AND h.type NOT IN (` + placeholders(len(q.ExcludeTypes)) + `)`
		for _, t := range q.ExcludeTypes {
			args = append(args, t)
		}
	}
	var total int
	if err := r.q.QueryRowContext(ctx, `SELECT count(*) FROM history h `+where, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count history: %w", err)
	}
	if q.Before > 0 {
		where += ` AND h.seq < ?`
		args = append(args, q.Before)
	}
	rows, err := r.q.QueryContext(ctx, selectVersion+where+` ORDER BY h.seq DESC LIMIT ?`, append(args, q.Count)...)
	if err != nil {
		return nil, 0, fmt.Errorf("history: %w", err)
	}
	out, err := scanAll(rows)
	return out, total, err
}

func scanAll(rows *sql.Rows) ([]*store.Version, error) {
	defer rows.Close()
	var out []*store.Version
	for rows.Next() {
		v, err := scanVersion(rows)
		if err != nil {
			return nil, fmt.Errorf("scan: %w", err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scan: %w", err)
	}
	return out, nil
}

func (r reader) Search(ctx context.Context, q *search.Query, offset, limit int) ([]store.Match, error) {
	b := buildSearch(q)
	query := `SELECT r.rid, r.version FROM resources r WHERE ` + b.where.String() + b.orderBy() + ` LIMIT ? OFFSET ?`
	rows, err := r.q.QueryContext(ctx, query, append(b.args, limit, offset)...)
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	defer rows.Close()
	var out []store.Match
	for rows.Next() {
		var m store.Match
		if err := rows.Scan(&m.Key, &m.Version); err != nil {
			return nil, fmt.Errorf("search: %w", err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	return out, nil
}

func (r reader) Count(ctx context.Context, q *search.Query) (int, error) {
	b := buildSearch(q)
	var n int
	if err := r.q.QueryRowContext(ctx, `SELECT count(*) FROM resources r WHERE `+b.where.String(), b.args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count: %w", err)
	}
	return n, nil
}

func (r reader) Fetch(ctx context.Context, ms []store.Match) ([]*store.Version, error) {
	type key struct{ rid, version int64 }
	found := make(map[key]*store.Version, len(ms))
	const chunk = 200
	for start := 0; start < len(ms); start += chunk {
		part := ms[start:min(len(ms), start+chunk)]
		args := make([]any, 0, 2*len(part))
		var b strings.Builder
		for i, m := range part {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("(?, ?)")
			args = append(args, m.Key, m.Version)
		}
		// The constant rows drive the join: one index lookup per match.
		rows, err := r.q.QueryContext(ctx, `SELECT h.rid, r.type, r.id, h.version, h.updated, h.deleted, h.method, h.body, h.seq
			FROM (VALUES `+b.String()+`) m CROSS JOIN history h ON h.rid = m.column1 AND h.version = m.column2
			JOIN resources r ON r.rid = h.rid`, args...)
		if err != nil {
			return nil, fmt.Errorf("fetch: %w", err)
		}
		vs, err := scanAll(rows)
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			found[key{v.Key, v.Version}] = v
		}
	}
	out := make([]*store.Version, 0, len(ms))
	for _, m := range ms {
		if v := found[key{m.Key, m.Version}]; v != nil {
			out = append(out, v)
		}
	}
	return out, nil
}

func (r reader) Include(ctx context.Context, page []*store.Version, inc search.Include) ([]*store.Version, error) {
	if len(page) == 0 {
		return nil, nil
	}
	var query string
	var args []any
	ph := placeholders(len(page))
	if !inc.Rev {
		keys := make([]any, 0, len(page))
		for _, v := range page {
			if v.Type == inc.Source {
				keys = append(keys, v.Key)
			}
		}
		if len(keys) == 0 {
			return nil, nil
		}
		query = selectVersion + `WHERE h.seq IN (SELECT r2.seq FROM sp_ref s JOIN resources r2 ON r2.type = s.ttype AND r2.id = s.tid
			WHERE s.rid IN (` + placeholders(len(keys)) + `) AND r2.deleted = 0`
		args = keys
		if inc.Param != nil {
			query += ` AND s.p = ?`
			args = append(args, inc.Param.Key())
		} else {
			query += ` AND s.p >= ? AND s.p < ?`
			args = append(args, inc.Source+".", inc.Source+"/")
		}
	} else {
		// Resources of type Source whose reference parameter points at a
		// resource of the page.
		query = selectVersion + `WHERE h.seq IN (SELECT r2.seq FROM sp_ref s JOIN resources r2 ON r2.rid = s.rid
			WHERE r2.type = ? AND r2.deleted = 0 AND s.tid IN (` + ph + `)`
		args = []any{inc.Source}
		types := map[string]bool{}
		for _, v := range page {
			args = append(args, v.ID)
			types[v.Type] = true
		}
		query += ` AND s.ttype IN (` + placeholders(len(types)) + `)`
		for t := range types {
			args = append(args, t)
		}
		if inc.Param != nil {
			query += ` AND s.p = ?`
			args = append(args, inc.Param.Key())
		} else {
			query += ` AND s.p >= ? AND s.p < ?`
			args = append(args, inc.Source+".", inc.Source+"/")
		}
	}
	if inc.Target != "" {
		query += ` AND s.ttype = ?`
		args = append(args, inc.Target)
	}
	query += `) ORDER BY h.seq`
	rows, err := r.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("include: %w", err)
	}
	return scanAll(rows)
}

func placeholders(n int) string {
	b := make([]byte, 0, 2*n)
	for i := 0; i < n; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '?')
	}
	return string(b)
}

// writeTx implements store.Tx.
type writeTx struct {
	reader
	tx      *sql.Tx
	s       *Store
	written []string         // cache keys of the resources written
	pending map[string][]any // queued index rows per table
}

// exec runs a statement in the transaction, prepared if it is one of
// writeStmts.
func (w *writeTx) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := w.s.stmt(query); st != nil {
		return w.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return w.tx.ExecContext(ctx, query, args...)
}

func (w *writeTx) Put(ctx context.Context, v *store.Version, idx *search.Entries) error {
	var rid int64
	err := w.tx.StmtContext(ctx, w.s.stmt(writeStmts[0])).QueryRowContext(ctx, v.Type, v.ID).Scan(&rid)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("put: %w", err)
	}
	deleted := 0
	if v.Deleted {
		deleted = 1
	}
	if !exists {
		res, err := w.exec(ctx, `INSERT INTO resources (type, id, version, seq, updated, deleted) VALUES (?, ?, ?, 0, 0, ?)`, v.Type, v.ID, v.Version, deleted)
		if err != nil {
			return fmt.Errorf("put: %w", err)
		}
		if rid, err = res.LastInsertId(); err != nil {
			return fmt.Errorf("put: %w", err)
		}
	}
	res, err := w.exec(ctx, `INSERT INTO history (rid, type, version, updated, deleted, method, body) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		rid, v.Type, v.Version, v.Updated.UnixMicro(), deleted, v.Method, v.Body)
	if err != nil {
		return fmt.Errorf("put version: %w", err)
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return fmt.Errorf("put version: %w", err)
	}
	if _, err := w.exec(ctx, `UPDATE resources SET version = ?, seq = ?, updated = ?, deleted = ? WHERE rid = ?`, v.Version, seq, v.Updated.UnixMicro(), deleted, rid); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	v.Key, v.Seq = rid, seq
	if w.s.cache != nil {
		w.written = append(w.written, cacheKey(v.Type, v.ID))
	}
	if exists {
		if err := w.flush(ctx); err != nil {
			return err
		}
		if v.Deleted {
			if _, err := w.exec(ctx, deletionCompartmentsSQL, seq, rid); err != nil {
				return fmt.Errorf("put: %w", err)
			}
		}
		for _, t := range indexTables {
			if _, err := w.exec(ctx, `DELETE FROM `+t+` WHERE rid = ?`, rid); err != nil {
				return fmt.Errorf("reindex: %w", err)
			}
		}
	}
	if idx == nil || v.Deleted {
		return nil
	}
	return w.index(ctx, rid, seq, idx)
}

// index queues the index rows of a resource's version seq; they are
// inserted in batches of rows of many resources (see flush).
func (w *writeTx) index(ctx context.Context, rid, seq int64, e *search.Entries) error {
	if w.pending == nil {
		w.pending = map[string][]any{}
	}
	if len(e.Compartments) > 0 {
		const t = "history_compartment"
		rows := w.pending[t]
		for _, p := range e.Compartments {
			rows = append(rows, p, seq)
		}
		w.pending[t] = rows
		if len(rows) >= batchSizes[0]*indexColumns[t] {
			if err := w.flushTable(ctx, t, false); err != nil {
				return err
			}
		}
	}
	type table struct {
		name string
		n    int
		row  func(i int) []any
	}
	for _, t := range []table{
		{"sp_string", len(e.Strings), func(i int) []any { x := e.Strings[i]; return []any{x.Param, x.Norm, x.Exact} }},
		{"sp_token", len(e.Tokens), func(i int) []any { x := e.Tokens[i]; return []any{x.Param, x.System, x.Code, x.Text} }},
		{"sp_ref", len(e.Refs), func(i int) []any { x := e.Refs[i]; return []any{x.Param, x.Type, x.ID, x.URL} }},
		{"sp_date", len(e.Dates), func(i int) []any { x := e.Dates[i]; return []any{x.Param, x.Lo, x.Hi} }},
		{"sp_number", len(e.Numbers), func(i int) []any { x := e.Numbers[i]; return []any{x.Param, x.Value} }},
		{"sp_quantity", len(e.Quantities), func(i int) []any { x := e.Quantities[i]; return []any{x.Param, x.Value, x.System, x.Code} }},
		{"sp_uri", len(e.URIs), func(i int) []any { x := e.URIs[i]; return []any{x.Param, x.Value} }},
		{"compartment", len(e.Compartments), func(i int) []any { return []any{e.Compartments[i]} }},
	} {
		rows := w.pending[t.name]
		for i := 0; i < t.n; i++ {
			rows = append(append(rows, rid), t.row(i)...)
		}
		w.pending[t.name] = rows
		if len(rows) >= batchSizes[0]*indexColumns[t.name] {
			if err := w.flushTable(ctx, t.name, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// flushTable inserts the queued rows of table: all of them, or (all
// false) the full batches only.
func (w *writeTx) flushTable(ctx context.Context, table string, all bool) error {
	rows := w.pending[table]
	cols := indexColumns[table]
	for len(rows) > 0 {
		n := len(rows) / cols
		if !all && n < batchSizes[0] {
			break
		}
		for _, size := range batchSizes {
			if size <= n {
				n = size
				break
			}
		}
		if _, err := w.exec(ctx, insertSQL(table, n), rows[:n*cols]...); err != nil {
			return fmt.Errorf("index %s: %w", table, err)
		}
		rows = rows[n*cols:]
	}
	w.pending[table] = rows
	return nil
}

// flush inserts every queued index row: before reads of the transaction
// that use the index, before a resource's rows are replaced, and at commit.
func (w *writeTx) flush(ctx context.Context) error {
	for t, rows := range w.pending {
		if len(rows) > 0 {
			if err := w.flushTable(ctx, t, true); err != nil {
				return err
			}
		}
	}
	return nil
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
