package gateway

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// AdminHandler serves the admin listener: /ping, /healthz, /readyz,
// /metrics, /debug/pprof/ and the endpoints plugins mount. When
// admin.token is set, every endpoint but /healthz and /readyz requires it
// as a bearer token.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
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
		if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && !s.adminAuthorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="omnigate-admin"`)
			writeError(w, http.StatusUnauthorized, "admin token required", false)
			return
		}
		mux.ServeHTTP(w, r)
	})
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
		if h.Status != StatusDown {
			return
		}
		if h.Required {
			resp.Status, status = "down", http.StatusServiceUnavailable
		} else if resp.Status == "ok" {
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
