// Package fhir is OmniGate's embedded FHIR R4 (4.0.1) server, the terminal
// handler of routes with "fhir: true". It serves the REST API in JSON for
// every R4 resource type: read, vread, create, update, patch, delete,
// history, search with includes and paging, conditional requests, batch and
// transaction Bundles, and a CapabilityStatement that lists what works.
//
// Resources are stored as the JSON the client sent plus the server's id and
// meta, in an embedded SQLite file (see Config.Store), and indexed for
// search at write time from the official SearchParameter definitions.
//
// Importing the package registers the server with the gateway; its
// configuration is the top-level "fhir:" key of omnigate.yaml (see Config).
package fhir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/profile"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/postgres"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/sqlite"
	"github.com/omnigate/omnigate/builtin/fhir/internal/validate"
	"github.com/omnigate/omnigate/gateway"
)

func init() {
	gateway.RegisterFHIRHandler(DefaultConfig, build)
}

// build is the gateway's constructor: the store and the schema validator
// are shared objects, so a config reload that names the same store path
// reuses the open store.
func build(ctx context.Context, cfg *Config, env *gateway.Env) (http.Handler, error) {
	v, err := env.Shared(storeKey(cfg), func() (any, error) {
		return openStore(ctx, cfg)
	})
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	opts := Options{Logger: env.Logger}
	if boolOr(cfg.SchemaValidation, true) {
		val, err := env.Shared("fhir-validator", func() (any, error) { return newValidator() })
		if err != nil {
			return nil, err
		}
		opts.validator = val.(*validate.Validator)
	}
	h, err := newHandler(cfg, v.(store.Store), opts)
	if err != nil {
		return nil, err
	}
	// One exporter per export folder, kept across reloads like the store.
	dir, err := filepath.Abs(cfg.Export.Dir)
	if err != nil {
		return nil, fmt.Errorf("export.dir: %w", err)
	}
	xv, err := env.Shared("fhir-export:"+dir, func() (any, error) { return newExporter(cfg.Export, nil, env.Logger) })
	if err != nil {
		return nil, fmt.Errorf("open export folder: %w", err)
	}
	h.export = xv.(*exporter)
	h.export.configure(cfg.Export)
	env.HandleAdmin(http.MethodGet, "/admin/fhir/exports", h.export.adminHandler())
	if b, ok := v.(backuper); ok {
		env.HandleAdmin(http.MethodPost, "/admin/fhir/backup", backupHandler(b, cfg.Store.BackupDir, env.Logger, time.Now))
	}
	mountStats(env, v, cfg)
	return h, nil
}

// backuper is a store that can copy itself while it serves.
type backuper interface {
	// Backup writes a consistent copy of the store to path, which must
	// not exist or be empty.
	Backup(ctx context.Context, path string) error
}

// defaultBackupDir is where backups go when fhir.store.backup_dir is unset.
const defaultBackupDir = "./data/backups"

// backupHandler answers POST /admin/fhir/backup: a consistent copy of the
// store in dir (default ./data/backups), named after the time with a random
// suffix, and its path in the answer. Concurrent backups write separate
// files.
func backupHandler(b backuper, dir string, logger *slog.Logger, now func() time.Time) http.Handler {
	if dir == "" {
		dir = defaultBackupDir
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			gateway.Error(w, r, http.StatusInternalServerError, "backup folder: "+err.Error())
			return
		}
		start := now()
		path, err := newBackupFile(dir, start)
		if err != nil {
			logger.Error("store backup failed", "error", err)
			gateway.Error(w, r, http.StatusInternalServerError, err.Error())
			return
		}
		if err := b.Backup(r.Context(), path); err != nil {
			os.Remove(path)
			logger.Error("store backup failed", "error", err)
			gateway.Error(w, r, http.StatusInternalServerError, err.Error())
			return
		}
		var size int64
		if st, err := os.Stat(path); err == nil {
			size = st.Size()
		}
		took := now().Sub(start)
		logger.Info("store backed up", "path", path, "bytes", size, "duration", took.Round(time.Millisecond).String())
		gateway.WriteJSON(w, http.StatusOK, map[string]any{"path": path, "bytes": size,
			"duration": took.Round(time.Millisecond).String()})
	})
}

// newBackupFile creates an empty file, readable by its owner only (it will
// hold patient data), named after t with a random suffix; creation is
// exclusive, so two backups never share a file.
func newBackupFile(dir string, t time.Time) (string, error) {
	for range 3 {
		var sfx [4]byte
		rand.Read(sfx[:])
		path := filepath.Join(dir, "omnigate-"+t.UTC().Format("20060102T150405.000Z")+"-"+hex.EncodeToString(sfx[:])+".db")
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("backup file: %w", err)
		}
		return path, f.Close()
	}
	return "", errors.New("backup file: no free name")
}

// newValidator returns the process's schema validator, built on first use:
// the schema never changes, and compiling it takes about half a second.
func newValidator() (*validate.Validator, error) { return sharedValidator() }

func storeOptions(cfg *Config) sqlite.Options {
	return sqlite.Options{Sync: cfg.Store.Sync, CacheBytes: int64(cfg.Store.ReadCache)}
}

// openStore opens the store cfg.Store names. The package's tests replace
// it to run on another store (see TestMain).
var openStore = openConfiguredStore

// openConfiguredStore opens the SQLite or the PostgreSQL store, as
// cfg.Store.Driver says.
func openConfiguredStore(ctx context.Context, cfg *Config) (store.Store, error) {
	if cfg.Store.Driver == "postgres" {
		s, err := postgres.Open(ctx, postgresOptions(cfg))
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	s, err := sqlite.Open(ctx, cfg.Store.Path, storeOptions(cfg))
	if err != nil {
		return nil, err
	}
	return s, nil
}

// postgresOptions are the PostgreSQL store's options from cfg.
func postgresOptions(cfg *Config) postgres.Options {
	return postgres.Options{URL: cfg.Store.DatabaseURL(), MaxConns: cfg.Store.MaxConns,
		StatementTimeout: cfg.Store.StatementTimeout, SSLMode: cfg.Store.SSLMode, CAFile: cfg.Store.CAFile,
		CacheBytes: int64(cfg.Store.ReadCache)}
}

// storeKey names the store cfg opens, for sharing it across config
// reloads.
func storeKey(cfg *Config) string {
	if cfg.Store.Driver == "postgres" {
		o := postgresOptions(cfg)
		return fmt.Sprintf("fhir-store:postgres:%s|%d|%s|%s|%s|%d", o.URL, o.MaxConns, o.StatementTimeout, o.SSLMode, o.CAFile, o.CacheBytes)
	}
	return "fhir-store:" + cfg.Store.Path
}

// MigrateStore applies the PostgreSQL store's schema migrations that the
// database lacks (all of them with dryRun false, none with dryRun true)
// and returns their names. It is an error for a SQLite store, which
// migrates itself when it opens.
func MigrateStore(ctx context.Context, cfg *Config, dryRun bool) ([]string, error) {
	if cfg.Store.Driver != "postgres" {
		return nil, errors.New("fhir.store.driver is not postgres: the SQLite store migrates itself when it opens")
	}
	return postgres.Migrate(ctx, postgresOptions(cfg), dryRun)
}

// RedactURL returns a database URL without its password, for messages.
func RedactURL(u string) string { return postgres.Redact(u) }

var sharedValidator = sync.OnceValues(func() (*validate.Validator, error) {
	v, err := validate.New()
	if err != nil {
		return nil, fmt.Errorf("load schema: %w", err)
	}
	// Compiling the first type compiles what every type refers to (about
	// half a second); do it now rather than on the first request.
	if err := v.Precompile("Patient"); err != nil {
		return nil, err
	}
	return v, nil
})

// Options configure a Handler beyond its Config.
type Options struct {
	// Logger receives errors the server could not answer otherwise. It
	// never receives resource content. Default: slog.Default().
	Logger *slog.Logger
	// Now is the server's clock: it stamps meta.lastUpdated and Bundles,
	// anchors the "ap" prefix on dates, expires paging snapshots and names
	// backups. Default: time.Now.
	Now func() time.Time

	validator *validate.Validator
}

// Handler serves the FHIR REST API. It is safe for concurrent use.
type Handler struct {
	cfg       Config
	base      string
	store     store.Store
	ownStore  bool
	validator *validate.Validator
	// profiles are the StructureDefinitions writes are validated against
	// (nil: none).
	profiles *profile.Set
	// opVal are $validate's, built on first use.
	opVal     validators
	log       *slog.Logger
	pages     *snapshots
	capJSON   []byte
	smartJSON []byte
	origins   map[string]bool
	anyOrigin bool
	// export runs bulk exports: the Handler's own (Open) or the one the
	// gateway shares per export folder.
	export *exporter

	// noBulk makes transactions write Put by Put on every store
	// (benchmarks compare it with the bulk path, see bulkUpdate).
	noBulk bool

	mu      sync.RWMutex
	onWrite []func(ctx context.Context, w Write)
	now     func() time.Time
}

var _ http.Handler = (*Handler)(nil)

// Open builds a Handler with a store of its own, opened from cfg.Store and
// closed by Close. It is what programs other than the gateway use (the
// import command, tests). cfg is validated first.
func Open(ctx context.Context, cfg *Config, opts Options) (*Handler, error) {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("fhir config: %w", err)
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if boolOr(cfg.SchemaValidation, true) {
		if opts.validator, err = newValidator(); err != nil {
			st.Close()
			return nil, err
		}
	}
	h, err := newHandler(cfg, st, opts)
	if err != nil {
		st.Close()
		return nil, err
	}
	h.ownStore = true
	if h.export, err = newExporter(cfg.Export, opts.Now, opts.Logger); err != nil {
		st.Close()
		return nil, fmt.Errorf("open export folder: %w", err)
	}
	return h, nil
}

func newHandler(cfg *Config, st store.Store, opts Options) (*Handler, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	h := &Handler{
		cfg:       *cfg,
		base:      cfg.BasePath(),
		store:     st,
		validator: opts.validator,
		log:       opts.Logger,
		origins:   map[string]bool{},
		now:       opts.Now,
	}
	if n := 1000; cfg.PageSnapshots == nil || *cfg.PageSnapshots > 0 {
		if cfg.PageSnapshots != nil {
			n = *cfg.PageSnapshots
		}
		shared, _ := st.(store.Snapshots)
		h.pages = newSnapshots(n, cfg.SnapshotTTL, opts.Now, shared)
	}
	for _, o := range cfg.CORS.AllowedOrigins {
		if o == "*" {
			h.anyOrigin = true
		}
		h.origins[o] = true
	}
	var err error
	if h.profiles, err = profileSet(cfg); err != nil {
		return nil, err
	}
	if cfg.SMART.Configured() {
		if h.smartJSON, err = json.Marshal(cfg.SMART.document()); err != nil {
			return nil, err
		}
	}
	if h.capJSON, err = capabilityStatement(cfg, opts.Now()); err != nil {
		return nil, err
	}
	return h, nil
}

// Close closes the store and stops the exports if the Handler opened them
// (Open); those shared through the gateway are closed by the gateway.
func (h *Handler) Close() error {
	if h.ownStore {
		return errors.Join(h.export.Close(), h.store.Close())
	}
	return nil
}

// Write describes one committed change to a resource.
type Write struct {
	// Type and ID name the resource.
	Type, ID string
	// Version is the version the write created.
	Version int64
	// Deleted is set when the write was a delete.
	Deleted bool
	// Compartments lists the Patient compartments ("Patient/85") the
	// resource was in before the write or is in after it, sorted.
	Compartments []string
}

// OnWrite registers f to be called after every successful write: creates,
// updates, patches and deletes, including each entry of a batch or
// transaction (after the transaction commits). f runs synchronously, before
// the response is sent, so that caches can drop what the write made stale;
// it must be quick and must not write to the server. Writes that change
// nothing (a conditional create that found a match, the delete of a deleted
// resource) are not reported.
func (h *Handler) OnWrite(f func(ctx context.Context, w Write)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.onWrite = append(h.onWrite, f)
}

func (h *Handler) notify(ctx context.Context, ws []Write) {
	h.mu.RLock()
	fs := h.onWrite
	h.mu.RUnlock()
	for _, w := range ws {
		for _, f := range fs {
			f(ctx, w)
		}
	}
}

// httpError is an error with its status and OperationOutcome.
type httpError struct {
	status int
	issues []issue
}

func (e *httpError) Error() string {
	if len(e.issues) == 0 {
		return http.StatusText(e.status)
	}
	return e.issues[0].Diagnostics
}

func errorf(status int, format string, args ...any) *httpError {
	return &httpError{status: status, issues: []issue{newIssue(status, fmt.Sprintf(format, args...))}}
}

// asHTTPError maps err to a status: *httpError keeps its own, a request
// body over the limit is 413, a cancelled request 499 (never sent), a store
// that cannot be reached or did not answer in time 503 (answered with
// Retry-After), and anything else nil (500).
func asHTTPError(err error) *httpError {
	var he *httpError
	if errors.As(err, &he) {
		return he
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errorf(http.StatusRequestEntityTooLarge, "request body exceeds the limit of %d bytes", mbe.Limit)
	}
	if errors.Is(err, context.Canceled) {
		return errorf(499, "request cancelled")
	}
	if errors.Is(err, store.ErrUnavailable) {
		return errorf(http.StatusServiceUnavailable, "the FHIR store is unavailable: retry later")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return errorf(http.StatusServiceUnavailable, "the FHIR store did not answer in time: retry later")
	}
	return nil
}

// decodeCost is the working memory of decoding, validating and storing a
// request body, per byte of its JSON: a 13MiB Observation or batch Bundle
// takes about 300MiB more heap in use at its peak (garbage not yet
// collected included), about 24 times its size.
const decodeCost = 24

// readBody reads the request body within the configured limit, into the
// gateway's shared, budgeted buffer (plugins before may have read it
// already), and reserves the working memory of decoding it from the
// gateway's body budget.
func (h *Handler) readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	limit := int64(-1)
	if h.cfg.MaxBody > 0 {
		if r.ContentLength > int64(h.cfg.MaxBody) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "request body of %d bytes exceeds the limit of %d bytes", r.ContentLength, int64(h.cfg.MaxBody))
		}
		limit = int64(h.cfg.MaxBody)
	}
	b, err := gateway.ReadBody(r.Context(), r, limit)
	if err == nil {
		err = gateway.ReserveBody(r.Context(), decodeCost*int64(len(b)))
	}
	if err != nil {
		if he := asHTTPError(err); he != nil {
			return nil, he
		}
		return nil, errorf(http.StatusBadRequest, "read request body: %v", err)
	}
	return b, nil
}
