package cache

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

// Config configures the response cache plugin (type: cache). Every field
// has a default.
type Config struct {
	// TTL is the lifetime of cached FHIR resources and searches. Default
	// 10m.
	TTL time.Duration `yaml:"ttl"`
	// PatientTTL is the lifetime of Patient resources and of data in a
	// patient's compartment (searches by patient, compartment searches).
	// Default 15m.
	PatientTTL time.Duration `yaml:"patient_ttl"`
	// TypeTTLs override the lifetime per FHIR resource type.
	TypeTTLs map[string]time.Duration `yaml:"type_ttls"`
	// RouteTTLs override the lifetime per route name (analytics routes:
	// 30m in the embedded config). They win over type and patient TTLs.
	RouteTTLs map[string]time.Duration `yaml:"route_ttls"`
	// Partition is how entries are shared: user (default: an entry is
	// served only to the user it was made for), role (to users with the
	// same role) or public (to everyone; only for data that is the same
	// for every caller). Requests without an identity but with
	// credentials (Authorization, Cookie) always bypass the cache.
	Partition string `yaml:"partition"`
	// RoutePartitions override Partition per route name.
	RoutePartitions map[string]string `yaml:"route_partitions"`
	// MaxBody is the largest body stored. Default 1MiB.
	MaxBody gateway.ByteSize `yaml:"max_body"`
	// Cache404 also caches 404 answers. Default false.
	Cache404 bool `yaml:"cache_404"`
	// Vary adds request headers to the key. Accept (with _format) is
	// always part of it. A response whose Vary names a header not here
	// is not stored.
	Vary []string `yaml:"vary"`
	// L1 is an in-process cache in front of Redis.
	L1 L1Config `yaml:"l1"`
	// StaleIfError serves an entry up to this long after it expired when
	// the handler fails (5xx or no answer), with Age and a Warning header.
	// Default 0: off.
	StaleIfError time.Duration `yaml:"stale_if_error"`
	// MaxMemory bounds the in-process store used without Redis or while
	// it is down. Default 64MiB.
	MaxMemory gateway.ByteSize `yaml:"max_memory"`
	// OnRedisDown is memory (default: cache in process), or bypass (no
	// caching until Redis returns).
	OnRedisDown string `yaml:"on_redis_down"`
	// OutageMaxAge is the oldest an entry may be to be served from memory
	// while Redis is configured but down (on_redis_down: memory); an older
	// one is fetched again. During an outage no instance hears of another's
	// writes, so this bounds how long an instance serves a response after
	// a write through another one; lower means fresher reads and more calls
	// to the handler while Redis is down. Default 5s; must be positive.
	OutageMaxAge time.Duration `yaml:"outage_max_age"`
	// Warm fills the cache when the gateway starts and on demand (POST
	// /admin/cache/warm).
	Warm WarmConfig `yaml:"warm"`
}

// WarmConfig replays GET requests through the gateway to fill the cache.
// Each request is made as the identity it names, so its response is
// stored in that identity's partition only, and it is served to nobody.
type WarmConfig struct {
	// OnStart warms when the config is loaded (at start and after a
	// reload). Default false.
	OnStart bool `yaml:"on_start"`
	// Requests to replay.
	Requests []WarmRequest `yaml:"requests"`
	// HotFile records the most requested entries when the plugin closes
	// (shutdown, reload) and replays them when it starts. Default "":
	// none. The file holds paths, queries and user ids: it is written
	// readable by its owner only.
	HotFile string `yaml:"hot_file"`
	// HotKeys is how many entries HotFile keeps. Default 100.
	HotKeys int `yaml:"hot_keys"`
	// Concurrency is how many requests run at once. Default 4.
	Concurrency int `yaml:"concurrency"`
	// Budget bounds one warming run; what is left is skipped. Default 30s.
	Budget time.Duration `yaml:"budget"`
}

// WarmRequest is one request to replay.
type WarmRequest struct {
	// Path with its query, e.g. /fhir/R4/Patient?_count=50. Required.
	Path string `yaml:"path" json:"path"`
	// Accept, default application/fhir+json.
	Accept string `yaml:"accept" json:"accept,omitempty"`
	// As is the identity to make it as. Default none: the anonymous (or
	// public) partition.
	As *WarmIdentity `yaml:"as" json:"as,omitempty"`
}

// WarmIdentity is who a warming request is made as.
type WarmIdentity struct {
	User    string   `yaml:"user" json:"user"`
	Role    string   `yaml:"role" json:"role,omitempty"`
	Patient string   `yaml:"patient" json:"patient,omitempty"`
	Scopes  []string `yaml:"scopes" json:"scopes,omitempty"`
}

// L1Config is the in-process cache in front of Redis.
type L1Config struct {
	// Enabled turns it on. Default false.
	Enabled bool `yaml:"enabled"`
	// MaxBytes bounds it (least recently used entries go first). Default
	// 64MiB.
	MaxBytes gateway.ByteSize `yaml:"max_bytes"`
	// TTL is the longest an entry is served from L1 without Redis; it
	// bounds staleness should an invalidation broadcast be lost. Default
	// 5s.
	TTL time.Duration `yaml:"ttl"`
}

// Partitions.
const (
	PartitionUser   = "user"
	PartitionRole   = "role"
	PartitionPublic = "public"
)

// Defaults returns the config with every default set.
func Defaults() *Config {
	return &Config{
		TTL:          10 * time.Minute,
		PatientTTL:   15 * time.Minute,
		Partition:    PartitionUser,
		MaxBody:      1 << 20,
		L1:           L1Config{MaxBytes: 64 << 20, TTL: 5 * time.Second},
		MaxMemory:    64 << 20,
		OnRedisDown:  "memory",
		OutageMaxAge: 5 * time.Second,
		Warm:         WarmConfig{HotKeys: 100, Concurrency: 4, Budget: 30 * time.Second},
	}
}

// Validate checks the config; the error joins one FieldError per bad key.
// It canonicalizes the names in Vary.
func (c *Config) Validate() error {
	var errs []error
	fail := func(key, format string, args ...any) { errs = append(errs, gateway.FieldErrorf(key, format, args...)) }
	if c.TTL <= 0 {
		fail("ttl", "must be positive")
	}
	if c.PatientTTL <= 0 {
		fail("patient_ttl", "must be positive")
	}
	for k, v := range c.TypeTTLs {
		if v <= 0 {
			fail("type_ttls."+k, "must be positive")
		}
	}
	for k, v := range c.RouteTTLs {
		if v <= 0 {
			fail("route_ttls."+k, "must be positive")
		}
	}
	parts := []string{PartitionUser, PartitionRole, PartitionPublic}
	if !slices.Contains(parts, c.Partition) {
		fail("partition", "must be user, role or public")
	}
	for k, v := range c.RoutePartitions {
		if !slices.Contains(parts, v) {
			fail("route_partitions."+k, "must be user, role or public")
		}
	}
	if c.MaxBody <= 0 {
		fail("max_body", "must be positive")
	}
	for i, h := range c.Vary {
		switch http.CanonicalHeaderKey(h) {
		case "Authorization", "Cookie":
			fail(fmt.Sprintf("vary[%d]", i), "credentials are never part of a key: use partition")
		case "":
			fail(fmt.Sprintf("vary[%d]", i), "empty header name")
		}
		c.Vary[i] = http.CanonicalHeaderKey(h)
	}
	if c.L1.Enabled && (c.L1.MaxBytes <= 0 || c.L1.TTL <= 0) {
		fail("l1", "max_bytes and ttl must be positive")
	}
	if c.StaleIfError < 0 {
		fail("stale_if_error", "must not be negative")
	}
	if c.MaxMemory <= 0 {
		fail("max_memory", "must be positive")
	}
	if c.OnRedisDown != "memory" && c.OnRedisDown != "bypass" {
		fail("on_redis_down", "must be memory or bypass")
	}
	if c.OutageMaxAge <= 0 {
		fail("outage_max_age", "must be positive (on_redis_down: bypass caches nothing while Redis is down)")
	}
	if c.Warm.Concurrency < 1 || c.Warm.Budget <= 0 || c.Warm.HotKeys < 0 {
		fail("warm", "concurrency and budget must be positive, hot_keys not negative")
	}
	for i, r := range c.Warm.Requests {
		if !strings.HasPrefix(r.Path, "/") {
			fail(fmt.Sprintf("warm.requests[%d].path", i), "must be a path beginning with /")
		}
		if r.As != nil && r.As.User == "" {
			fail(fmt.Sprintf("warm.requests[%d].as.user", i), "required")
		}
	}
	return errors.Join(errs...)
}

func (c *Config) partition(route string) string {
	if p, ok := c.RoutePartitions[route]; ok {
		return p
	}
	return c.Partition
}
