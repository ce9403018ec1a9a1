package deploy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	_ "github.com/omnigate/omnigate/builtin/cache"
	_ "github.com/omnigate/omnigate/builtin/fhir"
	_ "github.com/omnigate/omnigate/builtin/ratelimit"
	"github.com/omnigate/omnigate/builtin/session"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/externaltest"
	"github.com/omnigate/omnigate/internal/redistest"
	_ "github.com/omnigate/omnigate/plugins/external"
	_ "github.com/omnigate/omnigate/plugins/wasm"
	"github.com/omnigate/omnigate/sdk/wasmtest"
)

// exported builds a gateway with one plugin of every type on a real Redis
// and returns the names of every metric it registers.
func exported(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	redis := redistest.Start(t)
	wasm := wasmtest.Build(t, "../examples/require-header")
	ext := externaltest.Build(t, "../examples/external-audit")
	session.Console = io.Discard
	yml := `
log: {access_log: false}
redis: {url: ` + redis.URL() + `, read_timeout: 1s}
fhir: {store: {path: ":memory:"}}
plugins:
  session: {type: session, users: {file: ` + filepath.Join(dir, "users.yaml") + `}}
  ratelimit: {type: ratelimit}
  cache: {type: cache}
  policy: {type: wasm, path: ` + wasm + `, config: {header: X-Tenant}}
  audit: {type: external, path: ` + ext + `, config: {file: ` + filepath.Join(dir, "audit.jsonl") + `}}
routes:
  - fhir: true
    plugins: [session, ratelimit, cache, policy, audit]
`
	cfg, err := gateway.Parse("metrics.yaml", []byte(yml), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv.MetricNames()
}

var metricRE = regexp.MustCompile(`\b((?:omnigate|process|go)_[a-z0-9_]+)\b`)

// missing returns the metric names used in exprs that the gateway does
// not export (a histogram's _bucket, _sum and _count count as its name).
func missing(exprs []string, names []string) []string {
	var out []string
	for _, e := range exprs {
		for _, m := range metricRE.FindAllStringSubmatch(e, -1) {
			n := m[1]
			if slices.Contains(names, n) {
				continue
			}
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
			if base != n && slices.Contains(names, base) {
				continue
			}
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

// dashboardExprs returns every query of the Grafana dashboard.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("grafana/omnigate.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Type, Title string
			Targets     []struct{ Expr string }
		}
		Templating struct{ List []struct{ Query any } }
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok {
			exprs = append(exprs, q)
		}
	}
	return exprs
}

// alertExprs returns every rule expression of the alerting rules.
func alertExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Expr string
				Labels      map[string]string
				Annotations map[string]string
			}
		}
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(false)
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	var exprs []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %+v lacks alert, expr, severity or summary", r)
			}
			exprs = append(exprs, r.Expr)
		}
	}
	return exprs
}

func balanced(s string) bool {
	depth := map[rune]int{}
	pairs := map[rune]rune{')': '(', '}': '{', ']': '['}
	for _, c := range s {
		switch c {
		case '(', '{', '[':
			depth[c]++
		case ')', '}', ']':
			depth[pairs[c]]--
			if depth[pairs[c]] < 0 {
				return false
			}
		}
	}
	return depth['('] == 0 && depth['{'] == 0 && depth['['] == 0
}

// TestDashboardAndAlertsUseExportedMetrics keeps the dashboard and the
// alerting rules from rotting: every metric they query must be one the
// gateway really exports.
func TestDashboardAndAlertsUseExportedMetrics(t *testing.T) {
	names := exported(t)
	for _, want := range []string{"omnigate_http_requests_total", "omnigate_redis_up", "omnigate_ratelimit_decisions_total",
		"omnigate_cache_requests_total", "omnigate_sessions_active", "omnigate_wasm_failures_total", "omnigate_external_up"} {
		if !slices.Contains(names, want) {
			t.Fatalf("the gateway does not export %s; exported: %v", want, names)
		}
	}
	for name, exprs := range map[string][]string{"dashboard": dashboardExprs(t), "alerts": alertExprs(t)} {
		if len(exprs) < 10 {
			t.Errorf("%s: only %d queries", name, len(exprs))
		}
		for _, e := range exprs {
			if !balanced(e) {
				t.Errorf("%s: unbalanced brackets in %q", name, e)
			}
		}
		if m := missing(exprs, names); len(m) > 0 {
			t.Errorf("%s queries metrics the gateway does not export: %v", name, m)
		}
	}
	// The check itself must be able to fail.
	if m := missing([]string{`rate(omnigate_no_such_metric_total[5m])`}, names); len(m) != 1 {
		t.Errorf("missing() did not catch an unknown metric")
	}
}
