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

	"github.com/omnigate/omnigate/builtin/fhir/access"
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
	if err := checkUTF8(body); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
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
	// The fullUrls that other entries of a transaction may link to.
	var fullURLs map[string]bool
	if b.Type == "transaction" {
		fullURLs = make(map[string]bool, len(b.Entry))
		for _, e := range b.Entry {
			if e.FullURL != "" {
				fullURLs[e.FullURL] = true
			}
		}
	}
	entries := make([]*bundleEntry, len(b.Entry))
	parallel(len(entries), func(i int) { entries[i] = h.parseEntry(i, &b.Entry[i], req.checks, fullURLs) })
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

// parseEntry reads an entry's request and resource, and finds the links
// of the resource to rewrite: to the fullUrls of the other entries of a
// transaction, and conditional references.
func (h *Handler) parseEntry(i int, in *inEntry, c checks, fullURLs map[string]bool) *bundleEntry {
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
	o := &op{method: method, typ: segs[0], ifMatch: rq.IfMatch, ifNoneExist: rq.IfNoneExist, where: where, label: e.label(),
		index: i, fullURL: in.FullURL}
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
		p, err := h.parseResource(in.Resource, o.typ, where, c)
		if err != nil {
			prefixExpressions(err, i)
			e.err = err
			return e
		}
		p.links = collectLinks(p.raw, p.typ, fullURLs)
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
// links to the entries' fullUrls rewritten to the ids the entries get and
// conditional references to the resources they find, then runs the reads.
// Any failure rolls everything back.
func (h *Handler) transaction(ctx context.Context, req *request, entries []*bundleEntry) ([]byte, error) {
	results := make([]*result, len(entries))
	// Without conditions every id is known now: rewrite and index the
	// resources on all cores before taking the write lock.
	prepared := !hasConditions(entries)
	if prepared {
		refs, _, err := h.resolveIDs(ctx, nil, entries)
		if err != nil {
			return nil, err
		}
		if err := prepareEntries(entries, refs, nil); err != nil {
			return nil, err
		}
	}
	err := h.bulkUpdate(ctx, func(tx store.Tx) error {
		now := h.now()
		if prepared {
			if err := prefetch(ctx, tx, entries); err != nil {
				return err
			}
		} else {
			// Conditions are searched in the transaction, against the
			// store as it is before the transaction writes: the outcome
			// does not depend on the order of the entries.
			refs, matched, err := h.resolveIDs(ctx, tx, entries)
			if err != nil {
				return err
			}
			ops := make([]*op, len(entries))
			for i, e := range entries {
				ops[i] = e.op
			}
			cond, err := h.resolveCondRefs(ctx, tx, ops, matched)
			if err != nil {
				return err
			}
			if err := prepareEntries(entries, refs, cond); err != nil {
				return err
			}
			if err := prefetch(ctx, tx, entries); err != nil {
				return err
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

// hasConditions reports whether an entry needs a search: to know its id
// (a conditional create or update) or to resolve one of its conditional
// references.
func hasConditions(entries []*bundleEntry) bool {
	for _, e := range entries {
		o := e.op
		if o == nil {
			continue
		}
		if o.ifNoneExist != "" || o.cond != nil && o.method == http.MethodPut || o.res != nil && hasConditionalRefs(o.res) {
			return true
		}
	}
	return false
}

// hasConditionalRefs reports whether p has a conditional reference.
func hasConditionalRefs(p *parsed) bool {
	for i := range p.links {
		if p.links[i].kind == kindRef && isConditionalRef(p.links[i].value) {
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

// prepareEntries rewrites the links of the entries' resources (fullUrls
// to refs, conditional references to cond), computes their index entries
// and splits them for stamp, in parallel.
func prepareEntries(entries []*bundleEntry, refs, cond map[string]string) error {
	errs := make([]error, len(entries))
	parallel(len(entries), func(i int) {
		o := entries[i].op
		if o == nil || o.res == nil {
			return
		}
		o.res.rewriteLinks(refs, cond)
		if o.id != "" {
			o.res.index(o.id)
		}
		errs[i] = o.res.prepareStamp()
	})
	for i, err := range errs {
		if err != nil {
			prefixEntry(err, entries[i].index)
			return err
		}
	}
	return nil
}

// resolveIDs settles the id every write entry will have (running the
// conditions of conditional creates and updates) and maps the entries'
// fullUrls to "Type/id" for rewriting (refs). matched maps the criteria of
// those conditional entries ("Type?query", the query in a canonical order)
// to the resource they settled on, for conditional references with the
// same criteria.
func (h *Handler) resolveIDs(ctx context.Context, tx store.Tx, entries []*bundleEntry) (refs, matched map[string]string, err error) {
	refs, matched = map[string]string{}, map[string]string{}
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
				return nil, nil, err
			}
		}
		var crit url.Values
		switch {
		case o.method == http.MethodPost && o.ifNoneExist != "":
			if crit, err = ifNoneExistCriteria(o.typ, o.ifNoneExist, o.where); err != nil {
				prefixEntry(err, e.index)
				return nil, nil, err
			}
			found, err := h.matchOne(ctx, tx, g, o.typ, crit, o.where)
			if err != nil {
				prefixEntry(err, e.index)
				return nil, nil, err
			}
			if found != nil {
				o.id = found.ID
			}
		case o.method == http.MethodPut && o.cond != nil:
			crit = o.cond
			found, err := h.matchOne(ctx, tx, g, o.typ, crit, o.where)
			if err != nil {
				prefixEntry(err, e.index)
				return nil, nil, err
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
		if crit != nil {
			matched[o.typ+"?"+crit.Encode()] = o.typ + "/" + o.id
		}
		if e.fullURL != "" && o.id != "" && (o.method == http.MethodPost || o.method == http.MethodPut) {
			refs[e.fullURL] = o.typ + "/" + o.id
		}
	}
	return refs, matched, nil
}

// resolveCondRefs resolves the conditional references of the resources
// of ops ("Practitioner?identifier=…") in tx, each distinct one once, and
// maps them to the "Type/id" of the one resource each selects. A reference
// whose criteria are those of a conditional create or update of the same
// transaction (matched, see resolveIDs) is that entry's resource; any
// other is searched among the stored resources, under the access policy on
// ctx: it needs the search permission on its type and sees only what the
// policy lets the caller search, so that it reveals nothing a search would
// not. No match is a 404, several a 412, bad criteria a 400 (see
// conditionQuery); the error names the entry, its fullUrl and the element.
func (h *Handler) resolveCondRefs(ctx context.Context, tx store.Tx, ops []*op, matched map[string]string) (map[string]string, error) {
	var cond map[string]string
	for _, o := range ops {
		if o == nil || o.res == nil {
			continue
		}
		for i := range o.res.links {
			s := &o.res.links[i]
			if s.kind != kindRef || !isConditionalRef(s.value) {
				continue
			}
			if _, done := cond[s.value]; done {
				continue
			}
			to, err := h.resolveCondRef(ctx, tx, o, s, matched)
			if err != nil {
				return nil, err
			}
			if cond == nil {
				cond = map[string]string{}
			}
			cond[s.value] = to
		}
	}
	return cond, nil
}

// resolveCondRef resolves one conditional reference of o's resource.
func (h *Handler) resolveCondRef(ctx context.Context, tx store.Tx, o *op, s *linkSite, matched map[string]string) (to string, err error) {
	src := o.res.src
	if src == nil {
		src = o.res.raw
	}
	elem := formatPath(src, o.res.typ, s.path)
	where := fmt.Sprintf("%sthe conditional reference %q at %s: ", o.entryName(), s.value, elem)
	defer func() {
		// Locate every issue at the element.
		var he *httpError
		if errors.As(err, &he) && o.label != "" {
			loc := fmt.Sprintf("Bundle.entry[%d].resource%s", o.index, strings.TrimPrefix(elem, o.res.typ))
			for i := range he.issues {
				he.issues[i].Expression = []string{loc}
			}
		}
	}()
	typ, query, _ := strings.Cut(s.value, "?")
	crit, err := url.ParseQuery(query)
	if err != nil {
		return "", errorf(http.StatusBadRequest, "%sbad query: %v", where, err)
	}
	if to, ok := matched[typ+"?"+crit.Encode()]; ok {
		return to, nil
	}
	g, err := h.guardFor(ctx, access.Search, typ, where+"resolving it needs a search of "+typ+": ")
	if err != nil {
		return "", err
	}
	found, err := h.matchOne(ctx, tx, g, typ, crit, where)
	if err != nil {
		return "", err
	}
	if found == nil {
		return "", errorf(http.StatusNotFound, "%sno %s matches", where, typ)
	}
	return typ + "/" + found.ID, nil
}

// entryName names o's Bundle entry in messages: its index and fullUrl
// ("entry[3] (fullUrl urn:uuid:…): "), else its request.
func (o *op) entryName() string {
	switch {
	case o.label == "":
		return o.where
	case o.fullURL != "":
		return fmt.Sprintf("entry[%d] (fullUrl %s): ", o.index, o.fullURL)
	}
	return o.refusal()
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

// batch runs each entry on its own; failures are reported in their entry.
func (h *Handler) batch(ctx context.Context, req *request, entries []*bundleEntry) []byte {
	results := make([]*result, len(entries))
	for _, e := range entries {
		if e.err != nil || e.op == nil {
			continue
		}
		// A conditional reference is resolved in the entry's own
		// transaction: one that fails fails its entry alone.
		e.op.resolveRefs = e.op.res != nil && hasConditionalRefs(e.op.res)
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
