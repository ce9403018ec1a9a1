package fhir

import (
	"errors"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/postgres"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

// Config configures the embedded FHIR server: the top-level "fhir:" key of
// omnigate.yaml. Every field documents its default.
type Config struct {
	// Base is where the server answers. Default "/fhir/R4". Must begin
	// with "/" and not end with one.
	Base string `yaml:"base_path"`
	// BaseURL is the absolute URL of the base as clients see it, used in
	// Location headers, fullUrl and paging links (for example
	// "https://fhir.example.org/fhir/R4"). Default "": built from each
	// request's Host header and scheme (X-Forwarded-Proto is honoured).
	BaseURL string `yaml:"base_url"`
	// Store configures where resources are kept.
	Store StoreConfig `yaml:"store"`
	// CORS configures cross-origin access for browser apps.
	CORS CORSConfig `yaml:"cors"`
	// UpdateCreate lets PUT create a resource with the id the client
	// chose. Default true; when false such a PUT is answered 405.
	UpdateCreate *bool `yaml:"update_create"`
	// SchemaValidation checks every written resource against the official
	// R4 JSON schema (unknown elements, wrong types, bad primitive
	// formats) and, as Validation says, the StructureDefinitions. Default
	// true; false turns all validation off (the checks of input that
	// FHIR's JSON rules need, UTF-8 and exact numbers, stay on).
	SchemaValidation *bool `yaml:"validate"`
	// Validation configures validation beyond the schema, when validate
	// is true.
	Validation ValidationConfig `yaml:"validation"`
	// RejectUnknownElements makes schema validation also reject elements
	// that R4 does not define. Default false: they are stored as sent, as
	// real-world data (Synthea's exports among it) carries some.
	RejectUnknownElements bool `yaml:"reject_unknown_elements"`
	// DefaultCount is the page size of searches and histories without
	// _count. Default 20.
	DefaultCount int `yaml:"default_count"`
	// MaxCount caps _count. Default 1000.
	MaxCount int `yaml:"max_count"`
	// MaxBody caps request bodies; larger ones get 413. Default 0: the
	// route's limit (server.max_body, 16MiB by default) applies.
	MaxBody gateway.ByteSize `yaml:"max_body"`
	// PageSnapshots is how many search result sets are kept so that
	// next/prev links page over the results as they were when the search
	// ran, while others write. Default 1000; each holds up to
	// SnapshotSize matches (16 bytes each). 0 turns snapshots off: pages
	// are then read at their offset from the current data.
	PageSnapshots *int `yaml:"page_snapshots"`
	// SnapshotSize is the most matches a snapshot keeps; pages beyond it
	// are read at their offset. Default 10000.
	SnapshotSize int `yaml:"snapshot_size"`
	// SnapshotTTL is how long a snapshot is kept after its last use.
	// Default 10m.
	SnapshotTTL time.Duration `yaml:"snapshot_ttl"`
	// SMART is served at [base]/.well-known/smart-configuration, where SMART
	// on FHIR apps discover how to authorize.
	SMART SMARTConfig `yaml:"smart"`
	// Export configures bulk data export ($export).
	Export ExportConfig `yaml:"export"`
	// Search configures how searches treat their parameters.
	Search SearchConfig `yaml:"search"`
}

// ValidationConfig configures validation against StructureDefinitions:
// the core definitions of R4, and profiles from FHIR packages.
type ValidationConfig struct {
	// Core checks written resources against the core StructureDefinitions:
	// cardinality, choice types, fixed and pattern values, required
	// bindings and invariants. Default true.
	Core *bool `yaml:"core"`
	// Profiles checks written resources against the profiles their
	// meta.profile declares, among those of Packages (a profile the
	// server does not know is not checked). Default true.
	Profiles *bool `yaml:"profiles"`
	// Packages are the FHIR packages whose profiles, value sets and code
	// systems the server knows: each an NPM-style package (.tgz, as
	// published, e.g. hl7.fhir.us.core-5.0.1.tgz), a folder of JSON
	// resources, or a JSON file (a resource, a Bundle or an array).
	// StructureDefinitions must carry a snapshot. Relative paths are
	// from the working folder. Default: none.
	Packages []string `yaml:"packages"`
}

// SearchConfig configures searches.
type SearchConfig struct {
	// UnknownParams is what a search does with a parameter that its
	// resource type does not define (or a chain no target type can
	// follow): "strict" (default) answers 400 with an OperationOutcome
	// naming it, so that a search is never silently widened; "lenient"
	// ignores it and leaves it out of the self link. A request chooses
	// for itself with Prefer: handling=strict or handling=lenient.
	// Conditional create, update and delete refuse unknown parameters
	// whatever this says.
	UnknownParams string `yaml:"unknown_params"`
}

// lenient reports whether UnknownParams is "lenient".
func (s SearchConfig) lenient() bool { return s.UnknownParams == "lenient" }

// ExportConfig configures bulk data export: where the NDJSON files of
// exports are written, for how long they are kept, and how many exports
// run at once.
type ExportConfig struct {
	// Dir is the folder of the exports' files and job states, created
	// when the first export starts. Default "./data/exports".
	Dir string `yaml:"dir"`
	// Retention is how long an export's files stay available after it
	// completes; they are deleted then. Default 1h.
	Retention time.Duration `yaml:"retention"`
	// MaxLines is the most resources one NDJSON file holds; a type with
	// more is split into several files. Default 100000.
	MaxLines int `yaml:"max_lines"`
	// Concurrency is how many exports run at once; others wait their
	// turn. Default 2. Read when the export folder is first opened (a
	// change takes effect on restart).
	Concurrency int `yaml:"concurrency"`
	// MaxJobs caps the exports waiting or running; a kick-off beyond it is
	// answered 429. Default 16.
	MaxJobs int `yaml:"max_jobs"`
}

// SMARTConfig is the SMART App Launch discovery document. Apps authorize
// with an OAuth server (the identity provider whose JWTs the session
// plugin accepts); name its endpoints here. Fields left empty are left
// out of the document.
type SMARTConfig struct {
	// Issuer and JWKSURI of the identity provider (for OpenID Connect).
	Issuer  string `yaml:"issuer" json:"issuer,omitempty"`
	JWKSURI string `yaml:"jwks_uri" json:"jwks_uri,omitempty"`
	// AuthorizationEndpoint and TokenEndpoint of the OAuth server.
	AuthorizationEndpoint string `yaml:"authorization_endpoint" json:"authorization_endpoint,omitempty"`
	TokenEndpoint         string `yaml:"token_endpoint" json:"token_endpoint,omitempty"`
	// GrantTypes supported. Default: authorization_code when an
	// authorization endpoint is set.
	GrantTypes []string `yaml:"grant_types" json:"grant_types_supported,omitempty"`
	// Scopes supported. Default: the SMART v1 and v2 resource scopes.
	Scopes []string `yaml:"scopes" json:"scopes_supported,omitempty"`
	// Capabilities. Default: permission-v1, permission-v2,
	// permission-patient, permission-user, launch-standalone,
	// client-public, client-confidential-symmetric.
	Capabilities []string `yaml:"capabilities" json:"capabilities"`
	// CodeChallengeMethods, default S256 (PKCE).
	CodeChallengeMethods []string `yaml:"code_challenge_methods" json:"code_challenge_methods_supported,omitempty"`
}

// Configured reports whether SMART discovery is served: the OAuth
// server's token endpoint, which SMART App Launch requires, is set.
// Without it [base]/.well-known/smart-configuration answers 404 (this
// server then is no SMART authorization server: its sessions come from
// its own login or from bearer JWTs), and the CapabilityStatement carries
// no SMART security extension.
func (s SMARTConfig) Configured() bool { return s.TokenEndpoint != "" }

// document returns the discovery document with defaults filled in.
// Standalone launch is declared only with an authorization endpoint.
func (s SMARTConfig) document() SMARTConfig {
	if len(s.Capabilities) == 0 {
		s.Capabilities = []string{"permission-v1", "permission-v2", "permission-patient", "permission-user",
			"client-public", "client-confidential-symmetric"}
		if s.AuthorizationEndpoint != "" {
			s.Capabilities = append(s.Capabilities, "launch-standalone")
		}
	}
	if len(s.Scopes) == 0 {
		s.Scopes = []string{"openid", "fhirUser", "launch/patient", "offline_access",
			"patient/*.rs", "user/*.rs", "user/*.cruds", "patient/*.read", "user/*.read", "user/*.write"}
	}
	if len(s.GrantTypes) == 0 && s.AuthorizationEndpoint != "" {
		s.GrantTypes = []string{"authorization_code"}
	}
	if len(s.CodeChallengeMethods) == 0 && s.AuthorizationEndpoint != "" {
		s.CodeChallengeMethods = []string{"S256"}
	}
	return s
}

// StoreConfig selects the store.
type StoreConfig struct {
	// Driver is "sqlite" (default): the embedded store, one file that one
	// process serves; or "postgres": a PostgreSQL database that every
	// instance of a fleet serves directly (docs/FHIR.md).
	Driver string `yaml:"driver"`
	// Path of the SQLite database file, created with its folder if
	// missing. Default "./data/omnigate.db". ":memory:" keeps everything
	// in memory (tests). SQLite only.
	Path string `yaml:"path"`
	// URL is the PostgreSQL connection URL
	// (postgres://user:password@host:5432/db?sslmode=verify-full, or
	// libpq's "host=… dbname=…" pairs); the
	// environment variable FHIR_DATABASE_URL, when set, replaces it, so the
	// password need not be in the file. The password is never logged nor
	// shown by /ping. Required with driver postgres.
	URL string `yaml:"url"`
	// MaxConns is the size of the PostgreSQL connection pool. Default 4 per
	// CPU, at least 8.
	MaxConns int `yaml:"max_conns"`
	// StatementTimeout bounds every database call; a call that takes longer
	// fails and its request is answered 503. Default 5s. PostgreSQL only.
	StatementTimeout time.Duration `yaml:"statement_timeout"`
	// SSLMode is PostgreSQL's sslmode (disable, allow, prefer, require,
	// verify-ca, verify-full); it replaces the URL's. Default: the URL's,
	// else prefer.
	SSLMode string `yaml:"sslmode"`
	// CAFile is a PEM file of the certificate authorities that verify the
	// server's certificate (verify-ca, verify-full). Default: the system's.
	CAFile string `yaml:"ca_file"`
	// Sync is "full" (default): every acknowledged write is fsynced and
	// survives a power loss; or "normal": acknowledged writes survive a
	// crash of the process (kill -9) but the last ones may be lost if the
	// machine fails. "normal" makes small writes several times faster.
	Sync string `yaml:"sync"`
	// ReadCache bounds the memory (resource JSON sizes added up) that keeps
	// recently read resources for reads by id. Default 64MiB; 0 turns it
	// off. The store file is locked to one process while open, so the
	// cache never serves what another writer changed.
	ReadCache gateway.ByteSize `yaml:"read_cache"`
	// BackupDir is where POST /admin/fhir/backup (on the admin listener)
	// writes consistent copies of the store while it serves. Default
	// "./data/backups".
	BackupDir string `yaml:"backup_dir"`
	// IgnoreEnv makes DatabaseURL return URL even when FHIR_DATABASE_URL
	// is set: for a URL given on a command line (omnigate fhir copy). Not a
	// config key.
	IgnoreEnv bool `yaml:"-"`
}

// Describe names the store for messages: the SQLite file, or the
// PostgreSQL URL without its password.
func (s *StoreConfig) Describe() string {
	if s.Driver == "postgres" {
		return postgres.Redact(s.DatabaseURL())
	}
	return s.Path
}

// DatabaseURL is the PostgreSQL URL: FHIR_DATABASE_URL when set (unless
// IgnoreEnv), else URL.
func (s *StoreConfig) DatabaseURL() string {
	if u := os.Getenv("FHIR_DATABASE_URL"); u != "" && !s.IgnoreEnv {
		return u
	}
	return s.URL
}

// CORSConfig configures Cross-Origin Resource Sharing.
type CORSConfig struct {
	// AllowedOrigins lists the origins (scheme://host[:port]) that browser
	// apps may call from; "*" allows any. Default: none (no CORS headers).
	AllowedOrigins []string `yaml:"allowed_origins"`
	// MaxAge is how long browsers may cache a preflight answer. Default 10m.
	MaxAge time.Duration `yaml:"max_age"`
}

// DefaultConfig returns the configuration with every default set.
func DefaultConfig() *Config {
	// Each *bool its own variable: YAML decodes through the pointer.
	updateCreate, validate := true, true
	snaps := 1000
	return &Config{
		Base:             "/fhir/R4",
		Store:            StoreConfig{Path: "./data/omnigate.db", Sync: "full", ReadCache: 64 << 20},
		CORS:             CORSConfig{MaxAge: 10 * time.Minute},
		UpdateCreate:     &updateCreate,
		SchemaValidation: &validate,
		DefaultCount:     20,
		MaxCount:         1000,
		PageSnapshots:    &snaps,
		SnapshotSize:     10000,
		SnapshotTTL:      10 * time.Minute,
		Export:           ExportConfig{Dir: "./data/exports", Retention: time.Hour, MaxLines: 100000, Concurrency: 2, MaxJobs: 16},
	}
}

// BasePath returns where the server answers (Base, default "/fhir/R4").
func (c *Config) BasePath() string {
	if c.Base == "" {
		return "/fhir/R4"
	}
	return c.Base
}

// PublicBaseURL returns BaseURL: "" when links are built from each
// request's Host (the response cache then keys on the Host).
func (c *Config) PublicBaseURL() string { return c.BaseURL }

func boolOr(p *bool, def bool) bool {
	if p == nil {
		return def
	}
	return *p
}

// Validate checks the configuration; each error names its key.
func (c *Config) Validate() error {
	for key, u := range map[string]string{"smart.issuer": c.SMART.Issuer, "smart.jwks_uri": c.SMART.JWKSURI,
		"smart.authorization_endpoint": c.SMART.AuthorizationEndpoint, "smart.token_endpoint": c.SMART.TokenEndpoint} {
		if u == "" {
			continue
		}
		if p, err := url.Parse(u); err != nil || p.Scheme != "https" && p.Scheme != "http" || p.Host == "" {
			return gateway.FieldErrorf(key, "must be an absolute http(s) URL")
		}
	}
	var errs []error
	if sm := c.SMART; !sm.Configured() && (sm.AuthorizationEndpoint != "" || sm.Issuer != "" || sm.JWKSURI != "" ||
		len(sm.GrantTypes)+len(sm.Scopes)+len(sm.Capabilities)+len(sm.CodeChallengeMethods) > 0) {
		errs = append(errs, gateway.FieldErrorf("smart.token_endpoint", "required: SMART discovery is served only with the OAuth server's token endpoint"))
	}
	if b := c.BasePath(); !strings.HasPrefix(b, "/") || (len(b) > 1 && strings.HasSuffix(b, "/")) || strings.ContainsAny(b, ":*?# ") {
		errs = append(errs, gateway.FieldErrorf("base_path", "must begin with '/', not end with one, and hold no ':', '*', '?', '#' or spaces: %q", b))
	}
	if c.BaseURL != "" {
		u, err := url.Parse(c.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			errs = append(errs, gateway.FieldErrorf("base_url", "must be an absolute http(s) URL without query: %q", c.BaseURL))
		}
	}
	switch c.Store.Driver {
	case "", "sqlite":
		if c.Store.Path == "" {
			errs = append(errs, gateway.FieldErrorf("store.path", "required (a file name, or :memory:)"))
		}
	case "postgres":
		if u := c.Store.DatabaseURL(); u == "" {
			errs = append(errs, gateway.FieldErrorf("store.url", "required with driver postgres (or set FHIR_DATABASE_URL)"))
		} else if !strings.Contains(u, "=") || strings.Contains(u, "://") {
			if p, err := url.Parse(u); err != nil || (p.Scheme != "postgres" && p.Scheme != "postgresql") {
				errs = append(errs, gateway.FieldErrorf("store.url", "must be a postgres:// URL or host=… dbname=… pairs"))
			}
		}
		switch c.Store.SSLMode {
		case "", "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
		default:
			errs = append(errs, gateway.FieldErrorf("store.sslmode", "must be disable, allow, prefer, require, verify-ca or verify-full, not %q", c.Store.SSLMode))
		}
		if c.Store.CAFile != "" {
			if _, err := os.Stat(c.Store.CAFile); err != nil {
				errs = append(errs, gateway.FieldErrorf("store.ca_file", "%v", err))
			}
		}
	default:
		errs = append(errs, gateway.FieldErrorf("store.driver", "must be sqlite or postgres, not %q", c.Store.Driver))
	}
	if c.Store.MaxConns < 0 {
		errs = append(errs, gateway.FieldErrorf("store.max_conns", "must not be negative"))
	}
	if c.Store.StatementTimeout < 0 {
		errs = append(errs, gateway.FieldErrorf("store.statement_timeout", "must not be negative"))
	}
	if c.Store.ReadCache < 0 {
		errs = append(errs, gateway.FieldErrorf("store.read_cache", "must not be negative"))
	}
	if c.Store.Sync != "full" && c.Store.Sync != "normal" {
		errs = append(errs, gateway.FieldErrorf("store.sync", "must be full or normal, not %q", c.Store.Sync))
	}
	for i, o := range c.CORS.AllowedOrigins {
		if o == "*" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			errs = append(errs, gateway.FieldErrorf("cors.allowed_origins["+strconv.Itoa(i)+"]", "want scheme://host[:port] or *, not %q", o))
		}
	}
	if c.CORS.MaxAge < 0 {
		errs = append(errs, gateway.FieldErrorf("cors.max_age", "must not be negative"))
	}
	if c.DefaultCount < 1 {
		errs = append(errs, gateway.FieldErrorf("default_count", "must be at least 1"))
	}
	if c.MaxCount < c.DefaultCount {
		errs = append(errs, gateway.FieldErrorf("max_count", "must be at least default_count (%d)", c.DefaultCount))
	}
	if c.MaxBody < 0 {
		errs = append(errs, gateway.FieldErrorf("max_body", "must not be negative"))
	}
	if c.PageSnapshots != nil && *c.PageSnapshots < 0 {
		errs = append(errs, gateway.FieldErrorf("page_snapshots", "must not be negative"))
	}
	if c.SnapshotSize < 1 {
		errs = append(errs, gateway.FieldErrorf("snapshot_size", "must be at least 1"))
	}
	if c.SnapshotTTL <= 0 {
		errs = append(errs, gateway.FieldErrorf("snapshot_ttl", "must be positive"))
	}
	switch c.Search.UnknownParams {
	case "", "strict", "lenient":
	default:
		errs = append(errs, gateway.FieldErrorf("search.unknown_params", "must be strict or lenient, not %q", c.Search.UnknownParams))
	}
	errs = append(errs, c.Export.validate()...)
	if boolOr(c.SchemaValidation, true) {
		for i, p := range c.Validation.Packages {
			if _, err := loadPackage(p); err != nil {
				errs = append(errs, gateway.FieldErrorf("validation.packages["+strconv.Itoa(i)+"]", "%v", err))
			}
		}
	}
	return errors.Join(errs...)
}

// validate checks the export settings; each error names its key.
func (e *ExportConfig) validate() []error {
	var errs []error
	if strings.TrimSpace(e.Dir) == "" {
		errs = append(errs, gateway.FieldErrorf("export.dir", "required (a folder for the export files)"))
	}
	if e.Retention <= 0 {
		errs = append(errs, gateway.FieldErrorf("export.retention", "must be positive"))
	}
	if e.MaxLines < 1 {
		errs = append(errs, gateway.FieldErrorf("export.max_lines", "must be at least 1"))
	}
	if e.Concurrency < 1 {
		errs = append(errs, gateway.FieldErrorf("export.concurrency", "must be at least 1"))
	}
	if e.MaxJobs < e.Concurrency {
		errs = append(errs, gateway.FieldErrorf("export.max_jobs", "must be at least export.concurrency (%d)", e.Concurrency))
	}
	return errs
}
