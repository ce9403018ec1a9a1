package fhir

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/gateway/outcome"
)

type inBundle struct {
	ResourceType string    `json:"resourceType"`
	Type         string    `json:"type"`
	Entry        []inEntry `json:"entry"`
}

type inEntry struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource"`
	Request  *struct {
		Method          string `json:"method"`
		URL             string `json:"url"`
		IfNoneMatch     string `json:"ifNoneMatch"`
		IfModifiedSince string `json:"ifModifiedSince"`
		IfMatch         string `json:"ifMatch"`
		IfNoneExist     string `json:"ifNoneExist"`
	} `json:"request"`
}

// bundleEntry is one parsed entry: a write op, or a read (GET).
type bundleEntry struct {
	index   int
	fullURL string
	op      *op
	get     string // for GET: the URL below the base
	headers http.Header
	err     error // a parse error (batch: reported in its entry)
	// method and url are the entry's request, for messages.
	method, url string
}

// label names the entry in refusals: "entry[3] (DELETE Patient/1): ".
func (e *bundleEntry) label() string {
	return fmt.Sprintf("entry[%d] (%s %s): ", e.index, e.method, e.url)
}

// bundle processes a batch or transaction Bundle POSTed to the base.
func (h *Handler) bundle(w http.ResponseWriter, req *request) error {
	body, err := h.readBody(req.Request)
	if err != nil {
		return err
	}
	var b inBundle
	if err := json.Unmarshal(body, &b); err != nil {
		if _, jerr := decodeJSON(body); jerr != nil {
			return errorf(http.StatusBadRequest, "%v", jerr)
		}
		return errorf(http.StatusBadRequest, "malformed Bundle: %v", err)
	}
	if b.ResourceType != "Bundle" {
		return locErr(http.StatusBadRequest, "resourceType", fmt.Sprintf("POST to the base takes a Bundle, not %q", b.ResourceType))
	}
	entries := make([]*bundleEntry, len(b.Entry))
	parallel(len(entries), func(i int) { entries[i] = h.parseEntry(i, &b.Entry[i], req.trusted) })
	switch b.Type {
	case "transaction":
		for _, e := range entries {
			if e.err != nil {
				return e.err
			}
		}
		// One entry the policy refuses refuses the whole transaction.
		if err := h.decideEntries(req.Context(), entries); err != nil {
			return err
		}
		out, err := h.transaction(req.Context(), req, entries)
		if err != nil {
			return err
		}
		return h.writeRaw(w, req, http.StatusOK, out)
	case "batch":
		return h.writeRaw(w, req, http.StatusOK, h.batch(req.Context(), req, entries))
	}
	return locErr(http.StatusBadRequest, "Bundle.type", fmt.Sprintf("a Bundle POSTed to the base must be a transaction or a batch, not %q", b.Type))
}

// parseEntry reads an entry's request and resource.
func (h *Handler) parseEntry(i int, in *inEntry, trusted bool) *bundleEntry {
	where := fmt.Sprintf("entry[%d]: ", i)
	e := &bundleEntry{index: i, fullURL: in.FullURL}
	fail := func(status int, format string, args ...any) *bundleEntry {
		he := errorf(status, where+format, args...)
		he.issues[0].Expression = []string{fmt.Sprintf("Bundle.entry[%d]", i)}
		e.err = he
		return e
	}
	if in.Request == nil || in.Request.Method == "" || in.Request.URL == "" {
		return fail(http.StatusBadRequest, "request.method and request.url are required")
	}
	rq := in.Request
	method := strings.ToUpper(rq.Method)
	e.method, e.url = method, rq.URL
	u, err := url.Parse(strings.TrimPrefix(rq.URL, "/"))
	if err != nil {
		return fail(http.StatusBadRequest, "bad request.url %q", rq.URL)
	}
	if method == http.MethodGet || method == http.MethodHead {
		e.get = u.String()
		e.headers = http.Header{}
		if rq.IfNoneMatch != "" {
			e.headers.Set("If-None-Match", rq.IfNoneMatch)
		}
		if rq.IfModifiedSince != "" {
			e.headers.Set("If-Modified-Since", rq.IfModifiedSince)
		}
		return e
	}
	segs := strings.Split(strings.Trim(u.Path, "/"), "/")
	if !spec.IsResourceType(segs[0]) {
		return fail(http.StatusNotFound, "unknown resource type %q in request.url", segs[0])
	}
	o := &op{method: method, typ: segs[0], ifMatch: rq.IfMatch, ifNoneExist: rq.IfNoneExist, where: where, label: e.label()}
	switch {
	case len(segs) == 2 && validID(segs[1]):
		o.id = segs[1]
	case len(segs) == 1 && u.RawQuery != "":
		if o.cond, err = url.ParseQuery(u.RawQuery); err != nil {
			return fail(http.StatusBadRequest, "bad query in request.url: %v", err)
		}
	case len(segs) == 1:
	default:
		return fail(http.StatusBadRequest, "request.url %q is not [type], [type]/[id] or [type]?criteria", rq.URL)
	}
	switch method {
	case http.MethodPost:
		if o.id != "" || o.cond != nil {
			return fail(http.StatusBadRequest, "POST takes request.url [type]")
		}
	case http.MethodPut, http.MethodDelete, http.MethodPatch:
		if o.id == "" && o.cond == nil {
			return fail(http.StatusBadRequest, "%s needs request.url [type]/[id] or [type]?criteria", method)
		}
	default:
		return fail(http.StatusMethodNotAllowed, "unsupported method %q", rq.Method)
	}
	switch method {
	case http.MethodPost, http.MethodPut:
		p, err := h.parseResource(in.Resource, o.typ, where, trusted)
		if err != nil {
			prefixExpressions(err, i)
			e.err = err
			return e
		}
		o.res = p
		if method == http.MethodPost {
			o.id = newID()
		}
	case http.MethodPatch:
		// A Binary resource holding the JSON Patch, or the patch itself;
		// or a Parameters resource, a FHIRPath Patch.
		o.patch = in.Resource
		var bin struct {
			ResourceType string `json:"resourceType"`
			Data         []byte `json:"data"`
		}
		if json.Unmarshal(in.Resource, &bin) == nil && bin.ResourceType == "Binary" {
			o.patch = bin.Data
		}
		if bin.ResourceType == "Parameters" {
			fp, err := parseFHIRPatch(in.Resource)
			if err != nil {
				return fail(http.StatusBadRequest, "%v", err)
			}
			o.fhirPatch = fp
		}
	}
	e.op = o
	return e
}

// prefixExpressions roots the issue locations of an entry's error at the
// entry.
func prefixExpressions(err error, i int) {
	var he *httpError
	if !errors.As(err, &he) {
		return
	}
	for j := range he.issues {
		if len(he.issues[j].Expression) == 0 {
			he.issues[j].Expression = []string{fmt.Sprintf("Bundle.entry[%d]", i)}
			continue
		}
		for k, x := range he.issues[j].Expression {
			he.issues[j].Expression[k] = fmt.Sprintf("Bundle.entry[%d].resource.%s", i, x)
		}
	}
}

// methodOrder is the order transactions process entries in.
var methodOrder = map[string]int{http.MethodDelete: 0, http.MethodPost: 1, http.MethodPut: 2, http.MethodPatch: 3}

// transaction applies all write entries in one store transaction, with
// references to the entries' fullUrls rewritten to the ids they get, then
// runs the reads. Any failure rolls everything back.
func (h *Handler) transaction(ctx context.Context, req *request, entries []*bundleEntry) ([]byte, error) {
	results := make([]*result, len(entries))
	// Without conditional entries every id is known now: rewrite and index
	// the resources on all cores before taking the write lock.
	prepared := !hasConditions(entries)
	if prepared {
		refs, err := h.resolveIDs(ctx, nil, entries)
		if err != nil {
			return nil, err
		}
		prepareEntries(entries, refs)
		for _, e := range entries {
			if e.err != nil {
				prefixEntry(e.err, e.index)
				return nil, e.err
			}
		}
	}
	err := h.store.Update(ctx, func(tx store.Tx) error {
		now := h.now()
		if !prepared {
			refs, err := h.resolveIDs(ctx, tx, entries)
			if err != nil {
				return err
			}
			for _, e := range entries {
				if e.op != nil && e.op.res != nil && len(refs) > 0 {
					e.op.res.raw = rewriteRefs(e.op.res.raw, refs)
					rewriteTree(e.op.res.tree, refs)
				}
			}
		}
		for m := 0; m <= 3; m++ {
			for _, e := range entries {
				if e.op == nil || methodOrder[e.op.method] != m {
					continue
				}
				r, err := h.apply(ctx, tx, e.op, now)
				if err != nil {
					prefixEntry(err, e.index)
					return err
				}
				results[e.index] = r
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	h.notifyResults(ctx, results)
	return h.bundleResponse(ctx, req, "transaction-response", entries, results), nil
}

// hasConditions reports whether an entry needs a search to know its id.
func hasConditions(entries []*bundleEntry) bool {
	for _, e := range entries {
		if o := e.op; o != nil && (o.ifNoneExist != "" || o.cond != nil && o.method == http.MethodPut) {
			return true
		}
	}
	return false
}

// parallel runs f(0) … f(n-1) on all cores.
func parallel(n int, f func(i int)) {
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(n, runtime.GOMAXPROCS(0)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				f(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
}

// prepareEntries rewrites the references of the entries' resources,
// computes their index entries and splits them for stamp, in parallel.
func prepareEntries(entries []*bundleEntry, refs map[string]string) {
	parallel(len(entries), func(i int) {
		e := entries[i]
		o := e.op
		if o == nil || o.res == nil {
			return
		}
		if len(refs) > 0 {
			o.res.raw = rewriteRefs(o.res.raw, refs)
			rewriteTree(o.res.tree, refs)
		}
		if o.id != "" {
			o.res.index(o.id)
		}
		e.err = o.res.prepareStamp()
	})
}

// resolveIDs settles the id every write entry will have (running the
// conditions of conditional creates and updates) and maps the entries'
// fullUrls to "Type/id" for reference rewriting.
func (h *Handler) resolveIDs(ctx context.Context, tx store.Tx, entries []*bundleEntry) (map[string]string, error) {
	refs := map[string]string{}
	for _, e := range entries {
		if e.op == nil {
			continue
		}
		o := e.op
		var g *guard
		if o.method == http.MethodPost && o.ifNoneExist != "" || o.method == http.MethodPut && o.cond != nil {
			var err error
			if g, err = h.guard(ctx, o); err != nil {
				prefixEntry(err, e.index)
				return nil, err
			}
		}
		switch {
		case o.method == http.MethodPost && o.ifNoneExist != "":
			crit, err := url.ParseQuery(o.ifNoneExist)
			if err != nil {
				err := errorf(http.StatusBadRequest, "%sbad ifNoneExist: %v", o.where, err)
				prefixEntry(err, e.index)
				return nil, err
			}
			found, err := h.matchOne(ctx, tx, g, o.typ, crit, o.where)
			if err != nil {
				prefixEntry(err, e.index)
				return nil, err
			}
			if found != nil {
				o.id = found.ID
			}
		case o.method == http.MethodPut && o.cond != nil:
			found, err := h.matchOne(ctx, tx, g, o.typ, o.cond, o.where)
			if err != nil {
				prefixEntry(err, e.index)
				return nil, err
			}
			switch bodyID, _ := o.res.tree["id"].(string); {
			case found != nil:
				o.id = found.ID
			case bodyID != "":
				o.id = bodyID
			default:
				o.id = newID()
			}
		}
		if e.fullURL != "" && o.id != "" && (o.method == http.MethodPost || o.method == http.MethodPut) {
			refs[e.fullURL] = o.typ + "/" + o.id
		}
	}
	return refs, nil
}

// prefixEntry adds the entry's location to issues that have none.
func prefixEntry(err error, i int) {
	var he *httpError
	if errors.As(err, &he) {
		for j := range he.issues {
			if len(he.issues[j].Expression) == 0 {
				he.issues[j].Expression = []string{fmt.Sprintf("Bundle.entry[%d]", i)}
			}
		}
	}
}

// rewriteTree replaces string values equal to a key of refs, in place.
func rewriteTree(v any, refs map[string]string) any {
	switch x := v.(type) {
	case string:
		if to, ok := refs[x]; ok {
			return to
		}
	case map[string]any:
		for k, e := range x {
			x[k] = rewriteTree(e, refs)
		}
	case []any:
		for i, e := range x {
			x[i] = rewriteTree(e, refs)
		}
	}
	return v
}

// batch runs each entry on its own; failures are reported in their entry.
func (h *Handler) batch(ctx context.Context, req *request, entries []*bundleEntry) []byte {
	results := make([]*result, len(entries))
	for _, e := range entries {
		if e.err != nil || e.op == nil {
			continue
		}
		rs, err := h.commit(ctx, e.op)
		if err != nil {
			prefixEntry(err, e.index)
			e.err = err
			continue
		}
		results[e.index] = rs[0]
	}
	return h.bundleResponse(ctx, req, "batch-response", entries, results)
}

// bundleResponse builds the response Bundle; reads run now.
func (h *Handler) bundleResponse(ctx context.Context, req *request, typ string, entries []*bundleEntry, results []*result) []byte {
	out := make([]entry, len(entries))
	for i, e := range entries {
		switch {
		case e.err != nil:
			he := asHTTPError(e.err)
			if he == nil {
				he = errorf(http.StatusInternalServerError, "internal error")
			}
			oo, _ := json.Marshal(outcome.Of(he.issues...))
			out[i].response = &entryResponse{Status: statusLine(he.status), Outcome: oo}
		case e.op == nil:
			out[i] = h.subRead(ctx, req, e)
		default:
			out[i] = h.entryFor(req, e, results[i])
		}
	}
	return writeBundle(h.now(), typ, -1, nil, out)
}

func statusLine(status int) string {
	return strconv.Itoa(status) + " " + http.StatusText(status)
}

func (h *Handler) entryFor(req *request, e *bundleEntry, r *result) entry {
	var out entry
	resp := &entryResponse{Status: statusLine(r.status)}
	if v := r.v; v != nil {
		resp.Etag = etag(v.Version)
		resp.LastModified = v.Updated.UTC().Format(time.RFC3339Nano)
		if !v.Deleted {
			out.fullURL = req.base + "/" + v.Type + "/" + v.ID
			resp.Location = v.Type + "/" + v.ID + "/_history/" + strconv.FormatInt(v.Version, 10)
			if req.prefer.ret == "representation" {
				out.resource = v.Body
			}
		}
	}
	out.response = resp
	return out
}

// subRead serves a GET entry through the handler itself.
func (h *Handler) subRead(ctx context.Context, req *request, e *bundleEntry) entry {
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/"+e.get, nil)
	if err != nil {
		oo, _ := json.Marshal(outcome.New(http.StatusBadRequest, "bad request.url"))
		return entry{response: &entryResponse{Status: statusLine(http.StatusBadRequest), Outcome: oo}}
	}
	r.Host = req.Host
	r.TLS = req.TLS
	for k, v := range e.headers {
		r.Header[k] = v
	}
	if p := req.Header.Get("X-Forwarded-Proto"); p != "" {
		r.Header.Set("X-Forwarded-Proto", p)
	}
	cw := &captureWriter{header: http.Header{}}
	h.ServeHTTP(cw, r)
	status := cw.status
	if status == 0 {
		status = http.StatusOK
	}
	resp := &entryResponse{Status: statusLine(status), Etag: cw.header.Get("ETag")}
	if lm := cw.header.Get("Last-Modified"); lm != "" {
		if t, err := http.ParseTime(lm); err == nil {
			resp.LastModified = t.UTC().Format(time.RFC3339)
		}
	}
	out := entry{response: resp}
	body := bytes.TrimSpace(cw.body.Bytes())
	switch {
	case status >= 400:
		resp.Outcome = body
	case len(body) > 0:
		out.resource = body
	}
	return out
}

// captureWriter records a response in memory.
type captureWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (c *captureWriter) Header() http.Header { return c.header }
func (c *captureWriter) WriteHeader(s int) {
	if c.status == 0 {
		c.status = s
	}
}
func (c *captureWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return c.body.Write(b)
}
