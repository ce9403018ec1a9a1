package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/plural"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// adminRegistry lets every audit instance of a config load share one set
// of admin endpoints:
//
//	GET  /admin/audit/stats   the spool and each sink, per plugin instance
//	GET  /admin/audit/events  AuditEvents from the fhir sink's store
//	POST /admin/audit/prune   delete the AuditEvents recorded before a date
//
// Each takes ?plugin=NAME to address one instance.
type adminRegistry struct {
	mu    sync.Mutex
	byCfg map[*gateway.Config][]*Plugin
}

func mountAdmin(env *gateway.Env, p *Plugin) *adminRegistry {
	v, _ := env.Shared("audit:admin", func() (any, error) {
		return &adminRegistry{byCfg: map[*gateway.Config][]*Plugin{}}, nil
	})
	reg := v.(*adminRegistry)
	cfg := env.Config
	reg.mu.Lock()
	first := len(reg.byCfg[cfg]) == 0
	reg.byCfg[cfg] = append(reg.byCfg[cfg], p)
	reg.mu.Unlock()
	if first {
		env.HandleAdmin(http.MethodGet, "/admin/audit/stats", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reg.stats(w, r, cfg)
		}))
		env.HandleAdmin(http.MethodGet, "/admin/audit/events", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reg.events(w, r, cfg)
		}))
		env.HandleAdmin(http.MethodPost, "/admin/audit/prune", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reg.prune(w, r, cfg)
		}))
	}
	return reg
}

func (reg *adminRegistry) remove(p *Plugin) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	cfg := p.load.(*gateway.Config)
	ps := reg.byCfg[cfg]
	for i, x := range ps {
		if x == p {
			ps = append(ps[:i:i], ps[i+1:]...)
			break
		}
	}
	if len(ps) == 0 {
		delete(reg.byCfg, cfg)
	} else {
		reg.byCfg[cfg] = ps
	}
}

// plugins returns the instances of cfg, or the one named by ?plugin=.
func (reg *adminRegistry) plugins(r *http.Request, cfg *gateway.Config) []*Plugin {
	reg.mu.Lock()
	ps := append([]*Plugin(nil), reg.byCfg[cfg]...)
	reg.mu.Unlock()
	if name := r.URL.Query().Get("plugin"); name != "" {
		var out []*Plugin
		for _, p := range ps {
			if p.name == name {
				out = append(out, p)
			}
		}
		return out
	}
	return ps
}

// Stats is one plugin instance in GET /admin/audit/stats.
type Stats struct {
	SpoolDir      string      `json:"spool_dir"`
	OnSinkFailure string      `json:"on_sink_failure"`
	SpoolBytes    int64       `json:"spool_bytes"`
	MaxSpoolBytes int64       `json:"max_spool_bytes"`
	Full          bool        `json:"full"`
	Segments      int         `json:"segments"`
	Pending       int         `json:"pending"`
	Appended      int64       `json:"appended"`
	Flushed       int64       `json:"flushed"`
	Dropped       int64       `json:"dropped"`
	Blocked       int64       `json:"blocked"`
	Corrupt       int64       `json:"corrupt_lines"`
	LastFlush     time.Time   `json:"last_flush,omitzero"`
	FlushError    string      `json:"flush_error,omitempty"`
	Sinks         []sinkState `json:"sinks"`
}

// stats returns the instance's figures. Appended, Flushed, Dropped and
// Blocked count since the process started.
func (p *Plugin) stats() Stats {
	sp := p.pipe.spool
	st := sp.state()
	p.pipe.mu.Lock()
	dropped, blocked := p.pipe.dropped, p.pipe.blocked
	p.pipe.mu.Unlock()
	out := Stats{
		SpoolDir: sp.dir, OnSinkFailure: p.cfg.OnSinkFailure,
		SpoolBytes: sp.bytes(), MaxSpoolBytes: int64(p.cfg.MaxSpoolBytes),
		Segments: st.Segments, Pending: st.Pending,
		Appended: sp.appended.Load(), Flushed: sp.flushed.Load(), Dropped: dropped, Blocked: blocked,
		Corrupt: sp.corrupt.Load(), LastFlush: st.LastFlush, FlushError: st.FlushErr,
		Sinks: p.pipe.sinkStates(),
	}
	out.Full = out.SpoolBytes >= out.MaxSpoolBytes || p.pipe.dropping.Load()
	if out.Sinks == nil {
		out.Sinks = []sinkState{}
	}
	return out
}

func (reg *adminRegistry) stats(w http.ResponseWriter, r *http.Request, cfg *gateway.Config) {
	out := map[string]Stats{}
	for _, p := range reg.plugins(r, cfg) {
		out[p.name] = p.stats()
	}
	gateway.WriteJSON(w, http.StatusOK, map[string]any{"plugins": out})
}

// events answers GET /admin/audit/events?patient=&user=&since=&until=&count=
// with a searchset Bundle of AuditEvents, newest first, read from the
// embedded FHIR server in process (the fhir sink's store): patient is a
// patient id (or Patient/id), user a user id (the agent's name), since
// and until FHIR dates or instants (2026-09-01, 2026-09-01T10:00:00Z),
// count the page size (default 100).
func (reg *adminRegistry) events(w http.ResponseWriter, r *http.Request, cfg *gateway.Config) {
	p := reg.fhirPlugin(w, r, cfg)
	if p == nil {
		return
	}
	q, err := eventsQuery(r.URL.Query())
	if err != nil {
		gateway.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, p.fhirBase+"/AuditEvent?"+q.Encode(), nil)
	if err != nil {
		gateway.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	req.Header.Set("Accept", "application/fhir+json")
	res := newResponseBuffer()
	p.fhir.ServeHTTP(res, req)
	w.Header().Set("Content-Type", "application/fhir+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(res.status)
	w.Write(res.body.Bytes())
}

// fhirPlugin returns the first plugin with a fhir sink, or answers 404.
func (reg *adminRegistry) fhirPlugin(w http.ResponseWriter, r *http.Request, cfg *gateway.Config) *Plugin {
	for _, x := range reg.plugins(r, cfg) {
		if x.hasFHIR {
			return x
		}
	}
	gateway.WriteJSON(w, http.StatusNotFound, map[string]string{"error": "no audit plugin here writes to the FHIR server (sinks: [{type: fhir}])"})
	return nil
}

// prune answers POST /admin/audit/prune?before=DATE: it deletes, through
// the embedded FHIR server in process, the AuditEvents recorded before
// DATE (a date or an instant), and says how many. A delete in the FHIR
// server keeps the versions in the resource's history: the pruned events
// no longer answer searches and reads, but the store does not shrink.
func (reg *adminRegistry) prune(w http.ResponseWriter, r *http.Request, cfg *gateway.Config) {
	p := reg.fhirPlugin(w, r, cfg)
	if p == nil {
		return
	}
	before := r.URL.Query().Get("before")
	if !validDate(before) {
		gateway.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "before: want a date or an instant (2020-01-01, 2020-01-01T00:00:00Z)"})
		return
	}
	deleted, err := p.prune(r.Context(), before)
	if err != nil {
		gateway.WriteJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error(), "deleted": deleted})
		return
	}
	gateway.WriteJSON(w, http.StatusOK, map[string]any{"before": before, "deleted": deleted})
}

// prune deletes the AuditEvents recorded before a date, a page at a time.
func (p *Plugin) prune(ctx context.Context, before string) (int, error) {
	deleted := 0
	for {
		q := url.Values{"date": {"lt" + before}, "_count": {"500"}, "_elements": {"id"}}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.fhirBase+"/AuditEvent?"+q.Encode(), nil)
		if err != nil {
			return deleted, err
		}
		res := newResponseBuffer()
		p.fhir.ServeHTTP(res, req)
		if res.status != http.StatusOK {
			return deleted, fmt.Errorf("search AuditEvents: %d %s", res.status, diagnostics(res.body.Bytes()))
		}
		var page struct {
			Entry []struct {
				Resource struct {
					ID string `json:"id"`
				} `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(res.body.Bytes(), &page); err != nil {
			return deleted, fmt.Errorf("search AuditEvents: %w", err)
		}
		if len(page.Entry) == 0 {
			return deleted, nil
		}
		b := map[string]any{"resourceType": "Bundle", "type": "batch"}
		var entries []map[string]any
		for _, e := range page.Entry {
			entries = append(entries, map[string]any{"request": map[string]string{"method": "DELETE", "url": "AuditEvent/" + e.Resource.ID}})
		}
		b["entry"] = entries
		body, _ := json.Marshal(b)
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, p.fhirBase, bytes.NewReader(body))
		if err != nil {
			return deleted, err
		}
		req.Header.Set("Content-Type", "application/fhir+json")
		res = newResponseBuffer()
		p.fhir.ServeHTTP(res, req)
		if res.status != http.StatusOK {
			return deleted, fmt.Errorf("delete AuditEvents: %d %s", res.status, diagnostics(res.body.Bytes()))
		}
		var out struct {
			Entry []struct {
				Response struct {
					Status string `json:"status"`
				} `json:"response"`
			} `json:"entry"`
		}
		json.Unmarshal(res.body.Bytes(), &out)
		n := 0
		for _, e := range out.Entry {
			if code := statusCode(e.Response.Status); code >= 200 && code < 300 {
				n++
			}
		}
		deleted += n
		if n == 0 {
			return deleted, fmt.Errorf("delete AuditEvents: none of %d deleted", len(page.Entry))
		}
	}
}

// eventsQuery turns the endpoint's parameters into an AuditEvent search.
func eventsQuery(in url.Values) (url.Values, error) {
	q := url.Values{"_sort": {"-date"}, "_count": {"100"}}
	if v := in.Get("patient"); v != "" {
		id := strings.TrimPrefix(v, "Patient/")
		if !fhirreq.IsID(id) {
			return nil, fmt.Errorf("patient: %q is not a patient id", v)
		}
		q.Set("patient", "Patient/"+id)
	}
	if v := in.Get("user"); v != "" {
		q.Set("agent-name:exact", v)
	}
	for key, prefix := range map[string]string{"since": "ge", "until": "le"} {
		v := in.Get(key)
		if v == "" {
			continue
		}
		if !validDate(v) {
			return nil, fmt.Errorf("%s: want a date or an instant (2026-09-01, 2026-09-01T10:00:00Z), not %q", key, v)
		}
		q.Add("date", prefix+v)
	}
	if v := in.Get("count"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("count: want a positive number, not %q", v)
		}
		q.Set("_count", strconv.Itoa(n))
	}
	return q, nil
}

func validDate(s string) bool {
	for _, layout := range []string{"2006-01-02", time.RFC3339, time.RFC3339Nano, "2006-01-02T15:04:05"} {
		if _, err := time.Parse(layout, s); err == nil {
			return true
		}
	}
	return false
}

// Health reports whether records reach their sinks: down when requests
// are refused (the spool is full, on_sink_failure: block), degraded while
// a sink fails, records are dropped or the spool cannot be written.
func (p *Plugin) Health() gateway.Health {
	st := p.stats()
	var failing []string
	for _, s := range st.Sinks {
		if s.Failing {
			failing = append(failing, s.Name)
		}
	}
	switch {
	case st.Full && p.cfg.OnSinkFailure == Block:
		return gateway.Health{Status: gateway.StatusDown, Detail: "spool full: requests that reach PHI are refused (on_sink_failure: block)"}
	case st.Full:
		return gateway.Health{Status: gateway.StatusDegraded, Detail: "spool full: records are dropped (on_sink_failure: drop)"}
	case st.FlushError != "":
		return gateway.Health{Status: gateway.StatusDegraded, Detail: "spool not written: " + st.FlushError}
	case len(failing) > 0:
		return gateway.Health{Status: gateway.StatusDegraded, Detail: "failing sinks: " + strings.Join(failing, ", ") + "; records wait in the spool"}
	}
	return gateway.Health{Status: gateway.StatusUp, Detail: plural.Of(len(st.Sinks), "sink") + ", spool " + plural.Of(st.SpoolBytes, "byte")}
}

// sinkHealth is one sink's component in /ping: down while it fails, so
// that /ping says degraded.
func (p *pipeline) sinkHealth(name string) gateway.Health {
	for _, s := range p.sinkStates() {
		if s.Name != name {
			continue
		}
		if s.Failing {
			return gateway.Health{Status: gateway.StatusDown, Detail: fmt.Sprintf("failing since %s (%s): %s; %s wait in the spool",
				s.FailingSince.UTC().Format(time.RFC3339), plural.Of(s.ConsecutiveFailures, "attempt"), s.LastError, plural.Of(s.BehindBytes, "byte"))}
		}
		return gateway.Health{Status: gateway.StatusUp, Detail: plural.Of(s.Shipped, "record") + " shipped, " + plural.Of(s.BehindBytes, "byte") + " behind"}
	}
	return gateway.Health{Status: gateway.StatusLoaded, Detail: "not started"}
}
