package audit

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

// Config configures the audit plugin (type: audit). Every field has a
// default.
type Config struct {
	// SpoolDir is where records wait, in append-only segment files, until
	// every sink has them; with a cursor file per sink. Default
	// "./data/audit". Created (0700) if missing. Two audit plugins of one
	// config may share a folder only with the same settings.
	SpoolDir string `yaml:"spool_dir"`
	// FlushInterval is how often the records of answered requests are
	// written and fsynced to the spool; a crash of the process or the
	// machine loses at most the records of this last interval. Default 1s.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// MaxSpoolBytes bounds the spool: the segments on disk plus the
	// records waiting for the next flush. Default 1GiB. When it is full
	// (sinks failing for long), OnSinkFailure decides.
	MaxSpoolBytes gateway.ByteSize `yaml:"max_spool_bytes"`
	// SegmentBytes is the size at which a segment file is closed and a new
	// one begun; a segment is deleted once every sink has its records.
	// Default 16MiB; at most MaxSpoolBytes.
	SegmentBytes gateway.ByteSize `yaml:"segment_bytes"`
	// OnSinkFailure is what happens to requests while the spool is full:
	// "block" (default) answers requests that would reach PHI with 503 and
	// Retry-After rather than serve them unaudited; "drop" serves them and
	// counts the records it could not keep.
	OnSinkFailure string `yaml:"on_sink_failure"`
	// Sinks receive the records. Default: one fhir sink (AuditEvents in the
	// embedded FHIR server).
	Sinks []SinkConfig `yaml:"sinks"`
	// BatchSize is the most records written to a sink at once. Default 100.
	BatchSize int `yaml:"batch_size"`
	// RetryMin and RetryMax bound the exponential backoff (with jitter)
	// between attempts at a failing sink. Defaults 1s and 1m.
	RetryMin time.Duration `yaml:"retry_min"`
	RetryMax time.Duration `yaml:"retry_max"`
	// MaxPatients is the most patients one record names. Default 100;
	// a record that had more says so (patients_incomplete).
	MaxPatients int `yaml:"max_patients"`
	// InspectBytes is the most bytes of a request body (a resource being
	// written) and of a response body (a resource read, a search result)
	// that are read to find the patients concerned; beyond it the record
	// says patients_incomplete. Batch and transaction Bundles are always
	// read whole (the route's max_body bounds them). Default 1MiB; 0 reads
	// no bodies.
	InspectBytes gateway.ByteSize `yaml:"inspect_bytes"`
	// Site names this gateway in AuditEvents (source.site, the server
	// agent). Default: the host name.
	Site string `yaml:"site"`
	// ShutdownTimeout is how long the last records get to reach the sinks
	// when the plugin closes (shutdown, or a reload that removes it); what
	// is left stays in the spool and is shipped at the next start. Default
	// 10s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// SinkConfig is one destination of the records.
type SinkConfig struct {
	// Type is "fhir" (AuditEvent resources written into the embedded FHIR
	// server, which needs a route with fhir: true) or "file" (one JSON
	// line per record).
	Type string `yaml:"type"`
	// Name identifies the sink in metrics, the stats and its cursor file.
	// Default: the type. Unique; letters, digits, '-' and '_'.
	Name string `yaml:"name"`
	// Path is the file sink's file (appended to, created 0600), or "-" for
	// standard output. Required for file sinks.
	Path string `yaml:"path"`
}

// Values of OnSinkFailure.
const (
	Block = "block"
	Drop  = "drop"
)

// Defaults returns the config with every default set.
func Defaults() *Config {
	return &Config{
		SpoolDir:        "./data/audit",
		FlushInterval:   time.Second,
		MaxSpoolBytes:   1 << 30,
		SegmentBytes:    16 << 20,
		OnSinkFailure:   Block,
		BatchSize:       100,
		RetryMin:        time.Second,
		RetryMax:        time.Minute,
		MaxPatients:     100,
		InspectBytes:    1 << 20,
		ShutdownTimeout: 10 * time.Second,
	}
}

var sinkName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Validate checks the config and fills in the defaults that depend on
// other keys (sinks, sink names, site); the error joins one FieldError per
// bad key.
func (c *Config) Validate() error {
	var errs []error
	fail := func(key, format string, args ...any) { errs = append(errs, gateway.FieldErrorf(key, format, args...)) }
	if c.SpoolDir == "" {
		fail("spool_dir", "required")
	}
	if c.FlushInterval < time.Millisecond {
		fail("flush_interval", "must be at least 1ms")
	}
	if c.MaxSpoolBytes <= 0 {
		fail("max_spool_bytes", "must be positive")
	}
	if c.SegmentBytes <= 0 || c.SegmentBytes > c.MaxSpoolBytes {
		fail("segment_bytes", "must be positive and at most max_spool_bytes")
	}
	if c.OnSinkFailure != Block && c.OnSinkFailure != Drop {
		fail("on_sink_failure", "must be block or drop")
	}
	if c.BatchSize < 1 {
		fail("batch_size", "must be at least 1")
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		fail("retry_min", "retry_min must be positive and retry_max at least retry_min")
	}
	if c.MaxPatients < 1 {
		fail("max_patients", "must be at least 1")
	}
	if c.InspectBytes < 0 {
		fail("inspect_bytes", "must not be negative")
	}
	if c.ShutdownTimeout < 0 {
		fail("shutdown_timeout", "must not be negative")
	}
	if len(c.Sinks) == 0 {
		c.Sinks = []SinkConfig{{Type: "fhir"}}
	}
	seen := map[string]bool{}
	for i := range c.Sinks {
		s := &c.Sinks[i]
		key := fmt.Sprintf("sinks[%d]", i)
		if _, ok := sinkTypes[s.Type]; !ok {
			fail(key+".type", "unknown sink type %q (known: %s)", s.Type, knownSinkTypes())
			continue
		}
		if s.Name == "" {
			s.Name = s.Type
		}
		if !sinkName.MatchString(s.Name) {
			fail(key+".name", "must be 1 to 64 letters, digits, '-' or '_'")
		} else if seen[s.Name] {
			fail(key+".name", "sink %q is named twice (set name on one of them)", s.Name)
		}
		seen[s.Name] = true
		switch {
		case s.Type == "file" && s.Path == "":
			fail(key+".path", "required: a file, or - for standard output")
		case s.Type == "fhir" && s.Path != "":
			fail(key+".path", "fhir sinks have no path: they write into the embedded FHIR server")
		}
	}
	if c.Site == "" {
		c.Site, _ = os.Hostname()
		if c.Site == "" {
			c.Site = "omnigate"
		}
	}
	return errors.Join(errs...)
}

func knownSinkTypes() string {
	var names []string
	for n := range sinkTypes {
		names = append(names, n)
	}
	slices.Sort(names)
	s := ""
	for i, n := range names {
		if i > 0 {
			s += ", "
		}
		s += n
	}
	return s
}
