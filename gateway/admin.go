package gateway

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/omnigate/omnigate/gateway/console"
)

// AdminHandler serves the admin listener: /ping, /healthz, /readyz,
// /metrics, /admin/metrics/series, /debug/pprof/, the web console at /ui/
// and the endpoints plugins mount. When admin.token is set, every endpoint
// but /healthz, /readyz and the console's static files requires it as a
// bearer token. Every request that may change state (any method but GET,
// HEAD and OPTIONS) is logged as an "admin action" with the client's
// address and a fingerprint of the token it presented; such a request
// that a browser sent from a page of another origin is refused (403).
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /admin/metrics/series", console.SeriesHandler(s.sampler))
	mux.Handle("/ui", s.console)
	mux.Handle("/ui/", s.console)
	mux.HandleFunc("GET /ping", s.ping)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
			return
		}
		// Not ready while a required component (the FHIR store) is down:
		// load balancers send the traffic elsewhere.
		if resp, status := s.health(); status != http.StatusOK {
			var down []string
			for name, h := range resp.Components {
				if h.Status == StatusDown && h.Required {
					down = append(down, name)
				}
			}
			for name, p := range resp.Plugins {
				if p.Status == StatusDown && p.Required {
					down = append(down, name)
				}
			}
			sort.Strings(down)
			writeJSON(w, status, map[string]any{"status": resp.Status, "down": down})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{
		ErrorLog: slogPromLogger{s}, Registry: s.reg,
	}))
	if p := s.Config().Admin.Pprof; p == nil || *p {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		rt := s.acquire()
		if rt == nil {
			s.unavailable(w, false)
			return
		}
		defer rt.release()
		rt.admin.ServeHTTP(w, r)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		action := r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodOptions
		public := r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || console.Public(r.URL.Path)
		if !public && !s.adminAuthorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="omnigate-admin"`)
			writeError(w, http.StatusUnauthorized, "admin token required", false)
			if action {
				s.logAdminAction(r, http.StatusUnauthorized)
			}
			return
		}
		if !action {
			mux.ServeHTTP(w, r)
			return
		}
		if crossOrigin(r) {
			// A page of another site in an operator's browser: with no
			// token set, nothing else would stop it.
			writeError(w, http.StatusForbidden, "cross-origin admin requests are refused", false)
			s.logAdminAction(r, http.StatusForbidden)
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		mux.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		s.logAdminAction(r, sw.status)
	})
}

// crossOrigin reports whether a browser sent r from a page of another
// origin: its Origin header (browsers send it on every POST, PUT, PATCH and
// DELETE) names a host other than the one r was sent to.
func crossOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	u, err := url.Parse(origin)
	return err != nil || !strings.EqualFold(u.Host, r.Host)
}

// logAdminAction logs a request of the admin listener that may change
// state: who made it (the client's address and a fingerprint of the token
// it presented, never the token), what and how it ended.
func (s *Server) logAdminAction(r *http.Request, status int) {
	level := slog.LevelInfo
	if status >= 400 {
		level = slog.LevelWarn
	}
	s.logger.LogAttrs(r.Context(), level, "admin action",
		slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("status", status),
		slog.String("client_ip", ForwardedClient(r.RemoteAddr, r.Header.Values("X-Forwarded-For"), s.Config().Server.trusted).String()),
		slog.String("token", TokenFingerprint(r)))
}

// TokenFingerprint names the bearer token a request presented without
// revealing it (see TokenFingerprintOf), or is "none" when it presented
// none.
func TokenFingerprint(r *http.Request) string {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return "none"
	}
	return TokenFingerprintOf(tok)
}

// TokenFingerprintOf is "sha256:" and the first 12 hex digits of the
// SHA-256 of token: enough to tell tokens apart in a log, useless to
// present.
func TokenFingerprintOf(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

// consoleOverview describes the config being served for the console.
func (s *Server) consoleOverview(r *http.Request) console.Overview {
	rt := s.acquire()
	if rt == nil {
		return console.Overview{Version: s.opts.Version, Started: s.started, Routes: []console.Route{},
			Plugins: []console.Plugin{}, Endpoints: []string{}}
	}
	defer rt.release()
	cfg := rt.cfg
	ov := console.Overview{
		Version: s.opts.Version, Started: s.started.UTC(), ConfigFile: cfg.File,
		Routes: []console.Route{}, Plugins: []console.Plugin{}, Endpoints: []string{},
		TokenRequired: cfg.Admin.Token != "", SampleSeconds: s.sampler.Interval().Seconds(),
	}
	for _, rc := range cfg.Routes {
		cr := console.Route{Name: rc.Name, Path: rc.Path, Methods: rc.Methods, Terminal: "fhir", Plugins: rc.Plugins}
		if rc.Upstream != nil {
			cr.Terminal, cr.Upstream = "upstream", rc.Upstream.URL
		}
		if cr.Plugins == nil {
			cr.Plugins = []string{}
		}
		ov.Routes = append(ov.Routes, cr)
	}
	for _, sp := range cfg.Plugins {
		ov.Plugins = append(ov.Plugins, console.Plugin{Name: sp.Name, Type: sp.Type})
	}
	for _, m := range rt.adminRoutes {
		ov.Endpoints = append(ov.Endpoints, m.method+" "+m.path)
	}
	return ov
}

func (s *Server) adminAuthorized(r *http.Request) bool {
	token := s.Config().Admin.Token
	if token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

type slogPromLogger struct{ s *Server }

func (l slogPromLogger) Println(v ...any) { l.s.logger.Warn("metrics", "error", v) }

// PingResponse is the body of GET /ping.
type PingResponse struct {
	// Status is ok, degraded (a component is down but not required),
	// down (a required component is down) or draining.
	Status        string                  `json:"status"`
	Version       string                  `json:"version,omitempty"`
	UptimeSeconds int64                   `json:"uptime_seconds"`
	Components    map[string]Health       `json:"components"`
	Plugins       map[string]PluginHealth `json:"plugins"`
}

// PluginHealth is one plugin instance in /ping.
type PluginHealth struct {
	Type string `json:"type"`
	Health
}

func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	resp, status := s.health()
	if status == http.StatusServiceUnavailable && resp.Status == "draining" {
		w.Header().Set("Retry-After", shutdownRetryAfter)
	}
	writeJSON(w, status, resp)
}

// health is the body and status of /ping: 503 while draining or while a
// required component is down.
func (s *Server) health() (PingResponse, int) {
	resp := PingResponse{
		Status:        "ok",
		Version:       s.opts.Version,
		UptimeSeconds: int64(time.Since(s.started).Seconds()),
		Components:    map[string]Health{},
		Plugins:       map[string]PluginHealth{},
	}
	rt := s.acquire()
	if rt == nil { // shut down: the plugins are closed or closing
		resp.Status = "draining"
		return resp, http.StatusServiceUnavailable
	}
	defer rt.release()
	if rt.cfg.Redis.Enabled() {
		resp.Components["redis"] = Health{Status: "configured", Detail: "no plugin uses redis"}
	} else {
		resp.Components["redis"] = Health{Status: StatusDisabled, Detail: "in-process state"}
	}
	for _, hc := range rt.health {
		resp.Components[hc.name] = hc.check()
	}
	specs := map[string]string{}
	for _, sp := range rt.cfg.Plugins {
		specs[sp.Name] = sp.Type
	}
	for _, p := range rt.plugins {
		h := Health{Status: StatusLoaded}
		if hr, ok := p.plugin.(HealthReporter); ok {
			h = hr.Health()
		}
		resp.Plugins[p.name] = PluginHealth{Type: specs[p.name], Health: h}
	}
	status := http.StatusOK
	check := func(h Health) {
		switch {
		case h.Status == StatusDown && h.Required:
			resp.Status, status = "down", http.StatusServiceUnavailable
		case (h.Status == StatusDown || h.Status == StatusDegraded) && resp.Status == "ok":
			resp.Status = "degraded"
		}
	}
	for _, h := range resp.Components {
		check(h)
	}
	for _, p := range resp.Plugins {
		check(p.Health)
	}
	if s.draining.Load() {
		resp.Status, status = "draining", http.StatusServiceUnavailable
	}
	return resp, status
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// WriteJSON writes v as indented JSON with status; plugins use it for admin
// endpoints.
func WriteJSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }
