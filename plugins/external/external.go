// Package external runs external policy plugins, "type: external" in the
// gateway config: programs that the gateway starts and calls over gRPC
// through hashicorp/go-plugin, for policies that need what the WebAssembly
// sandbox denies (a database, a consent service, a library with cgo).
//
// A plugin is usually written in Go with sdk/external; the contract is
// sdk/external/proto/policy.proto with the handshake in
// sdk/external/contract. At load the plugin's process is started, the
// handshake checked (a plugin of another contract version is refused with
// an error that says so) and the plugin's config given to it once. Every
// request then takes one call (two with a response phase), each with a
// deadline. The plugin's stdout and stderr go to the gateway log tagged
// with its name. A health check runs periodically; a process that exits or
// stops answering is restarted with exponential backoff, and while it is
// down requests get the plugin's failure mode. Close stops the process;
// a config reload starts the new config's process before the old one is
// stopped.
//
// Config:
//
//	plugins:
//	  consent:
//	    type: external
//	    path: ./bin/external-consent
//	    args: [-v]                   # optional
//	    env: {CONSENT_DB: /data/c}   # optional, added to the environment
//	    config: {consents: consents.json}   # given to the plugin as JSON
//	    fail: closed                 # or open
//	    timeout: 50ms
//
// New builds a plugin without a gateway config, for tests and benchmarks.
package external

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/omnigate/omnigate/gateway"
)

// Config is the config of a "type: external" plugin instance.
type Config struct {
	// Path is the plugin's executable. Required. A path with a slash is
	// relative to the gateway's working directory; a bare name is looked
	// up in PATH.
	Path string `yaml:"path"`
	// Args are the executable's arguments. Default none.
	Args []string `yaml:"args"`
	// Env is added to the process's environment. Default none.
	Env map[string]string `yaml:"env"`
	// InheritEnv gives the process the gateway's environment (under Env).
	// Default true; false starts it with Env only.
	InheritEnv *bool `yaml:"inherit_env"`
	// Config is given to the plugin as JSON, once per process start.
	// Default: none (the plugin gets "null").
	Config yaml.Node `yaml:"config"`
	// Fail is what a request gets when the plugin fails (down, deadline,
	// error): "closed" answers 500 (an OperationOutcome on FHIR routes),
	// "open" passes the request on as if the plugin had allowed it.
	// Default "closed".
	Fail string `yaml:"fail"`
	// Timeout is the deadline of one call to the plugin. Default 50ms.
	Timeout time.Duration `yaml:"timeout"`
	// StartTimeout bounds starting the process, the handshake and
	// Configure. Default 10s.
	StartTimeout time.Duration `yaml:"start_timeout"`
	// HealthInterval is how often the process is health-checked. Default
	// 5s; "0s" turns health checks off (an exit is still noticed at once).
	HealthInterval *time.Duration `yaml:"health_interval"`
	// HealthTimeout bounds one health check. Default 1s.
	HealthTimeout time.Duration `yaml:"health_timeout"`
	// HealthFailures is how many health checks in a row may fail before
	// the process is killed and restarted. Default 3.
	HealthFailures int `yaml:"health_failures"`
	// RestartMin and RestartMax bound the exponential backoff (with
	// jitter) between restarts. Defaults 100ms and 30s.
	RestartMin time.Duration `yaml:"restart_min"`
	RestartMax time.Duration `yaml:"restart_max"`
	// MaxRequestBody caps the request body sent to a plugin that reads
	// bodies. Default 1MiB.
	MaxRequestBody gateway.ByteSize `yaml:"max_request_body"`
	// MaxResponseBody caps the response body buffered for a plugin that
	// reads response bodies. Default 4MiB.
	MaxResponseBody gateway.ByteSize `yaml:"max_response_body"`
}

// Defaults of Config and Options.
const (
	DefaultTimeout         = 50 * time.Millisecond
	DefaultStartTimeout    = 10 * time.Second
	DefaultHealthInterval  = 5 * time.Second
	DefaultHealthTimeout   = time.Second
	DefaultHealthFailures  = 3
	DefaultRestartMin      = 100 * time.Millisecond
	DefaultRestartMax      = 30 * time.Second
	DefaultMaxRequestBody  = 1 << 20
	DefaultMaxResponseBody = 4 << 20
)

// DefaultConfig returns a Config with its defaults set.
func DefaultConfig() *Config {
	inherit := true
	health := DefaultHealthInterval
	return &Config{
		InheritEnv:      &inherit,
		Fail:            "closed",
		Timeout:         DefaultTimeout,
		StartTimeout:    DefaultStartTimeout,
		HealthInterval:  &health,
		HealthTimeout:   DefaultHealthTimeout,
		HealthFailures:  DefaultHealthFailures,
		RestartMin:      DefaultRestartMin,
		RestartMax:      DefaultRestartMax,
		MaxRequestBody:  DefaultMaxRequestBody,
		MaxResponseBody: DefaultMaxResponseBody,
	}
}

// Validate checks the config; errors name the key.
func (c *Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, gateway.FieldErrorf("path", "required"))
	}
	if c.Fail != "closed" && c.Fail != "open" {
		errs = append(errs, gateway.FieldErrorf("fail", "must be closed or open, not %q", c.Fail))
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"timeout", c.Timeout}, {"start_timeout", c.StartTimeout}, {"health_timeout", c.HealthTimeout},
		{"restart_min", c.RestartMin}, {"restart_max", c.RestartMax},
	} {
		if d.v <= 0 {
			errs = append(errs, gateway.FieldErrorf(d.key, "must be positive"))
		}
	}
	if c.HealthInterval != nil && *c.HealthInterval < 0 {
		errs = append(errs, gateway.FieldErrorf("health_interval", "must not be negative"))
	}
	if c.HealthFailures < 1 {
		errs = append(errs, gateway.FieldErrorf("health_failures", "must be at least 1"))
	}
	if c.RestartMax < c.RestartMin {
		errs = append(errs, gateway.FieldErrorf("restart_max", "must not be less than restart_min"))
	}
	if c.MaxRequestBody < 0 {
		errs = append(errs, gateway.FieldErrorf("max_request_body", "must not be negative"))
	}
	if c.MaxResponseBody < 0 {
		errs = append(errs, gateway.FieldErrorf("max_response_body", "must not be negative"))
	}
	for _, k := range slices.Sorted(maps.Keys(c.Env)) {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			errs = append(errs, gateway.FieldErrorf("env", "invalid variable name %q", k))
		}
	}
	if _, err := gateway.NodeJSON(&c.Config); err != nil {
		errs = append(errs, gateway.FieldErrorf("config", "%v", err))
	}
	return errors.Join(errs...)
}

func init() {
	gateway.RegisterPlugin("external", DefaultConfig, build)
}

func build(ctx context.Context, cfg *Config, env *gateway.Env) (gateway.Plugin, error) {
	conf, err := gateway.NodeJSON(&cfg.Config)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	health := DefaultHealthInterval
	if cfg.HealthInterval != nil {
		health = *cfg.HealthInterval
		if health == 0 {
			health = -1
		}
	}
	return New(ctx, Options{
		Name:            env.Name,
		Path:            cfg.Path,
		Args:            cfg.Args,
		Env:             cfg.Env,
		NoInheritEnv:    cfg.InheritEnv != nil && !*cfg.InheritEnv,
		Config:          conf,
		FailOpen:        cfg.Fail == "open",
		Timeout:         cfg.Timeout,
		StartTimeout:    cfg.StartTimeout,
		HealthInterval:  health,
		HealthTimeout:   cfg.HealthTimeout,
		HealthFailures:  cfg.HealthFailures,
		RestartMin:      cfg.RestartMin,
		RestartMax:      cfg.RestartMax,
		MaxRequestBody:  int64(cfg.MaxRequestBody),
		MaxResponseBody: int64(cfg.MaxResponseBody),
		Logger:          env.Logger,
		Registerer:      env.Registerer,
	})
}
