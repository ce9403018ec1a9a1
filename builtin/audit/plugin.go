package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

func init() {
	gateway.RegisterPlugin("audit", Defaults, New)
}

// Plugin is one audit plugin instance.
type Plugin struct {
	name     string
	cfg      *Config
	pipe     *pipeline
	clock    clock
	fhirBase string
	load     any
	fhir     http.Handler // the embedded FHIR server, for /admin/audit/events
	hasFHIR  bool         // the fhir sink is on
	admin    *adminRegistry
	gen      uint64 // generation of the pipeline's settings this instance asks for
	memo     *compartmentMemo

	closeOnce sync.Once
}

var (
	_ gateway.Plugin         = (*Plugin)(nil)
	_ gateway.HealthReporter = (*Plugin)(nil)
	_ io.Closer              = (*Plugin)(nil)
)

// New builds an audit plugin: it opens (or joins, after a reload) the
// spool in cfg.SpoolDir and, once the config load serves, ships to the
// sinks. It fails when cfg does not validate, when a fhir sink has no
// embedded FHIR server to write to (no route with fhir: true, or
// fhir.update_create off), or when the spool cannot be opened (another
// process holds it).
func New(ctx context.Context, cfg *Config, env *gateway.Env) (gateway.Plugin, error) {
	return newPlugin(ctx, cfg, env, options{})
}

// options are what tests change.
type options struct {
	clock clock
}

func newPlugin(_ context.Context, cfg *Config, env *gateway.Env, opts options) (*Plugin, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("audit config: %w", err)
	}
	if opts.clock == nil {
		opts.clock = systemClock{}
	}
	hasFHIR := false
	for _, s := range cfg.Sinks {
		hasFHIR = hasFHIR || s.Type == "fhir"
	}
	deps := sinkDeps{fhir: env.FHIRHandler(), base: env.Config.FHIRBasePath(), site: cfg.Site, log: env.Logger}
	if hasFHIR {
		addr, err := checkFHIRSink(env.Config)
		if err != nil {
			return nil, err
		}
		deps.serverAddress = addr
	}
	dir, err := filepath.Abs(cfg.SpoolDir)
	if err != nil {
		return nil, fmt.Errorf("spool_dir: %w", err)
	}
	m := newMetrics(env.Registerer)
	v, err := env.Shared("audit-spool:"+dir, func() (any, error) {
		return newPipeline(env.Name, dir, cfg, opts.clock, m, env.Logger)
	})
	if err != nil {
		return nil, err
	}
	pipe := v.(*pipeline)
	gen, err := pipe.register(env.Config, cfg)
	if err != nil {
		return nil, err
	}
	p := &Plugin{name: env.Name, cfg: cfg, pipe: pipe, clock: pipe.clock, fhirBase: env.Config.FHIRBasePath(),
		load: env.Config, fhir: deps.fhir, hasFHIR: hasFHIR, gen: gen,
		memo: newCompartmentMemo(memoEntries)}
	env.OnStart(func(context.Context, http.Handler) {
		pipe.activate(gen, cfg, func(sc SinkConfig) (sink, error) { return sinkTypes[sc.Type](sc, deps) })
	})
	for _, sc := range cfg.Sinks {
		name := sc.Name
		env.AddHealth("audit-sink:"+name, func() gateway.Health { return pipe.sinkHealth(name) })
	}
	p.admin = mountAdmin(env, p)
	return p, nil
}

// checkFHIRSink makes sure the fhir sink has a FHIR server to write to,
// and returns fhir.base_url (the server's address in AuditEvents).
func checkFHIRSink(c *gateway.Config) (string, error) {
	hasRoute := false
	for _, r := range c.Routes {
		hasRoute = hasRoute || r.FHIR
	}
	if !hasRoute {
		return "", errors.New("the fhir sink writes into the embedded FHIR server, and no route has fhir: true (use a file sink)")
	}
	var fc struct {
		UpdateCreate *bool  `yaml:"update_create"`
		BaseURL      string `yaml:"base_url"`
	}
	if c.FHIR.Kind != 0 {
		if err := c.FHIR.Decode(&fc); err != nil {
			return "", fmt.Errorf("read the fhir config: %w", err)
		}
	}
	if fc.UpdateCreate != nil && !*fc.UpdateCreate {
		return "", errors.New("the fhir sink writes AuditEvents with PUT: fhir.update_create must be true")
	}
	return fc.BaseURL, nil
}

// Close releases the spool; the last plugin using it ships what it can to
// the sinks first (shutdown_timeout), and what is left stays spooled for
// the next start.
func (p *Plugin) Close() error {
	p.closeOnce.Do(func() {
		p.admin.remove(p)
		p.pipe.release(p.load, p.cfg.ShutdownTimeout)
	})
	return nil
}

// ServeHTTP audits the request: it classifies it, lets the rest of the
// chain answer it, then spools one record for it (and one per entry of a
// batch or transaction). Capabilities (metadata), SMART discovery
// (.well-known) and CORS preflights carry no PHI and are not audited.
func (p *Plugin) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if r.Method == http.MethodOptions {
		next.ServeHTTP(w, r)
		return
	}
	base := p.baseFor(r)
	req, ok := fhirreq.Parse(r.Method, r.URL.Path, base)
	if ok && req.Interaction == fhirreq.Capabilities || !ok && strings.HasPrefix(r.URL.Path, base+"/.well-known/") {
		next.ServeHTTP(w, r)
		return
	}
	if p.cfg.OnSinkFailure == Block && p.pipe.spool.bytes() >= int64(p.cfg.MaxSpoolBytes) {
		p.pipe.countBlocked()
		w.Header().Set("Retry-After", strconv.Itoa(p.pipe.retryAfter()))
		gateway.Error(w, r, http.StatusServiceUnavailable, "the audit trail cannot be recorded now (its spool is full); try again later")
		return
	}
	x := &exchange{base: base, req: req, ok: ok, query: r.URL.RawQuery}
	p.readRequest(r, x)
	if x.writesAuditTrail() {
		cw := &capture{ResponseWriter: w}
		gateway.Error(cw, r, http.StatusForbidden, reasonProtected)
		p.record(r, x, cw, access.RecordData{Decided: true, Reason: reasonProtected})
		return
	}
	ctx, decision := access.WithRecord(r.Context())
	cw := &capture{ResponseWriter: w, ctx: r.Context(), max: int(p.cfg.InspectBytes), want: p.cfg.InspectBytes > 0 && needsResponse(req, ok)}
	finished := false
	defer func() {
		if !finished { // a panic below: record what was answered, if anything
			if cw.status == 0 {
				cw.status = http.StatusInternalServerError
			}
			p.record(r, x, cw, decision.Get())
		}
		cw.release()
	}()
	next.ServeHTTP(cw, r.WithContext(ctx))
	finished = true
	p.record(r, x, cw, decision.Get())
}

// reasonProtected is why writes of AuditEvent through a route are refused.
const reasonProtected = "the audit trail is written by the gateway only"

// writesAuditTrail reports whether the request (or an entry of its Bundle)
// creates, updates, patches or deletes an AuditEvent: whatever access
// control says, the plugin refuses it, so that the trail cannot be forged
// or erased through the API.
func (x *exchange) writesAuditTrail() bool {
	writes := func(r fhirreq.Request) bool {
		switch r.Interaction {
		case fhirreq.Create, fhirreq.Update, fhirreq.Patch, fhirreq.Delete:
			return r.Type == "AuditEvent"
		}
		return false
	}
	if !x.ok {
		return false
	}
	if x.bundle != nil {
		for i := range x.bundle.Entries {
			if writes(x.bundle.Entries[i].Request) {
				return true
			}
		}
	}
	return writes(x.req)
}

// baseFor returns the FHIR base of a request: the embedded server's, or,
// on other routes (an upstream FHIR server), the route's path before its
// catch-all.
func (p *Plugin) baseFor(r *http.Request) string {
	path := r.URL.Path
	if len(path) >= len(p.fhirBase) && path[:len(p.fhirBase)] == p.fhirBase && (len(path) == len(p.fhirBase) || path[len(p.fhirBase)] == '/') {
		return p.fhirBase
	}
	if info, ok := gateway.RouteFrom(r.Context()); ok {
		if i := strings.Index(info.Pattern, "/*"); i >= 0 {
			return info.Pattern[:i]
		}
	}
	return p.fhirBase
}

// exchange is what the plugin learns about a request before it is
// answered.
type exchange struct {
	base  string
	req   fhirreq.Request
	ok    bool
	query string // raw query (or the form of a POST _search)
	body  []byte // the resource written, when read whole
	// partial says the resource written was too large to read
	partial bool
	bundle  *fhirreq.Bundle
}

// readRequest reads what the request body says about patients: a batch or
// transaction Bundle (whole), the resource of a create or update, the form
// of a POST _search (up to inspect_bytes). The body is given back intact
// to the rest of the chain.
func (p *Plugin) readRequest(r *http.Request, x *exchange) {
	if !x.ok || r.Body == nil || r.Body == http.NoBody {
		return
	}
	switch x.req.Interaction {
	case fhirreq.Batch:
		body, _ := gateway.ReadBody(r.Context(), r, -1)
		if b, err := fhirreq.ParseBundle(body, x.base); err == nil {
			x.bundle = b
		}
	case fhirreq.Create, fhirreq.Update:
		if p.cfg.InspectBytes > 0 && isJSON(r.Header.Get("Content-Type")) {
			if body, whole := peekBody(r, int64(p.cfg.InspectBytes)); whole {
				x.body = body
			} else {
				x.partial = true
			}
		}
	case fhirreq.SearchType, fhirreq.SearchSystem:
		if r.Method == http.MethodPost && p.cfg.InspectBytes > 0 {
			if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/x-www-form-urlencoded" {
				if body, whole := peekBody(r, int64(p.cfg.InspectBytes)); whole {
					x.query = joinQuery(x.query, string(body))
				}
			}
		}
	}
}

func joinQuery(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "&" + b
}

// peekBody reads up to limit bytes of the request body (all with limit
// < 0) and puts them back in front of the rest, so the handler reads the
// same bytes and the same error. whole says the body ended within limit.
func peekBody(r *http.Request, limit int64) (body []byte, whole bool) {
	rd := io.Reader(r.Body)
	if limit >= 0 {
		rd = io.LimitReader(r.Body, limit+1)
	}
	body, err := io.ReadAll(rd)
	rest := io.Reader(r.Body)
	switch {
	case err != nil:
		rest = errReader{err}
	case limit < 0 || int64(len(body)) <= limit:
		whole = true
		rest = r.Body // at its end: gives EOF
	}
	r.Body = readCloser{io.MultiReader(bytes.NewReader(body), rest), r.Body}
	return body, whole && err == nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

type readCloser struct {
	io.Reader
	io.Closer
}

func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/fhir+json" || mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// record builds the request's records and spools them.
func (p *Plugin) record(r *http.Request, x *exchange, cw *capture, d access.RecordData) {
	recs := p.build(r, x, cw, d)
	drop := p.cfg.OnSinkFailure == Drop
	buf := lineBufs.Get().(*[]byte)
	for _, rec := range recs {
		*buf = rec.appendJSON((*buf)[:0])
		p.pipe.append(*buf, int64(p.cfg.MaxSpoolBytes), drop)
	}
	if cap(*buf) <= 64<<10 {
		lineBufs.Put(buf)
	}
}

// build returns the records of an answered request: one, or for a batch
// or transaction, one for the Bundle and one per entry.
func (p *Plugin) build(r *http.Request, x *exchange, cw *capture, d access.RecordData) []*Record {
	status := cw.status
	if status == 0 {
		status = http.StatusOK
	}
	rec := &Record{
		ID:        p.pipe.ids.next(),
		Time:      p.clock.Now().UTC(),
		RequestID: gateway.RequestID(r.Context()),
		Method:    r.Method,
		Path:      r.URL.Path,
		Status:    status,
		Decision:  DecisionNone,
		Query:     cleanQuery(x.query),
	}
	if id := gateway.IdentityFrom(r.Context()); id != nil {
		rec.User, rec.Role, rec.FHIRUser, rec.Session = id.UserID, id.Role, id.FHIRUser, id.SessionID
	}
	if ip := gateway.ClientIP(r); ip.IsValid() {
		rec.ClientIP = ip.String()
	}
	if info, ok := gateway.RouteFrom(r.Context()); ok {
		rec.Route = info.Name
	}
	describe(rec, x.req, x.ok)
	if rec.Interaction == "unknown" && d.Interaction != "" {
		rec.Interaction, rec.Type = d.Interaction, d.Type
	}
	if d.Decided {
		rec.Decision = DecisionDenied
		if d.Allowed {
			rec.Decision = DecisionAllowed
		}
		rec.Reason, rec.BreakGlass = d.Reason, d.BreakGlass
	}

	pats := &patientSet{max: p.cfg.MaxPatients}
	pats.fromPath(x.req)
	if x.ok {
		if q, err := url.ParseQuery(x.query); err == nil {
			pats.fromQuery(x.req.Type, q)
		}
	}
	pats.add(d.Patient)
	if x.body != nil {
		pats.fromResource(x.req.Type, x.req.ID, x.body)
	}
	pats.incomplete = pats.incomplete || x.partial
	if x.req.Interaction == fhirreq.Create {
		if typ, id, vid := parseLocation(cw.Header().Get("Location")); typ == x.req.Type && id != "" {
			rec.ResourceID, rec.VersionID = id, vid
			if typ == "Patient" {
				pats.add(id)
			}
		}
	}
	body, complete := cw.body()
	if cw.want && status < 400 && !complete {
		pats.incomplete = true
	}

	if x.req.Interaction == fhirreq.Batch && x.ok {
		return p.buildBundle(rec, x, d, pats, body, complete)
	}
	if cw.want && status < 400 && complete && len(body) > 0 {
		switch x.req.Interaction {
		case fhirreq.Read, fhirreq.VRead:
			p.versionPatients(pats, x.req.Type, x.req.ID, cw.Header().Get("ETag"), body)
		case fhirreq.Update, fhirreq.Patch:
			pats.fromResource(x.req.Type, x.req.ID, body) // the resource of the path
		case fhirreq.Create:
			pats.fromResource(x.req.Type, rec.ResourceID, body)
		default:
			pats.fromBody(body)
		}
	}
	rec.Patients, rec.PatientsIncomplete = pats.ids, pats.incomplete
	return []*Record{rec}
}

// versionPatients adds the patients of a read resource version (body),
// remembered by version so that the same version read again is not decoded
// again.
func (p *Plugin) versionPatients(pats *patientSet, typ, id, etag string, body []byte) {
	key := memoKey(typ, id, etag)
	if key != "" {
		if ids, ok := p.memo.get(key); ok {
			for _, pid := range ids {
				pats.add(pid)
			}
			return
		}
	}
	one := &patientSet{max: p.cfg.MaxPatients}
	one.fromResource(typ, id, body)
	if key != "" && !one.incomplete {
		p.memo.put(key, one.ids)
	}
	for _, pid := range one.ids {
		pats.add(pid)
	}
	pats.incomplete = pats.incomplete || one.incomplete
}

// buildBundle returns the records of a batch or transaction: the Bundle's
// (whose patients are all its entries') and one per entry.
func (p *Plugin) buildBundle(rec *Record, x *exchange, d access.RecordData, pats *patientSet, body []byte, complete bool) []*Record {
	if x.bundle == nil {
		rec.Patients, rec.PatientsIncomplete = pats.ids, pats.incomplete
		return []*Record{rec}
	}
	rec.Interaction, rec.Bundle, rec.Entries = x.bundle.Type, x.bundle.Type, len(x.bundle.Entries)
	var resp struct {
		Entry []struct {
			Resource json.RawMessage `json:"resource"`
			Response *struct {
				Status   string `json:"status"`
				Location string `json:"location"`
			} `json:"response"`
		} `json:"entry"`
	}
	if complete && rec.Status < 400 {
		json.Unmarshal(body, &resp)
	}
	answered := len(resp.Entry) == len(x.bundle.Entries)
	decisions := map[int]access.EntryDecision{}
	for _, e := range d.Entries {
		decisions[e.Index] = e
	}
	out := make([]*Record, 1, 1+len(x.bundle.Entries))
	out[0] = rec
	for i := range x.bundle.Entries {
		e := &x.bundle.Entries[i]
		er := *rec
		er.ID = p.pipe.ids.next()
		er.Entries, er.Entry = 0, &e.Index
		er.Method = strings.ToUpper(e.Method)
		path, query, _ := strings.Cut(e.URL, "?")
		er.Path, er.Query = path, cleanQuery(query)
		if e.IfNoneExist != "" {
			er.Query = cleanQuery(e.IfNoneExist)
		}
		describe(&er, e.Request, e.Interaction != "")
		if ed, ok := decisions[e.Index]; ok {
			er.Decision, er.Reason = DecisionDenied, ed.Reason
			if ed.Allowed {
				er.Decision = DecisionAllowed
			}
		}
		ep := &patientSet{max: p.cfg.MaxPatients}
		ep.fromPath(e.Request)
		ep.fromQuery(e.Type, e.Query)
		if e.IfNoneExist != "" {
			if q, err := url.ParseQuery(e.IfNoneExist); err == nil {
				ep.fromQuery(e.Type, q)
			}
		}
		ep.add(d.Patient)
		if len(e.Resource) > 0 && (e.Interaction == fhirreq.Create || e.Interaction == fhirreq.Update) {
			ep.fromResource(e.Type, e.ID, e.Resource)
		}
		if answered {
			re := resp.Entry[i]
			if re.Response != nil {
				if code := statusCode(re.Response.Status); code != 0 {
					er.Status = code
				}
				if e.Interaction == fhirreq.Create {
					if typ, id, vid := parseLocation(re.Response.Location); typ == e.Type && id != "" {
						er.ResourceID, er.VersionID = id, vid
						if typ == "Patient" {
							ep.add(id)
						}
					}
				}
			}
			if len(re.Resource) > 0 && er.Status < 400 {
				ep.fromResource("", "", re.Resource)
			}
		} else if rec.Status < 400 && e.Interaction != fhirreq.Delete {
			ep.incomplete = true // the response was not read
		}
		er.Patients, er.PatientsIncomplete = ep.ids, ep.incomplete
		pats.merge(ep)
		out = append(out, &er)
	}
	rec.Patients, rec.PatientsIncomplete = pats.ids, pats.incomplete
	return out
}

// capture passes the response through and keeps its status and, when
// wanted and the body is JSON, its first max bytes, within the gateway's
// body budget (a body that does not fit is treated as one over max).
type capture struct {
	http.ResponseWriter
	ctx      context.Context
	status   int
	want     bool
	decided  bool
	max      int
	over     bool
	buf      *bytes.Buffer
	reserved int // of the gateway's body budget
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (c *capture) WriteHeader(code int) {
	if c.status == 0 && code >= 200 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *capture) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	if c.want && !c.decided {
		c.decided = true
		h := c.Header()
		if ce := h.Get("Content-Encoding"); isJSON(h.Get("Content-Type")) && (ce == "" || ce == "identity") {
			c.buf = bufPool.Get().(*bytes.Buffer)
			c.buf.Reset()
		} else {
			c.over = true // not JSON we can read
		}
	}
	if c.buf != nil && !c.over {
		if need := c.buf.Len() + len(b); need > c.max || !c.reserve(need) {
			c.over = true
		} else {
			c.buf.Write(b)
		}
	}
	return c.ResponseWriter.Write(b)
}

// reserve makes sure the budget reserved covers need bytes, reserving it
// in steps of 64KiB (up to max).
func (c *capture) reserve(need int) bool {
	if need <= c.reserved {
		return true
	}
	step := min(max(need-c.reserved, 64<<10), c.max-c.reserved)
	if c.ctx == nil || !gateway.TryReserveBody(c.ctx, int64(step)) {
		return c.ctx == nil
	}
	c.reserved += step
	return true
}

// body returns the captured body and whether it is the whole body.
func (c *capture) body() ([]byte, bool) {
	if c.over {
		return nil, false
	}
	if c.buf == nil {
		return nil, true
	}
	return c.buf.Bytes(), true
}

func (c *capture) release() {
	if c.buf != nil && c.buf.Cap() <= 1<<20 {
		bufPool.Put(c.buf)
	}
	c.buf = nil
}

func (c *capture) Flush() {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	http.NewResponseController(c.ResponseWriter).Flush()
}

func (c *capture) Unwrap() http.ResponseWriter { return c.ResponseWriter }
