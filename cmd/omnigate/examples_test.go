package main

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/omnigate/omnigate/builtin/ratelimit"
	"github.com/omnigate/omnigate/builtin/session"
	"github.com/omnigate/omnigate/gateway"
)

// rawConfig is what the safety checks read of a config or snippet.
type rawConfig struct {
	Server struct {
		TrustedProxies []string `yaml:"trusted_proxies"`
	} `yaml:"server"`
	Plugins map[string]struct {
		Type           string   `yaml:"type"`
		Key            string   `yaml:"key"`
		Anonymous      bool     `yaml:"anonymous"`
		TrustedProxies []string `yaml:"trusted_proxies"`
	} `yaml:"plugins"`
	Routes []struct {
		Name     string   `yaml:"name"`
		Path     string   `yaml:"path"`
		FHIR     bool     `yaml:"fhir"`
		Upstream any      `yaml:"upstream"`
		Plugins  []string `yaml:"plugins"`
	} `yaml:"routes"`
}

// publicFHIR reports whether a route serves only what a FHIR server
// publishes to anyone: its capability statement and SMART configuration.
func publicFHIR(path string) bool {
	return strings.HasSuffix(path, "/metadata") || strings.HasSuffix(path, "/.well-known/smart-configuration")
}

// authenticating are the plugin types that establish who is calling.
var authenticating = []string{"session"}

// TestExampleConfigsAreSafeToCopy: every example config, the config
// snippets of the plugin examples and the embedded default can be copied
// as they are: every route that reaches data (FHIR routes other than the
// capability statement and SMART configuration, every upstream) has an
// authenticating plugin in its chain (snippets may name the "session" of
// the config they go into); the full configs count every request per
// client IP before anything else; none trusts X-Forwarded-For from
// loopback.
func TestExampleConfigsAreSafeToCopy(t *testing.T) {
	files, _ := filepath.Glob("../../examples/configs/*.yaml")
	snippets, _ := filepath.Glob("../../examples/*/omnigate.yaml")
	if len(files) < 3 || len(snippets) < 5 {
		t.Fatalf("example configs: %v %v", files, snippets)
	}
	type source struct {
		name string
		data []byte
		full bool // a whole config, not a snippet
	}
	var all []source
	all = append(all, source{"embedded default", defaultConfig, true})
	for _, f := range append(files, snippets...) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, source{f, data, !strings.Contains(string(data), "Config snippet")})
	}
	for _, src := range all {
		t.Run(filepath.Base(filepath.Dir(src.name))+"/"+filepath.Base(src.name), func(t *testing.T) {
			var raw rawConfig
			if err := yaml.Unmarshal(src.data, &raw); err != nil {
				t.Fatal(err)
			}
			if src.full {
				checkFullConfig(t, src.name, src.data)
			}
			for _, p := range raw.Plugins {
				for _, tp := range append(slices.Clone(p.TrustedProxies), raw.Server.TrustedProxies...) {
					if pr, err := gateway.ParsePrefix(tp); err == nil && (pr.Contains(netip.MustParseAddr("127.0.0.1")) || pr.Contains(netip.IPv6Loopback())) {
						t.Errorf("trusted_proxies %s: any local process could pick its own client address", tp)
					}
				}
			}
			for _, r := range raw.Routes {
				if r.Upstream == nil && (!r.FHIR || publicFHIR(r.Path)) {
					continue
				}
				ok := slices.ContainsFunc(r.Plugins, func(name string) bool {
					p, defined := raw.Plugins[name]
					if !defined {
						return !src.full && name == "session" // the config's own session
					}
					return slices.Contains(authenticating, p.Type) && !p.Anonymous
				})
				if !ok {
					t.Errorf("route %q (%s) reaches data without an authenticating plugin: %v", r.Name, r.Path, r.Plugins)
				}
			}
		})
	}
}

// checkFullConfig loads a whole config as the gateway does and checks its
// chains by the decoded plugin configs.
func checkFullConfig(t *testing.T, name string, data []byte) {
	t.Helper()
	cfg, err := gateway.Parse(name, data, nil)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	byName := map[string]any{}
	for _, p := range cfg.Plugins {
		byName[p.Name] = p.Config
	}
	for _, r := range cfg.Routes {
		if len(r.Plugins) == 0 {
			t.Errorf("route %q has no plugin", r.Name)
			continue
		}
		if rl, ok := byName[r.Plugins[0]].(*ratelimit.Config); !ok || rl.Key != ratelimit.KeyIP {
			t.Errorf("route %q: the first plugin is %q, not a ratelimit with key: ip (unauthenticated floods would be unlimited)", r.Name, r.Plugins[0])
		}
		if r.Upstream == nil && (!r.FHIR || publicFHIR(r.Path)) {
			continue
		}
		authenticated := false
		for _, p := range r.Plugins {
			if s, ok := byName[p].(*session.Config); ok && !s.Anonymous {
				authenticated = true
			}
		}
		if !authenticated {
			t.Errorf("route %q (%s) reaches data without a session", r.Name, r.Path)
		}
	}
}

// TestDefaultConfigLimitsUnauthenticatedFloods: the embedded default
// counts every request per client IP before the session plugin, so a
// client sending requests without a session (each answered 401) is
// answered 429 once over the limit; another client is not.
func TestDefaultConfigLimitsUnauthenticatedFloods(t *testing.T) {
	t.Chdir(t.TempDir()) // the default keeps its data in ./data
	session.Console = io.Discard
	cfg, err := loadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	get := func(addr string) int {
		req := httptest.NewRequest("GET", "http://localhost:8080/fhir/R4/Patient", nil)
		req.RemoteAddr = addr
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		return rec.Code
	}
	// The limit is 3000 per 15 minutes (100 per second): a 429 comes
	// after at most 3000 answers, however slowly they are sent.
	unauthorized := 0
	for {
		code := get("[2001:db8:7::1]:4000")
		if code == 429 {
			break
		}
		if code != 401 {
			t.Fatalf("request %d without a session: %d", unauthorized+1, code)
		}
		if unauthorized++; unauthorized > 3000 {
			t.Fatalf("3000 requests without a session and no 429")
		}
	}
	t.Logf("unauthenticated requests answered before the first 429: %d", unauthorized)
	// The same /64 is the same client; another one is not limited.
	if code := get("[2001:db8:7::2]:4000"); code != 429 {
		t.Errorf("another address of the /64: %d", code)
	}
	if code := get("192.0.2.9:4000"); code != 401 {
		t.Errorf("another client: %d", code)
	}
}
