// Package console is the operator's web console of the admin listener,
// served at /ui/: a page that shows the routes and their plugin chains,
// the health of every component, live charts of the traffic (from the
// Sampler's ring of samples of the gateway's own metrics), the rate
// limiter's blocks, sessions, the cache, plugins and the FHIR store, and
// acts on them through the admin endpoints the plugins mount.
//
// The page, its script and its style sheet are embedded in the binary and
// load nothing from the network. They hold no data, so the admin listener
// serves them without the admin token (see Public); everything the page
// shows comes from endpoints that require it: the page asks for the token
// once, keeps it in the tab's sessionStorage and sends it as a bearer
// token.
//
// The package does not import the gateway: the gateway hands it what it
// shows through Options.
package console

import (
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

//go:embed assets
var assets embed.FS

// static is the assets folder, served at /ui/.
var static = func() fs.FS {
	f, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err)
	}
	return f
}()

// Prefix is where the console is mounted on the admin listener.
const Prefix = "/ui/"

// Public reports whether the admin listener serves path without the
// admin token: the console's page and its static files, which hold no
// data, and /ui/auth, which says whether the token is required (so that
// the page asks for it before making a request that would be refused).
// Its data endpoints (/ui/api/…) are not public.
func Public(p string) bool {
	if p == "/ui" || p == Prefix || p == Prefix+"auth" {
		return true
	}
	name, ok := strings.CutPrefix(p, Prefix)
	if !ok || strings.HasPrefix(name, "api/") || !fs.ValidPath(name) {
		return false
	}
	st, err := fs.Stat(static, name)
	return err == nil && !st.IsDir()
}

// Overview is the body of GET /ui/api/overview: what the gateway serves.
type Overview struct {
	// Version is the gateway's version.
	Version string `json:"version,omitempty"`
	// Started is when the process started.
	Started time.Time `json:"started"`
	// ConfigFile names the config being served.
	ConfigFile string `json:"config_file,omitempty"`
	// Routes are the configured routes, in config order.
	Routes []Route `json:"routes"`
	// Plugins are the configured plugin instances.
	Plugins []Plugin `json:"plugins"`
	// Endpoints are the admin endpoints the plugins mounted, as
	// "METHOD /path" (httprouter patterns).
	Endpoints []string `json:"endpoints"`
	// TokenRequired says whether the admin listener requires a token.
	TokenRequired bool `json:"token_required"`
	// SampleSeconds is the interval of /admin/metrics/series.
	SampleSeconds float64 `json:"sample_seconds"`
}

// Route is one configured route.
type Route struct {
	Name    string   `json:"name"`
	Path    string   `json:"path"`
	Methods []string `json:"methods,omitempty"`
	// Terminal is "fhir" or "upstream".
	Terminal string `json:"terminal"`
	// Upstream is the upstream's URL, for upstream routes.
	Upstream string `json:"upstream,omitempty"`
	// Plugins are the route's chain, in order.
	Plugins []string `json:"plugins"`
}

// Plugin is one configured plugin instance.
type Plugin struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// Options configure a Console.
type Options struct {
	// Overview describes the config being served. Required.
	Overview func(r *http.Request) Overview
	// Gatherer is the registry the plugins page reads. Required.
	Gatherer prometheus.Gatherer
	// TokenRequired reports whether the admin listener requires a token
	// now. Required.
	TokenRequired func() bool
}

// Console serves /ui/: the page, its files and its data endpoints.
type Console struct {
	o     Options
	files http.Handler
}

// New returns the console; it fails when an option is missing.
func New(o Options) (*Console, error) {
	if o.Overview == nil || o.Gatherer == nil || o.TokenRequired == nil {
		return nil, errors.New("console: Overview, Gatherer and TokenRequired are required")
	}
	return &Console{o: o, files: http.StripPrefix("/ui", http.FileServerFS(static))}, nil
}

// contentSecurityPolicy lets the page load its own files only and talk to
// its own origin only.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"

// ServeHTTP serves GET and HEAD under /ui/; the admin listener has
// checked the token for every path that is not Public.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "the console answers GET and HEAD"})
		return
	}
	switch r.URL.Path {
	case "/ui":
		http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
		return
	case Prefix + "auth":
		writeJSON(w, http.StatusOK, map[string]bool{"token_required": c.o.TokenRequired()})
		return
	case Prefix + "api/overview":
		writeJSON(w, http.StatusOK, c.o.Overview(r))
		return
	case Prefix + "api/plugins":
		c.plugins(w, r)
		return
	}
	if strings.HasPrefix(r.URL.Path, Prefix+"api/") {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no console endpoint " + r.URL.Path})
		return
	}
	h.Set("Cache-Control", "no-cache")
	c.files.ServeHTTP(w, r)
}

// plugins answers GET /ui/api/plugins: the values of the metrics that
// carry a plugin label (the Wasm and external plugin hosts', the time
// spent in each plugin, panics), summed by plugin, under the metric's name
// without its omnigate_ prefix; histograms as name_count and name_sum;
// families with a kind or result label also by it, as name:kind.
func (c *Console) plugins(w http.ResponseWriter, r *http.Request) {
	mfs, err := c.o.Gatherer.Gather()
	if err != nil && len(mfs) == 0 {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "gather metrics: " + err.Error()})
		return
	}
	out := map[string]map[string]float64{}
	add := func(plugin, key string, v float64) {
		m := out[plugin]
		if m == nil {
			m = map[string]float64{}
			out[plugin] = m
		}
		m[key] += v
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if !pluginFamily(name) {
			continue
		}
		short := strings.TrimPrefix(name, "omnigate_")
		for _, m := range mf.GetMetric() {
			plugin := label(m, "plugin")
			if plugin == "" {
				continue
			}
			var v float64
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				v = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				v = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				add(plugin, short+"_count", float64(m.GetHistogram().GetSampleCount()))
				add(plugin, short+"_sum", m.GetHistogram().GetSampleSum())
				continue
			default:
				continue
			}
			add(plugin, short, v)
			for _, by := range []string{"kind", "result"} {
				if l := label(m, by); l != "" {
					add(plugin, short+":"+l, v)
				}
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"plugins": out})
}

func pluginFamily(name string) bool {
	return strings.HasPrefix(name, "omnigate_wasm_") || strings.HasPrefix(name, "omnigate_external_") ||
		name == "omnigate_plugin_duration_seconds" || name == "omnigate_panics_total"
}

// SeriesHandler answers GET /admin/metrics/series?minutes=N (default 5,
// at most what the sampler keeps) with the samples of the last N minutes,
// oldest first: {"interval_seconds": 1, "samples": [Sample…]}.
func SeriesHandler(s *Sampler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		minutes := 5.0
		if v := r.URL.Query().Get("minutes"); v != "" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f > 0 && f <= 24*60) {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "minutes: want a number of minutes above 0, at most 1440, not " + strconv.Quote(v)})
				return
			}
			minutes = f
		}
		samples := s.Series(time.Now().Add(-time.Duration(minutes * float64(time.Minute))))
		if samples == nil {
			samples = []Sample{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"interval_seconds": s.Interval().Seconds(), "samples": samples})
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
