// Package scaletest verifies a fleet of OmniGate instances sharing one
// Redis: it starts the instances as child processes on loopback ports with
// one generated config, a Redis (single node, Cluster or Sentinel) and a
// user directory, drives a bounded load of simulated users (physicians,
// nurses, patients) that log in, read, search and write FHIR resources,
// stops and restarts Redis in the middle, and reports:
//
//   - fleet-wide rate limit accuracy: admitted requests per user and window
//     against the limit the responses announce;
//   - sessions made on one instance used on the others, and kept across
//     the Redis outage;
//   - cache invalidation across instances: how long after a write on one
//     instance the others serve the new version;
//   - failover: 5xx responses (there must be none), decisions made from
//     memory, and how long until every instance is back on Redis;
//   - throughput and latency percentiles per instance and over time;
//   - CPU and memory of each instance.
//
// With Store "postgres" the instances serve the embedded FHIR handlers
// themselves on one PostgreSQL database (no origin process), which is
// also stopped and started again under load; every run then reads back
// each write the fleet acknowledged, and 503 with Retry-After is the only
// 5xx allowed while the database is down.
//
// Run returns a Report, which renders as Markdown and as one
// self-contained HTML page with SVG charts. Everything Run starts it
// stops, also when ctx is cancelled or a step fails.
package scaletest

import (
	"errors"
	"fmt"
	"io"
	"time"
)

// Redis modes of Options.Redis.
const (
	RedisSingle   = "single"   // one redis-server, stopped and restarted
	RedisCluster  = "cluster"  // three masters; all stopped and restarted
	RedisSentinel = "sentinel" // primary, replica, three sentinels; the primary is killed
	RedisURL      = "url"      // Options.RedisURL, not started or stopped by the tool
	RedisNone     = "none"     // no Redis: every instance on in-process state
)

// Backends of Options.Backend.
const (
	// The embedded FHIR server, run by one more omnigate process that owns
	// the store (a store file belongs to one process in this release):
	// every instance proxies its FHIR routes to it, with FHIR-aware
	// caching (fhir_errors: true).
	BackendFHIR = "fhir"
	// A small FHIR stand-in served by the tool in the same place, to
	// verify the plugins without the embedded FHIR server.
	BackendUpstream = "upstream"
)

// Stores of Options.Store: where the embedded FHIR server keeps its data.
const (
	// One more omnigate process (the origin) owns a SQLite file; every
	// instance proxies its FHIR routes to it.
	StoreSQLite = "sqlite"
	// Every instance serves the embedded FHIR handlers itself, on one
	// PostgreSQL database: no origin process. The tool starts a private
	// PostgreSQL 15 (internal/pgproc) unless StoreURL names one.
	StorePostgres = "postgres"
)

// Options describe one run. The zero value runs the defaults.
type Options struct {
	// Binary is the omnigate executable started for each instance.
	// Default: the running executable (os.Executable).
	Binary string
	// Env is added to every instance's environment. REDIS_URL,
	// CACHE_REDIS_URL, CACHE_KEY_PREFIX and OMNIGATE_CONFIG are removed
	// from the inherited environment, so the generated config is what runs.
	Env []string
	// Dir holds the generated config, user directory, FHIR store, logs
	// and Redis data. Default: a temporary folder, removed at the end.
	Dir string

	// Instances is the number of gateway instances. Default 3.
	Instances int
	// Redis is single (default), cluster, sentinel, url or none.
	Redis string
	// RedisURL is the Redis used with Redis "url" (never 6379 on a shared
	// machine: give your own).
	RedisURL string
	// Backend is fhir (default) or upstream.
	Backend string
	// Store is sqlite (default) or postgres, with Backend fhir.
	Store string
	// StoreURL is an existing PostgreSQL database for Store postgres
	// (never the machine's own server's configuration: the tool only
	// creates tables in the database the URL names). It is not stopped,
	// so the store restart is skipped. Default: a private server started
	// by the tool.
	StoreURL string
	// StoreStopAt and StoreRestartAt stop the private PostgreSQL in
	// immediate mode (connections cut, as a crash) and start it again,
	// from the start of the load. Defaults: 70% and 80% of Duration. With
	// NoStoreRestart, or with StoreURL, it is left alone.
	StoreStopAt, StoreRestartAt time.Duration
	NoStoreRestart              bool
	// Config is the user's omnigate.yaml to run instead of the generated
	// config: its plugins, routes and settings, with the changes a fleet
	// on loopback needs (the tool's Redis and users, the FHIR routes
	// proxied to the FHIR server, which gets the config's fhir section;
	// see userFleet). It needs a session plugin and a route with
	// fhir: true. Limits come from its rate limiter (read from the
	// responses); Window, Limits and Burst are ignored.
	Config string
	// NoSchemaValidation turns the embedded FHIR server's schema
	// validation of writes off (fhir.validate: false). Default false:
	// validated, as by default. Compiling the R4 schema takes the server
	// 1–2 s at start, and 15–30 s in a build with the race detector.
	NoSchemaValidation bool

	// Physicians, Nurses, Patients are the simulated users per role.
	// Defaults 4, 4, 4.
	Physicians, Nurses, Patients int
	// Duration is how long the load runs. Default 60s.
	Duration time.Duration
	// Requests stops the load after this many requests. Default 0: no
	// bound but Duration.
	Requests int64
	// ThinkTime is each simulated user's pause between requests. Default
	// 0: closed loop.
	ThinkTime time.Duration

	// Window is the rate limit window of every role. Default 5s.
	Window time.Duration
	// Limits are the requests per Window by role. Defaults: physician
	// 3000 (more than the simulated physicians send on a small machine,
	// so that they measure the fleet's capacity), nurse 400, patient 100
	// (reached, so that they test the limiter). The tool's own probe user
	// has a limit it never reaches.
	Limits map[string]int64
	// Burst is the limit per second of every role; 0 (default) turns
	// burst protection off.
	Burst int64

	// Failover stops Redis at StopAt and restarts it at RestartAt (from
	// the start of the load). Defaults: 40% and 60% of Duration. With
	// NoFailover Redis is left alone.
	StopAt, RestartAt time.Duration
	NoFailover        bool
	// Kill stops Redis with SIGKILL (a crash) instead of SIGTERM. Redis
	// runs with its append-only file (fsync every second) either way.
	// Sentinel runs always kill the primary.
	Kill bool

	// ProbeInterval is the pause between cache invalidation probes.
	// Default 500ms.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a probe waits for an instance to serve the
	// new version. Default 30s.
	ProbeTimeout time.Duration

	// Progress shows a progress bar on this writer (nil: none).
	Progress io.Writer
	// Log receives a line per step (nil: none).
	Log io.Writer
	// Seed makes the simulated users' choices repeatable. Default 1.
	Seed int64

	// Command and Version are written into the report as they are.
	Command, Version string

	// outageBound is how stale a read may be during the outage by the
	// fleet's cache config (0: not checked); Run sets it.
	outageBound time.Duration
}

func (o *Options) setDefaults() error {
	if o.Instances == 0 {
		o.Instances = 3
	}
	if o.Instances < 1 || o.Instances > 64 {
		return fmt.Errorf("instances must be between 1 and 64, not %d", o.Instances)
	}
	if o.Redis == "" {
		o.Redis = RedisSingle
	}
	switch o.Redis {
	case RedisSingle, RedisCluster, RedisSentinel, RedisNone:
	case RedisURL:
		if o.RedisURL == "" {
			return errors.New("redis url needs a URL")
		}
		o.NoFailover = true
	default:
		return fmt.Errorf("unknown redis mode %q (single, cluster, sentinel, url, none)", o.Redis)
	}
	if o.Redis == RedisNone {
		o.NoFailover = true
	}
	if o.Backend == "" {
		o.Backend = BackendFHIR
	}
	if o.Backend != BackendFHIR && o.Backend != BackendUpstream {
		return fmt.Errorf("unknown backend %q (fhir, upstream)", o.Backend)
	}
	if o.Store == "" {
		o.Store = StoreSQLite
	}
	switch o.Store {
	case StoreSQLite:
		if o.StoreURL != "" {
			return errors.New("a store URL needs the postgres store")
		}
		o.NoStoreRestart = true
	case StorePostgres:
		if o.Backend != BackendFHIR {
			return errors.New("the postgres store needs the fhir backend")
		}
		if o.Config != "" {
			return errors.New("the postgres store runs the generated config (no -config)")
		}
		if o.StoreURL != "" {
			o.NoStoreRestart = true
		}
	default:
		return fmt.Errorf("unknown store %q (sqlite, postgres)", o.Store)
	}
	if o.Physicians == 0 && o.Nurses == 0 && o.Patients == 0 {
		o.Physicians, o.Nurses, o.Patients = 4, 4, 4
	}
	if o.Physicians < 0 || o.Nurses < 0 || o.Patients < 0 {
		return errors.New("user counts must not be negative")
	}
	if o.Duration == 0 {
		o.Duration = 60 * time.Second
	}
	if o.Duration < time.Second {
		return fmt.Errorf("duration %s is too short (at least 1s)", o.Duration)
	}
	if o.Window == 0 {
		o.Window = 5 * time.Second
	}
	if o.Window < 100*time.Millisecond {
		return fmt.Errorf("window %s is too short (at least 100ms)", o.Window)
	}
	limits := map[string]int64{"physician": 3000, "nurse": 400, "patient": 100}
	for r, l := range o.Limits {
		if _, ok := limits[r]; !ok {
			return fmt.Errorf("limit for unknown role %q (physician, nurse, patient)", r)
		}
		if l <= 0 {
			return fmt.Errorf("limit for %s must be positive", r)
		}
		limits[r] = l
	}
	o.Limits = limits
	if !o.NoFailover {
		if o.StopAt == 0 {
			o.StopAt = o.Duration * 4 / 10
		}
		if o.RestartAt == 0 {
			o.RestartAt = o.Duration * 6 / 10
		}
		if o.StopAt <= 0 || o.RestartAt <= o.StopAt || o.RestartAt >= o.Duration {
			return fmt.Errorf("failover times must satisfy 0 < stop (%s) < restart (%s) < duration (%s)", o.StopAt, o.RestartAt, o.Duration)
		}
	}
	if !o.NoStoreRestart {
		if o.StoreStopAt == 0 {
			o.StoreStopAt = o.Duration * 7 / 10
		}
		if o.StoreRestartAt == 0 {
			o.StoreRestartAt = o.Duration * 8 / 10
		}
		if o.StoreStopAt <= 0 || o.StoreRestartAt <= o.StoreStopAt || o.StoreRestartAt >= o.Duration {
			return fmt.Errorf("store restart times must satisfy 0 < stop (%s) < restart (%s) < duration (%s)", o.StoreStopAt, o.StoreRestartAt, o.Duration)
		}
	}
	if o.ProbeInterval == 0 {
		o.ProbeInterval = 500 * time.Millisecond
	}
	if o.ProbeTimeout == 0 {
		o.ProbeTimeout = 30 * time.Second
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	return nil
}
