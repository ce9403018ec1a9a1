package gateway

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestConfigErrorsGolden decodes every testdata/config/*.yaml and compares
// the errors (or "ok") with the .golden file beside it.
func TestConfigErrorsGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/config/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no config testdata: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got := "ok\n"
			if _, err := Parse(file, data, nil); err != nil {
				got = err.Error() + "\n"
			}
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden (run with -update to create): %v", err)
			}
			if got != string(want) {
				t.Errorf("errors differ from %s\n--- got\n%s--- want\n%s", golden, got, want)
			}
		})
	}
}

func TestConfigErrorsNameFileLineKey(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown top-level key", "listn: :80\nroutes: [{path: /a, upstream: 'http://h'}]\n",
			`f.yaml:1:1: listn: unknown key "listn" (did you mean "listen"?)`},
		{"bad duration", "server:\n  idle_timeout: 3 days\nroutes: [{path: /a, upstream: 'http://h'}]\n",
			`f.yaml:2:17: server.idle_timeout: invalid duration "3 days"`},
		{"route names a missing plugin", "routes:\n  - path: /a\n    upstream: http://h\n    plugins:\n      - ghost\n",
			`f.yaml:5:9: routes[0].plugins[0]: no plugin named "ghost" is defined under plugins`},
		{"bad upstream url", "routes:\n  - path: /a\n    upstream: 'localhost:80'\n",
			`f.yaml:3:5: routes[0].upstream: invalid upstream URL "localhost:80"`},
		{"bad size", "server:\n  max_body: 12 parsecs\nroutes: [{path: /a, upstream: 'http://h'}]\n",
			`f.yaml:2:13: server.max_body: invalid size "12 parsecs"`},
		{"plugin validation points at its key", "plugins:\n  p:\n    type: recorder\n    label: ''\nroutes: [{path: /a, upstream: 'http://h'}]\n",
			`f.yaml:4:5: plugins.p.label: required`},
		{"duplicate key", "listen: ':1'\nlisten: ':2'\nroutes: [{path: /a, upstream: 'http://h'}]\n",
			`f.yaml:2:1: listen: duplicate key`},
		{"body budget under max_body", "server:\n  body_budget: 1MiB\nroutes: [{path: /a, upstream: 'http://h'}]\n",
			`f.yaml:2:3: server.body_budget: 1MiB is less than server.max_body (16MiB)`},
		{"route max_body over the budget", "server:\n  body_budget: 32MiB\nroutes:\n  - path: /a\n    upstream: http://h\n    max_body: 64MiB\n",
			`f.yaml:6:5: routes[0].max_body: 64MiB is more than server.body_budget (32MiB)`},
		{"negative max_connections", "server:\n  max_connections: -1\nroutes: [{path: /a, upstream: 'http://h'}]\n",
			`f.yaml:2:3: server.max_connections: must not be negative`},
		{"negative max_in_flight", "server:\n  max_in_flight: -5\nroutes: [{path: /a, upstream: 'http://h'}]\n",
			`f.yaml:2:3: server.max_in_flight: must not be negative`},
		{"zero max_header_bytes", "server:\n  max_header_bytes: 0\nroutes: [{path: /a, upstream: 'http://h'}]\n",
			`f.yaml:2:3: server.max_header_bytes: must be positive`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tt.yaml), nil)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

// TestConfigSyntaxErrorsPointAtTheLine: yaml.v3 names the line where the
// enclosing block began; the error must name the line that broke it.
func TestConfigSyntaxErrorsPointAtTheLine(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"bad indent in a list item", "listen: ':1'\nroutes:\n  - path: /a\n    upstream: http://h\n    plugins: []\n   bad: indent\n",
			`f.yaml:6:4: did not find expected '-' indicator`},
		{"bad indent in a mapping", "listen: ':1'\nlog:\n  level: info\n format: json\nroutes: [{path: /a, upstream: 'http://h'}]\n",
			`f.yaml:4:2: did not find expected key`},
		{"over-indented key", "routes:\n  - path: /a\n    upstream: http://a\n  - path: /b\n     upstream: http://b\n",
			`f.yaml:5:6: mapping values are not allowed in this context`},
		{"tab", "listen: ':1'\nroutes:\n\t- path: /a\n",
			`f.yaml:3:`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tt.yaml), nil)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error = %q\nwant it to begin with %q", err, tt.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := Parse("f.yaml", []byte("routes:\n  - fhir: true\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", cfg.Listen, ":8080"},
		{"admin", cfg.Admin.Listen, "127.0.0.1:9090"},
		{"fhir route path", cfg.Routes[0].Path, "/fhir/R4/*path"},
		{"route name", cfg.Routes[0].Name, "/fhir/R4/*path"},
		{"route methods", len(cfg.Routes[0].Methods), len(validMethods)},
		{"route max body", cfg.Routes[0].MaxBody, ByteSize(16 << 20)},
		{"route is fhir", cfg.Routes[0].IsFHIR(), true},
		{"redis off", cfg.Redis.Enabled(), false},
		{"redis prefix", cfg.Redis.KeyPrefix, "omnigate:"},
		{"redis dial timeout", cfg.Redis.DialTimeout, 200 * time.Millisecond},
		{"shutdown timeout", cfg.Server.ShutdownTimeout, 30 * time.Second},
		{"read header timeout", cfg.Server.ReadHeaderTimeout, 10 * time.Second},
		{"read timeout", cfg.Server.ReadTimeout, 60 * time.Second},
		{"max header bytes", cfg.Server.MaxHeaderBytes, ByteSize(64 << 10)},
		{"body budget", cfg.Server.BodyBudget, ByteSize(256 << 20)},
		{"max connections", cfg.Server.MaxConnections, 4096},
		{"max in flight", cfg.Server.MaxInFlight, 1024},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestConfigEnvOverrides(t *testing.T) {
	yaml := `
listen: ":8080"
admin: "127.0.0.1:9090"
redis:
  sentinel: {master_name: mymaster, addrs: ["127.0.0.1:26379"]}
  key_prefix: "file:"
routes: [{path: /a, upstream: "http://h"}]
`
	env := map[string]string{
		"REDIS_URL":            "redis://:pw@10.0.0.7:6380/1",
		"CACHE_KEY_PREFIX":     "prod-cache:",
		"OMNIGATE_LISTEN":      "127.0.0.1:18080",
		"OMNIGATE_ADMIN":       "127.0.0.1:19090",
		"OMNIGATE_ADMIN_TOKEN": "t0ken-of-thirty-two-bytes-or-more",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := Parse("f.yaml", []byte(yaml), lookup)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Redis.URL != env["REDIS_URL"] || cfg.Redis.Sentinel != nil {
		t.Errorf("REDIS_URL: url=%q sentinel=%v; want the URL to replace the sentinel setting", cfg.Redis.URL, cfg.Redis.Sentinel)
	}
	if cfg.Redis.KeyPrefix != "prod-cache:" {
		t.Errorf("CACHE_KEY_PREFIX: key_prefix = %q", cfg.Redis.KeyPrefix)
	}
	if cfg.Listen != "127.0.0.1:18080" || cfg.Admin.Listen != "127.0.0.1:19090" || cfg.Admin.Token != "t0ken-of-thirty-two-bytes-or-more" {
		t.Errorf("listen/admin overrides: %q %q %q", cfg.Listen, cfg.Admin.Listen, cfg.Admin.Token)
	}

	// An invalid value from the environment is reported as such.
	env = map[string]string{"REDIS_URL": "http://nope"}
	if _, err := Parse("f.yaml", []byte(yaml), lookup); err == nil || !strings.Contains(err.Error(), "redis.url: scheme must be redis") {
		t.Errorf("bad REDIS_URL: err = %v", err)
	}
	// Empty variables do not override.
	env = map[string]string{"OMNIGATE_LISTEN": ""}
	if cfg, err := Parse("f.yaml", []byte(yaml), lookup); err != nil || cfg.Listen != ":8080" {
		t.Errorf("empty OMNIGATE_LISTEN: listen = %q, err %v", cfg.Listen, err)
	}
}

func TestByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want ByteSize
		ok   bool
	}{
		{"512", 512, true}, {"64KiB", 64 << 10, true}, {"10MB", 10_000_000, true},
		{"1 GiB", 1 << 30, true}, {"2M", 2 << 20, true}, {"-1", 0, false}, {"1.5MiB", 0, false},
		{"MiB", 0, false}, {"99999999999999GiB", 0, false},
	}
	for _, tt := range tests {
		var b ByteSize
		err := b.UnmarshalText([]byte(tt.in))
		if (err == nil) != tt.ok || tt.ok && b != tt.want {
			t.Errorf("ByteSize(%q) = %d, %v; want %d ok=%v", tt.in, b, err, tt.want, tt.ok)
		}
	}
	if s := ByteSize(16 << 20).String(); s != "16MiB" {
		t.Errorf("String() = %q", s)
	}
}
