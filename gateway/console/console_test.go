package console

import (
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestPublic(t *testing.T) {
	for path, want := range map[string]bool{
		"/ui": true, "/ui/": true, "/ui/auth": true, "/ui/app.js": true, "/ui/app.css": true, "/ui/index.html": true,
		"/ui/favicon.svg": true, "/ui/api/overview": false, "/ui/api/plugins": false, "/ui/api/": false, "/ui/nope.js": false,
		"/ui/../ping": false, "/ui//app.js": false, "/ui/./app.js": false, "/uix/app.js": false, "/ping": false, "/ui/assets": false,
		"/admin/metrics/series": false, "/": false, "": false,
	} {
		if got := Public(path); got != want {
			t.Errorf("Public(%q) = %v, want %v", path, got, want)
		}
	}
}

// The page loads nothing from another origin: no URL with a scheme or a
// protocol-relative one in a src, href, url() or import, no inline script
// or handler (the CSP would refuse them), and every local file it names
// exists.
func TestAssetsAreSelfContained(t *testing.T) {
	ref := regexp.MustCompile(`(?i)(?:src|href)\s*=\s*"([^"]*)"|url\(\s*['"]?([^'")]*)|\bimport\s*\(?\s*['"]([^'"]+)`)
	files := 0
	fs.WalkDir(static, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		b, _ := fs.ReadFile(static, name)
		text := string(b)
		for _, m := range ref.FindAllStringSubmatch(text, -1) {
			u := m[1] + m[2] + m[3]
			if u == "" || strings.HasPrefix(u, "#") || strings.HasPrefix(u, "data:") {
				continue
			}
			if strings.Contains(u, "//") || strings.Contains(u, ":") {
				t.Errorf("%s refers to %q, outside the console", name, u)
				continue
			}
			if _, err := fs.Stat(static, u); err != nil {
				t.Errorf("%s refers to %q, which is not embedded", name, u)
			}
		}
		if strings.HasSuffix(name, ".html") {
			if regexp.MustCompile(`<script>|<script [^>]*>[^<]`).MatchString(text) || regexp.MustCompile(`\son[a-z]+=`).MatchString(text) ||
				strings.Contains(text, "style=") {
				t.Errorf("%s has inline script, handlers or styles", name)
			}
		}
		return nil
	})
	if files < 4 {
		t.Errorf("%d files embedded", files)
	}
}

func newTestConsole(t *testing.T, reg prometheus.Gatherer) *Console {
	t.Helper()
	c, err := New(Options{Gatherer: reg, TokenRequired: func() bool { return true },
		Overview: func(*http.Request) Overview { return Overview{Version: "v9", Routes: []Route{{Name: "r"}}} }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConsoleServes(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("New without options: no error")
	}
	c := newTestConsole(t, prometheus.NewRegistry())
	for path, ctype := range map[string]string{"/ui/": "text/html", "/ui/app.js": "javascript", "/ui/app.css": "text/css",
		"/ui/favicon.svg": "image/svg+xml", "/ui/api/overview": "application/json", "/ui/auth": "application/json"} {
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 || !strings.Contains(rec.Header().Get("Content-Type"), ctype) {
			t.Errorf("GET %s: %d %q", path, rec.Code, rec.Header().Get("Content-Type"))
		}
		if rec.Header().Get("X-Frame-Options") != "DENY" || rec.Header().Get("X-Content-Type-Options") != "nosniff" ||
			!strings.Contains(rec.Header().Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Errorf("GET %s: headers %v", path, rec.Header())
		}
	}
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest("GET", "/ui/api/overview", nil))
	if !strings.Contains(rec.Body.String(), `"version":"v9"`) || rec.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("overview: %s %v", rec.Body, rec.Header())
	}
	for _, m := range []string{"POST", "DELETE", "PUT"} {
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest(m, "/ui/", nil))
		if rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("%s /ui/: %d", m, rec.Code)
		}
	}
}

// GET /ui/api/plugins sums the plugin-labelled families by plugin.
func TestPluginMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	inst := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "omnigate_wasm_instances", Help: "h"}, []string{"plugin"})
	fail := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "omnigate_wasm_failures_total", Help: "h"}, []string{"plugin", "phase", "kind"})
	rst := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "omnigate_external_restarts_total", Help: "h"}, []string{"plugin", "result"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "omnigate_plugin_duration_seconds", Help: "h"}, []string{"plugin"})
	other := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "omnigate_cache_requests_total", Help: "h"}, []string{"plugin"})
	reg.MustRegister(inst, fail, rst, dur, other)
	inst.WithLabelValues("policy").Set(4)
	fail.WithLabelValues("policy", "request", "trap").Add(2)
	fail.WithLabelValues("policy", "response", "trap").Add(1)
	fail.WithLabelValues("policy", "request", "deadline").Add(5)
	rst.WithLabelValues("ext", "success").Add(3)
	dur.WithLabelValues("policy").Observe(0.5)
	dur.WithLabelValues("policy").Observe(1.5)
	other.WithLabelValues("cache").Add(1)
	c := newTestConsole(t, reg)
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest("GET", "/ui/api/plugins", nil))
	var out struct{ Plugins map[string]map[string]float64 }
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	p := out.Plugins["policy"]
	if p["wasm_instances"] != 4 || p["wasm_failures_total"] != 8 || p["wasm_failures_total:trap"] != 3 ||
		p["wasm_failures_total:deadline"] != 5 || p["plugin_duration_seconds_count"] != 2 || p["plugin_duration_seconds_sum"] != 2 {
		t.Errorf("policy: %v", p)
	}
	if e := out.Plugins["ext"]; e["external_restarts_total"] != 3 || e["external_restarts_total:success"] != 3 {
		t.Errorf("ext: %v", e)
	}
	if _, ok := out.Plugins["cache"]; ok {
		t.Error("a family that is not a plugin host's is listed")
	}
}

// FuzzPublic: a path the admin listener serves without the token is the
// page, /ui/auth, or one of the embedded files, named exactly; never a
// data endpoint.
func FuzzPublic(f *testing.F) {
	for _, s := range []string{"/ui", "/ui/", "/ui/auth", "/ui/app.js", "/ui/api/overview", "/ui/../ping", "/ui//app.js",
		"/ui/app.js/", "/ui/%2e%2e/ping", "/ui/./app.css", "/ui/assets/app.js", "/admin/fhir/stats", "/ui/\x00"} {
		f.Add(s)
	}
	files := map[string]bool{}
	fs.WalkDir(static, ".", func(name string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files[Prefix+name] = true
		}
		return nil
	})
	f.Fuzz(func(t *testing.T, p string) {
		if !Public(p) {
			return
		}
		if p != "/ui" && p != Prefix && p != Prefix+"auth" && !files[p] {
			t.Errorf("Public(%q) for a path that is not the console's page", p)
		}
		if strings.HasPrefix(p, Prefix+"api/") {
			t.Errorf("Public(%q) for a data endpoint", p)
		}
	})
}
