// Package postgres is the FHIR store on a shared PostgreSQL database, so
// that a fleet of gateway instances serves the same data directly, each
// with its own connection pool (github.com/jackc/pgx/v5, pgxpool). It has
// the SQLite store's tables and semantics (store/sqlite); the conformance
// suite store/storetest runs against both.
//
// # Writes
//
// Every Update is one database transaction that first takes a
// transaction-level advisory lock (pg_advisory_xact_lock on one key shared
// by every instance), so write transactions are serialized across the
// fleet exactly as SQLite's single writer serializes them in one process:
// a version number read inside fn is still current when fn writes the
// next one, a conditional create decided inside fn cannot race another
// instance's, history sequence numbers (Version.Seq, from a sequence) are
// handed out in commit order, so paging by Seq never skips a version
// committed later, and a resource's rid orders resources by creation.
// Reads never take the lock and never wait for writes. The price is write
// throughput: one write transaction at a time for the whole database,
// each holding the lock for its round trips to the server (about six for a
// one-resource write: begin, lock, the read of the current version, the
// write, the index rows, commit) and for its commit's flush of the
// write-ahead log, so the fleet writes no faster than one instance
// (BenchmarkPutParallel; docs/BENCHMARKS.md has the figures). Batch
// writes (a transaction Bundle, an import) pay the round trips and the
// flush once for many resources. Commits are durable as the server's
// configuration makes them (synchronous_commit on, the default: flushed to
// its write-ahead log).
//
// # Reads and the cache
//
// Reads outside a transaction see the last committed state; the calls
// that make several queries (History) run them in one REPEATABLE READ
// read-only transaction. With Options.CacheBytes, recently read resources
// are kept in memory; every write transaction notifies the resources it
// wrote on a PostgreSQL channel (NOTIFY, delivered when it commits), and
// each Store listens on a dedicated connection and drops them from its
// cache. Another instance's write is therefore served stale for at most
// the delivery of its notification (BenchmarkCacheInvalidation measures
// it); while the listening connection is down the cache is not used at
// all, and it is emptied when the connection is back. The listening
// connection is checked with a ping after 5 seconds of silence, so one
// lost without a word turns the cache off within 5 seconds and half the
// statement timeout. A write of more than 1,000 resources notifies one
// "drop everything" instead of each.
//
// # Storage
//
// Bodies are kept as the bytes written (bytea), with no jsonb copy:
// nothing queries inside them (the index tables hold what searches need),
// and a jsonb column cost 1.7 to 2.4 times the server CPU per write and
// 62% more space per version in BenchmarkLayout (docs/BENCHMARKS.md), and
// would refuse the \u0000 escapes valid JSON may hold. Text columns compare byte
// by byte (COLLATE "C") as SQLite's do. PostgreSQL's text holds no NUL
// and no invalid UTF-8: such characters of index values and search values
// are stored and searched as U+FFFD, so they still match each other. Its
// btree entries are limited to about 2,700 bytes: codes, systems,
// references, uris and compartments are indexed, and searched for, by
// their first 1,000 bytes (strings are cut to 512 bytes by the indexer, as
// for SQLite), so two values that long differ in a search only if their
// first 1,000 bytes do. Searches, counts, includes and histories are
// planned with their arguments on every execution, never as prepared
// statements, whose generic plans do not know which condition is
// selective.
//
// # Errors and timeouts
//
// Every statement is bounded by Options.StatementTimeout on the server
// (statement_timeout, which also bounds the wait for the write lock) and
// every Reader call as a whole, and in Update the begin, each Tx call and
// the commit, by the same duration on the client. A call that runs out of
// it returns an error that is both store.ErrUnavailable and
// context.DeadlineExceeded. A server that cannot be reached, is shutting
// down or restarting, a connection that broke and a pool that had no free
// connection in time give store.ErrUnavailable. When the caller's own
// context ends first, its error is returned instead. The pool reconnects
// by itself: a restarted server is used again without reopening the Store.
// A transaction left idle for a minute (a process stuck inside fn, holding
// the write lock) is ended by the server
// (idle_in_transaction_session_timeout).
//
// # Schema
//
// The schema is created and upgraded by versioned SQL migrations embedded
// in the binary (migrations/*.sql, recorded in the schema_migrations
// table), applied by Open (unless Options.NoMigrate) or Migrate under an
// advisory lock, so instances that start together migrate once. A
// database migrated by a newer build is refused (ErrSchemaNewer).
//
// There is no Backup: back the database up with pg_dump.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// Options configure Open and Migrate.
type Options struct {
	// URL is the database's connection string: a URL
	// (postgres://user:password@host:5432/dbname?sslmode=verify-full) or
	// keyword=value pairs ("host=… dbname=…"), with the parameters libpq
	// and pgx accept (the PG* environment variables fill in the rest).
	// Required. It holds a password: log it through Redact.
	URL string
	// MaxConns is the size of the connection pool. Default: 4 per CPU,
	// at least 8. With CacheBytes, one more connection listens for
	// writes.
	MaxConns int
	// StatementTimeout bounds every statement on the server, the wait for
	// the write lock included, and every call on the client (see the
	// package documentation). Default 5s.
	StatementTimeout time.Duration
	// SSLMode is the TLS mode: disable, allow, prefer, require, verify-ca
	// or verify-full (libpq's meanings). Default: the URL's sslmode; with
	// neither, verify-full if CAFile is set, else prefer (TLS if the
	// server offers it, unverified).
	SSLMode string
	// CAFile is a PEM file of the certificate authorities that sign the
	// server's certificate (libpq's sslrootcert). Default: the URL's
	// sslrootcert, if any.
	CAFile string
	// CacheBytes bounds the cache of recently read resources (their JSON
	// sizes added up). Default 0: no cache.
	CacheBytes int64
	// NoMigrate makes Open apply no migration: it fails with
	// ErrMigrationNeeded if the database lacks some (apply them with
	// Migrate), as with ErrSchemaNewer if it has unknown ones.
	NoMigrate bool
	// BulkInsert makes Loader.PutAll write its history and index rows
	// with INSERT … SELECT unnest(…) instead of COPY, which is faster
	// (docs/BENCHMARKS.md): for benchmarks that compare the two. Default
	// false.
	BulkInsert bool
}

// defaults and limits of Options.
const (
	defaultStatementTimeout = 5 * time.Second
	// idleInTransactionTimeout ends the session of a transaction left
	// idle this long (a process stuck inside an Update would otherwise
	// hold the fleet's write lock).
	idleInTransactionTimeout = time.Minute
)

var sslModes = map[string]bool{"disable": true, "allow": true, "prefer": true, "require": true, "verify-ca": true, "verify-full": true}

// validate checks opt and fills in its defaults.
func (opt *Options) validate() error {
	if strings.TrimSpace(opt.URL) == "" {
		return errors.New("postgres: url is required")
	}
	if opt.MaxConns < 0 {
		return fmt.Errorf("postgres: max_conns must be positive, not %d", opt.MaxConns)
	}
	if opt.MaxConns == 0 {
		opt.MaxConns = max(8, 4*runtime.NumCPU())
	}
	if opt.StatementTimeout < 0 {
		return fmt.Errorf("postgres: statement_timeout must be positive, not %s", opt.StatementTimeout)
	}
	if opt.StatementTimeout == 0 {
		opt.StatementTimeout = defaultStatementTimeout
	}
	if opt.StatementTimeout < time.Millisecond {
		return fmt.Errorf("postgres: statement_timeout must be at least 1ms, not %s", opt.StatementTimeout)
	}
	if opt.SSLMode != "" && !sslModes[opt.SSLMode] {
		return fmt.Errorf("postgres: sslmode must be disable, allow, prefer, require, verify-ca or verify-full, not %q", opt.SSLMode)
	}
	if opt.CAFile != "" {
		if _, err := os.Stat(opt.CAFile); err != nil {
			return fmt.Errorf("postgres: ca_file: %w", err)
		}
	}
	if opt.CacheBytes < 0 {
		return fmt.Errorf("postgres: cache_bytes must not be negative, not %d", opt.CacheBytes)
	}
	return nil
}

// connString returns opt.URL with SSLMode and CAFile applied.
func (opt *Options) connString() (string, error) {
	s := opt.URL
	mode, ca := opt.SSLMode, opt.CAFile
	if mode == "" && ca != "" && !hasSetting(s, "sslmode") {
		mode = "verify-full"
	}
	if mode == "" && ca == "" {
		return s, nil
	}
	if isURL(s) {
		u, err := url.Parse(s)
		if err != nil {
			return "", errors.New("postgres: url is not a valid URL (is a character of the password not percent-encoded?)")
		}
		q := u.Query()
		if mode != "" {
			q.Set("sslmode", mode)
		}
		if ca != "" {
			q.Set("sslrootcert", ca)
		}
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	quote := func(v string) string {
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
	}
	if mode != "" {
		s += " sslmode=" + quote(mode)
	}
	if ca != "" {
		s += " sslrootcert=" + quote(ca)
	}
	return s, nil
}

func isURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// hasSetting reports whether the connection string names the parameter.
func hasSetting(s, name string) bool {
	if isURL(s) {
		u, err := url.Parse(s)
		return err == nil && u.Query().Has(name)
	}
	return regexp.MustCompile(`(^|\s)` + name + `\s*=`).MatchString(s)
}

// connConfig parses the connection string with the options applied and
// sets the session parameters every connection of the store uses.
func (opt *Options) connConfig() (*pgx.ConnConfig, error) {
	if err := opt.validate(); err != nil {
		return nil, err
	}
	cs, err := opt.connString()
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(cs)
	if err != nil {
		// pgx's parse errors name the connection string without its
		// password.
		return nil, fmt.Errorf("postgres: url: %w", err)
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["statement_timeout"] = strconv.FormatInt(opt.StatementTimeout.Milliseconds(), 10)
	cfg.RuntimeParams["idle_in_transaction_session_timeout"] = strconv.FormatInt(idleInTransactionTimeout.Milliseconds(), 10)
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "omnigate"
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > opt.StatementTimeout {
		cfg.ConnectTimeout = opt.StatementTimeout
	}
	return cfg, nil
}

var passwordSetting = regexp.MustCompile(`(?i)(^|\s+)(ssl)?password\s*=\s*('(\\.|[^'\\])*'|\S*)`)

// Redact returns the connection string without its password (in the URL's
// user info, or a password= parameter), for logs, health answers and
// reports. A URL that does not parse is shortened to its scheme.
func Redact(s string) string {
	if !isURL(s) {
		return strings.TrimSpace(passwordSetting.ReplaceAllString(s, ""))
	}
	scheme, _, _ := strings.Cut(s, "://")
	u, err := url.Parse(s)
	if err != nil {
		return scheme + "://(unparsable URL)"
	}
	pw, hasPW := "", false
	if u.User != nil {
		pw, hasPW = u.User.Password()
		u.User = url.User(u.User.Username())
	}
	q := u.Query()
	if q.Has("password") || q.Has("sslpassword") {
		q.Del("password")
		q.Del("sslpassword")
		u.RawQuery = q.Encode()
	}
	out := u.String()
	if hasPW && pw != "" && strings.Contains(out, pw) {
		// The password also appears elsewhere (as a user or database
		// name?): show none of it.
		return scheme + "://(redacted)"
	}
	return out
}

// Store is the PostgreSQL store. It is safe for concurrent use.
type Store struct {
	pool    *pgxpool.Pool
	timeout time.Duration
	cache   *readCache // nil: none
	lis     *listener  // nil without a cache
	stop    context.CancelFunc
	once    sync.Once
	// bulkInsert is Options.BulkInsert.
	bulkInsert bool
}

var _ store.Store = (*Store)(nil)

// Open validates opt, connects, applies the migrations the database lacks
// (see Migrate; with NoMigrate, checks that none is lacking), and starts the
// cache listener. Errors do not show the password.
func Open(ctx context.Context, opt Options) (*Store, error) {
	cfg, err := opt.connConfig()
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", classify(ctx, err))
	}
	_, err = migrate(ctx, conn, false, opt.NoMigrate)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	pcfg, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, err
	}
	pcfg.ConnConfig = cfg
	pcfg.MaxConns = int32(opt.MaxConns)
	// A connection that idled over a second is pinged before use (pgxpool's
	// default); the ping must answer well within the call's time.
	pcfg.PingTimeout = max(opt.StatementTimeout/4, 100*time.Millisecond)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	lctx, stop := context.WithCancel(context.Background())
	s := &Store{pool: pool, timeout: opt.StatementTimeout, cache: newReadCache(opt.CacheBytes), stop: stop, bulkInsert: opt.BulkInsert}
	if s.cache != nil {
		s.lis = &listener{cfg: cfg.Copy(), cache: s.cache, pingEvery: 5 * time.Second,
			pingTimeout: max(opt.StatementTimeout/2, 100*time.Millisecond), done: make(chan struct{})}
		go s.lis.run(lctx)
	}
	return s, nil
}

// Close stops the cache listener and closes the pool's connections, after
// the calls in progress. Further calls fail with ErrClosed.
func (s *Store) Close() error {
	s.once.Do(func() {
		s.stop()
		if s.lis != nil {
			<-s.lis.done
		}
		s.pool.Close()
	})
	return nil
}

// Ping checks that the database answers, within StatementTimeout.
func (s *Store) Ping(ctx context.Context) error {
	bctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.pool.Ping(bctx); err != nil {
		return fmt.Errorf("ping: %w", classify(ctx, err))
	}
	return nil
}

// querier is what reads need: the pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// reader implements store.Reader over a querier; every call is bounded by
// timeout.
type reader struct {
	q       querier
	timeout time.Duration
}

// Read implements store.Reader. The Version returned may be shared with
// other callers: do not modify it.
func (s *Store) Read(ctx context.Context, typ, id string) (*store.Version, error) {
	var gen uint64
	useCache := false
	if s.cache != nil {
		var v *store.Version
		if v, gen, useCache = s.cache.get(typ, id); v != nil {
			return v, nil
		}
	}
	v, err := s.reader().Read(ctx, typ, id)
	if err != nil {
		return nil, err
	}
	if useCache {
		s.cache.put(gen, v)
	}
	return v, nil
}

func (s *Store) reader() reader { return reader{s.pool, s.timeout} }

// VRead implements store.Reader.
func (s *Store) VRead(ctx context.Context, typ, id string, version int64) (*store.Version, error) {
	return s.reader().VRead(ctx, typ, id, version)
}

// History implements store.Reader: the count and the page are read in one
// snapshot.
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
	return s.reader().Search(ctx, q, offset, limit)
}

// Count implements store.Reader.
func (s *Store) Count(ctx context.Context, q *search.Query) (int, error) {
	return s.reader().Count(ctx, q)
}

// Fetch implements store.Reader.
func (s *Store) Fetch(ctx context.Context, ms []store.Match) ([]*store.Version, error) {
	return s.reader().Fetch(ctx, ms)
}

// Include implements store.Reader.
func (s *Store) Include(ctx context.Context, page []*store.Version, inc search.Include) ([]*store.Version, error) {
	return s.reader().Include(ctx, page, inc)
}

// planned marks a query to be planned with its arguments on every
// execution (pgx sends it as an unnamed statement, its description
// cached), never prepared: PostgreSQL switches a prepared statement to a
// generic plan after five executions, and a generic plan of a search does
// not know which of its conditions is selective (a code that ten thousand
// Observations share, or a patient's reference), so it may drive the
// search by the wrong one. The searches, counts, includes and histories,
// whose SQL the query decides, are planned; the fixed statements (reads by
// id, fetches, writes) are prepared.
func planned(args []any) []any {
	return append([]any{pgx.QueryExecModeCacheDescribe}, args...)
}

// readTx runs fn in a read-only REPEATABLE READ transaction, so that its
// queries see one state; the whole is bounded by the timeout.
func (s *Store) readTx(ctx context.Context, fn func(r reader) error) error {
	bctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	tx, err := s.pool.BeginTx(bctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin read: %w", classify(ctx, err))
	}
	defer tx.Rollback(context.WithoutCancel(bctx))
	err = fn(reader{tx, s.timeout})
	return classify(ctx, err)
}

// bound returns ctx bounded by the timeout.
func (r reader) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.timeout)
}

const versionColumns = `h.rid, r.type, r.id, h.version, h.updated, h.deleted, h.method, h.body, h.seq`

const selectVersion = `SELECT ` + versionColumns + ` FROM history h JOIN resources r ON r.rid = h.rid `

func scanVersion(sc interface{ Scan(...any) error }) (*store.Version, error) {
	v := &store.Version{}
	var updated int64
	if err := sc.Scan(&v.Key, &v.Type, &v.ID, &v.Version, &updated, &v.Deleted, &v.Method, &v.Body, &v.Seq); err != nil {
		return nil, err
	}
	v.Updated = time.UnixMicro(updated).UTC()
	return v, nil
}

func (r reader) one(ctx context.Context, query string, args ...any) (*store.Version, error) {
	bctx, cancel := r.bound(ctx)
	defer cancel()
	v, err := scanVersion(r.q.QueryRow(bctx, query, args...))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read: %w", classify(ctx, err))
	}
	return v, nil
}

// readSQL reads the current version of a resource.
const readSQL = `SELECT ` + versionColumns + ` FROM resources r JOIN history h ON h.seq = r.seq WHERE r.type = $1 AND r.id = $2`

func (r reader) Read(ctx context.Context, typ, id string) (*store.Version, error) {
	return r.one(ctx, readSQL, text(typ), text(id))
}

func (r reader) VRead(ctx context.Context, typ, id string, version int64) (*store.Version, error) {
	return r.one(ctx, selectVersion+`WHERE r.type = $1 AND r.id = $2 AND h.version = $3`, text(typ), text(id), version)
}

func (r reader) History(ctx context.Context, q store.HistoryQuery) ([]*store.Version, int, error) {
	var where strings.Builder
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	where.WriteString("WHERE TRUE")
	switch {
	case q.ID != "":
		where.WriteString(` AND h.rid = (SELECT rid FROM resources WHERE type = ` + arg(text(q.Type)) + ` AND id = ` + arg(text(q.ID)) + `)`)
	case q.Type != "":
		where.WriteString(` AND h.type = ` + arg(text(q.Type)))
	}
	if !q.Since.IsZero() {
		where.WriteString(` AND h.updated >= ` + arg(q.Since.UnixMicro()))
	}
	if q.Compartment != "" {
		where.WriteString(` AND h.seq IN (SELECT seq FROM history_compartment WHERE patient = ` + arg(key(q.Compartment)) + `)`)
	}
	if len(q.ExcludeTypes) > 0 {
		types := make([]string, len(q.ExcludeTypes))
		for i, t := range q.ExcludeTypes {
			types[i] = text(t)
		}
		where.WriteString(` AND NOT (h.type = ANY(` + arg(types) + `))`)
	}
	bctx, cancel := r.bound(ctx)
	defer cancel()
	var total int
	if err := r.q.QueryRow(bctx, `SELECT count(*) FROM history h `+where.String(), planned(args)...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count history: %w", classify(ctx, err))
	}
	if q.Before > 0 {
		where.WriteString(` AND h.seq < ` + arg(q.Before))
	}
	var count *int64 // a negative count is no limit (NULL), as in SQLite
	if q.Count >= 0 {
		c := int64(q.Count)
		count = &c
	}
	lim := arg(count)
	out, err := r.all(bctx, ctx, selectVersion+where.String()+` ORDER BY h.seq DESC LIMIT `+lim, planned(args)...)
	if err != nil {
		return nil, 0, fmt.Errorf("history: %w", err)
	}
	return out, total, nil
}

// all runs a query of versions on bctx and scans them; errors are
// classified against the caller's ctx.
func (r reader) all(bctx, ctx context.Context, query string, args ...any) ([]*store.Version, error) {
	rows, err := r.q.Query(bctx, query, args...)
	if err != nil {
		return nil, classify(ctx, err)
	}
	defer rows.Close()
	var out []*store.Version
	for rows.Next() {
		v, err := scanVersion(rows)
		if err != nil {
			return nil, classify(ctx, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(ctx, err)
	}
	return out, nil
}

func (r reader) Search(ctx context.Context, q *search.Query, offset, limit int) ([]store.Match, error) {
	b := buildSearch(q)
	// As in SQLite: a negative limit is none (NULL), a negative offset 0.
	var lim64 *int64
	if limit >= 0 {
		l := int64(limit)
		lim64 = &l
	}
	lim, off := b.arg(lim64), b.arg(int64(max(offset, 0)))
	query := `SELECT r.rid, r.version FROM resources r WHERE ` + b.where.String() + b.orderBy() + ` LIMIT ` + lim + ` OFFSET ` + off
	bctx, cancel := r.bound(ctx)
	defer cancel()
	rows, err := r.q.Query(bctx, query, planned(b.args)...)
	if err != nil {
		return nil, fmt.Errorf("search: %w", classify(ctx, err))
	}
	defer rows.Close()
	var out []store.Match
	for rows.Next() {
		var m store.Match
		if err := rows.Scan(&m.Key, &m.Version); err != nil {
			return nil, fmt.Errorf("search: %w", classify(ctx, err))
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("search: %w", classify(ctx, err))
	}
	return out, nil
}

func (r reader) Count(ctx context.Context, q *search.Query) (int, error) {
	b := buildSearch(q)
	bctx, cancel := r.bound(ctx)
	defer cancel()
	var n int
	if err := r.q.QueryRow(bctx, `SELECT count(*) FROM resources r WHERE `+b.where.String(), planned(b.args)...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count: %w", classify(ctx, err))
	}
	return n, nil
}

func (r reader) Fetch(ctx context.Context, ms []store.Match) ([]*store.Version, error) {
	if len(ms) == 0 {
		return []*store.Version{}, nil
	}
	rids := make([]int64, len(ms))
	versions := make([]int64, len(ms))
	for i, m := range ms {
		rids[i], versions[i] = m.Key, m.Version
	}
	bctx, cancel := r.bound(ctx)
	defer cancel()
	// The matches drive the join: one index lookup each, in their order.
	vs, err := r.all(bctx, ctx, `SELECT `+versionColumns+`
		FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS m(rid, version, ord)
		JOIN history h ON h.rid = m.rid AND h.version = m.version
		JOIN resources r ON r.rid = h.rid
		ORDER BY m.ord`, rids, versions)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	if vs == nil {
		vs = []*store.Version{}
	}
	return vs, nil
}

func (r reader) Include(ctx context.Context, page []*store.Version, inc search.Include) ([]*store.Version, error) {
	if len(page) == 0 {
		return nil, nil
	}
	var query strings.Builder
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if !inc.Rev {
		var rids []int64
		for _, v := range page {
			if v.Type == inc.Source {
				rids = append(rids, v.Key)
			}
		}
		if len(rids) == 0 {
			return nil, nil
		}
		query.WriteString(selectVersion + `WHERE h.seq IN (SELECT r2.seq FROM sp_ref s JOIN resources r2 ON r2.type = s.ttype AND r2.id = s.tid
			WHERE s.rid = ANY(` + arg(rids) + `) AND NOT r2.deleted`)
	} else {
		// Resources of type Source whose reference parameter points at a
		// resource of the page.
		ids := make([]string, 0, len(page))
		var types []string
		seen := map[string]bool{}
		for _, v := range page {
			ids = append(ids, key(v.ID))
			if !seen[v.Type] {
				seen[v.Type] = true
				types = append(types, key(v.Type))
			}
		}
		query.WriteString(selectVersion + `WHERE h.seq IN (SELECT r2.seq FROM sp_ref s JOIN resources r2 ON r2.rid = s.rid
			WHERE r2.type = ` + arg(text(inc.Source)) + ` AND NOT r2.deleted AND s.tid = ANY(` + arg(ids) + `) AND s.ttype = ANY(` + arg(types) + `)`)
	}
	if inc.Param != nil {
		query.WriteString(` AND s.p = ` + arg(text(inc.Param.Key())))
	} else {
		query.WriteString(` AND s.p >= ` + arg(text(inc.Source)+".") + ` AND s.p < ` + arg(text(inc.Source)+"/"))
	}
	if inc.Target != "" {
		query.WriteString(` AND s.ttype = ` + arg(key(inc.Target)))
	}
	query.WriteString(`) ORDER BY h.seq`)
	bctx, cancel := r.bound(ctx)
	defer cancel()
	out, err := r.all(bctx, ctx, query.String(), planned(args)...)
	if err != nil {
		return nil, fmt.Errorf("include: %w", err)
	}
	return out, nil
}
