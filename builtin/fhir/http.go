package fhir

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/gateway/outcome"
)

type issue = outcome.Issue

func newIssue(status int, msg string) issue {
	return issue{Severity: outcome.SeverityFor(status), Code: outcome.CodeFor(status), Diagnostics: msg}
}

// ContentType is the media type of every response body.
const ContentType = outcome.ContentType

// request is what ServeHTTP works out about a request before dispatching.
type request struct {
	*http.Request
	segs    []string // path below the base, split at '/'
	query   url.Values
	base    string // absolute base URL
	prefer  preferences
	pretty  bool
	summary string // _summary on reads
	elems   []string
	// checks is the validation its writes get: none for the gateway's
	// plugins (in process), the schema only under SkipValidation.
	checks checks
}

type preferences struct {
	ret    string // minimal, representation, OperationOutcome
	strict bool   // handling=strict
	// lenient: handling=lenient
	lenient bool
}

func parsePrefer(h []string) preferences {
	var p preferences
	for _, v := range h {
		for _, part := range strings.Split(v, ",") {
			for _, kv := range strings.Split(part, ";") {
				k, val, _ := strings.Cut(strings.TrimSpace(kv), "=")
				val = strings.Trim(strings.TrimSpace(val), `"`)
				switch strings.TrimSpace(k) {
				case "return":
					p.ret = val
				case "handling":
					p.strict, p.lenient = val == "strict", val == "lenient"
				}
			}
		}
	}
	return p
}

// ServeHTTP serves the FHIR REST API under the base path.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.cors(w, r) {
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, h.base)
	if !ok || (rest != "" && rest[0] != '/') {
		h.fail(w, r, errorf(http.StatusNotFound, "%s is not under the FHIR base %s", r.URL.Path, h.base))
		return
	}
	req := &request{Request: r, query: r.URL.Query(), prefer: parsePrefer(r.Header.Values("Prefer"))}
	switch {
	case gateway.InProcess(r.Context()):
		req.checks = checkNone
	case skipsValidation(r.Context()):
		req.checks = checkSchema
	}
	if rest = strings.Trim(rest, "/"); rest != "" {
		req.segs = strings.Split(rest, "/")
	}
	if err := h.negotiate(req); err != nil {
		h.fail(w, r, err)
		return
	}
	req.base = h.baseURL(r)
	if err := h.dispatch(w, req); err != nil {
		h.fail(w, r, err)
	}
}

// storeRetryAfter is the Retry-After, in seconds, of the answers given
// while the store is unavailable.
const storeRetryAfter = "2"

// fail answers with err as an OperationOutcome.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	he := asHTTPError(err)
	if he == nil {
		// No resource content in the log: the error comes from the store.
		h.log.LogAttrs(r.Context(), slog.LevelError, "fhir request failed", slog.String("error", err.Error()), slog.String("method", r.Method))
		he = errorf(http.StatusInternalServerError, "internal error")
	}
	if he.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", storeRetryAfter)
	}
	if he.status == http.StatusMethodNotAllowed && w.Header().Get("Allow") == "" {
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
	}
	outcome.Write(w, he.status, outcome.Of(he.issues...))
}

// negotiate checks _format, Accept and the request's Content-Type.
func (h *Handler) negotiate(req *request) error {
	if f := req.query.Get("_format"); f != "" {
		switch strings.TrimSpace(strings.SplitN(f, ";", 2)[0]) {
		case "json", "application/json", "application/fhir+json":
		case "xml", "text/xml", "application/xml", "application/fhir+xml":
			return errorf(http.StatusNotAcceptable, "only JSON is supported (_format=%s)", f)
		default:
			return errorf(http.StatusNotAcceptable, "unsupported _format %q: use json", f)
		}
	} else if !acceptsJSON(req.Header.Values("Accept")) {
		return errorf(http.StatusNotAcceptable, "only application/fhir+json is served (Accept: %s)", strings.Join(req.Header.Values("Accept"), ", "))
	}
	req.pretty = req.query.Get("_pretty") == "true"
	if ct := req.Header.Get("Content-Type"); ct != "" && req.Method != http.MethodGet && req.Method != http.MethodHead && req.Method != http.MethodDelete {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil {
			return errorf(http.StatusUnsupportedMediaType, "bad Content-Type %q", ct)
		}
		switch mt {
		case "application/fhir+json", "application/json":
		case "application/json-patch+json":
			if req.Method != http.MethodPatch {
				return errorf(http.StatusUnsupportedMediaType, "%s is only accepted by PATCH", mt)
			}
		case "application/x-www-form-urlencoded":
			if req.Method != http.MethodPost || len(req.segs) == 0 || req.segs[len(req.segs)-1] != "_search" {
				return errorf(http.StatusUnsupportedMediaType, "form bodies are only accepted by POST [type]/_search")
			}
		default:
			return errorf(http.StatusUnsupportedMediaType, "unsupported Content-Type %q: send application/fhir+json", mt)
		}
	}
	return nil
}

// acceptsJSON reports whether an Accept header allows a JSON answer.
func acceptsJSON(vals []string) bool {
	if len(vals) == 0 {
		return true
	}
	for _, v := range vals {
		for _, part := range strings.Split(v, ",") {
			mt := strings.TrimSpace(strings.SplitN(part, ";", 2)[0])
			if mt == "" || mt == "*/*" || mt == "application/*" || strings.Contains(mt, "json") {
				return true
			}
		}
	}
	return false
}

// baseURL is the absolute URL of the base for links and Location headers.
func (h *Handler) baseURL(r *http.Request) string {
	if h.cfg.BaseURL != "" {
		return strings.TrimSuffix(h.cfg.BaseURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p == "https" || p == "http" {
		scheme = p
	}
	host := r.Host
	if host == "" {
		host = "localhost"
	}
	return scheme + "://" + host + h.base
}

// cors answers preflight requests and sets the CORS headers of allowed
// origins. It reports whether the request has been answered.
func (h *Handler) cors(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || len(h.origins) == 0 {
		return false
	}
	if !h.anyOrigin && !h.origins[origin] {
		return false
	}
	hd := w.Header()
	if h.anyOrigin {
		hd.Set("Access-Control-Allow-Origin", "*")
	} else {
		hd.Set("Access-Control-Allow-Origin", origin)
		hd.Add("Vary", "Origin")
	}
	hd.Set("Access-Control-Expose-Headers", "ETag, Location, Content-Location, Last-Modified, X-Request-Id")
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		hd.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		if rh := r.Header.Get("Access-Control-Request-Headers"); rh != "" {
			hd.Set("Access-Control-Allow-Headers", rh)
		} else {
			hd.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, If-Modified-Since")
		}
		hd.Set("Access-Control-Max-Age", strconv.Itoa(int(h.cfg.CORS.MaxAge/time.Second)))
		w.WriteHeader(http.StatusNoContent)
		return true
	}
	return false
}

func methodNotAllowed(method string, allow ...string) error {
	e := errorf(http.StatusMethodNotAllowed, "method %s is not allowed here (allowed: %s)", method, strings.Join(allow, ", "))
	return &allowError{e, strings.Join(allow, ", ")}
}

// allowError is a 405 that knows its Allow header.
type allowError struct {
	*httpError
	allow string
}

func (e *allowError) Unwrap() error { return e.httpError }

// dispatch routes by path shape and method.
func (h *Handler) dispatch(w http.ResponseWriter, req *request) error {
	err := h.route(w, req)
	var ae *allowError
	if asAllow(err, &ae) {
		w.Header().Set("Allow", ae.allow)
	}
	return err
}

func asAllow(err error, target **allowError) bool {
	ae, ok := err.(*allowError)
	if ok {
		*target = ae
	}
	return ok
}

func (h *Handler) route(w http.ResponseWriter, req *request) error {
	m := req.Method
	if m == http.MethodHead {
		m = http.MethodGet
	}
	segs := req.segs
	for _, s := range segs {
		if strings.HasPrefix(s, "$") {
			return h.operation(w, req, m)
		}
	}
	if len(segs) == 0 {
		switch m {
		case http.MethodPost:
			return h.bundle(w, req)
		case http.MethodGet:
			return h.systemSearch(w, req, req.query)
		}
		return methodNotAllowed(req.Method, "GET", "HEAD", "POST")
	}
	switch segs[0] {
	case "_search":
		if len(segs) == 1 && m == http.MethodPost {
			params, err := h.formParams(req)
			if err != nil {
				return err
			}
			return h.systemSearch(w, req, params)
		}
		return methodNotAllowed(req.Method, "POST")
	case "metadata":
		if len(segs) == 1 && m == http.MethodGet {
			return h.writeRaw(w, req, http.StatusOK, h.capJSON)
		}
		return methodNotAllowed(req.Method, "GET", "HEAD")
	case "_history":
		if len(segs) == 1 && m == http.MethodGet {
			return h.history(w, req, "", "")
		}
		return methodNotAllowed(req.Method, "GET", "HEAD")
	case ".well-known":
		if len(segs) != 2 || segs[1] != "smart-configuration" {
			return errorf(http.StatusNotFound, "no such document")
		}
		if m != http.MethodGet {
			return methodNotAllowed(req.Method, "GET", "HEAD")
		}
		if h.smartJSON == nil {
			return errorf(http.StatusNotFound, "SMART on FHIR is not configured on this server: fhir.smart must name the OAuth server (token_endpoint, authorization_endpoint) whose tokens the gateway accepts")
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=3600")
		w.Write(h.smartJSON)
		return nil
	}
	typ := segs[0]
	if !spec.IsResourceType(typ) {
		return errorf(http.StatusNotFound, "unknown resource type %q", typ)
	}
	switch len(segs) {
	case 1:
		switch m {
		case http.MethodGet:
			return h.search(w, req, typ, "", req.query)
		case http.MethodPost:
			return h.create(w, req, typ)
		case http.MethodPut:
			return h.conditionalUpdate(w, req, typ)
		case http.MethodDelete:
			return h.conditionalDelete(w, req, typ)
		case http.MethodPatch:
			return h.conditionalPatch(w, req, typ)
		}
		return methodNotAllowed(req.Method, "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
	case 2:
		switch segs[1] {
		case "_search":
			if m != http.MethodPost {
				return methodNotAllowed(req.Method, "POST")
			}
			params, err := h.formParams(req)
			if err != nil {
				return err
			}
			return h.search(w, req, typ, "", params)
		case "_history":
			if m != http.MethodGet {
				return methodNotAllowed(req.Method, "GET", "HEAD")
			}
			return h.history(w, req, typ, "")
		}
		id := segs[1]
		if !validID(id) {
			return errorf(http.StatusBadRequest, "invalid id %q: want 1-64 of A-Z a-z 0-9 - .", id)
		}
		switch m {
		case http.MethodGet:
			return h.read(w, req, typ, id)
		case http.MethodPut:
			return h.update(w, req, typ, id)
		case http.MethodPatch:
			return h.patch(w, req, typ, id)
		case http.MethodDelete:
			return h.delete(w, req, typ, id)
		}
		return methodNotAllowed(req.Method, "GET", "HEAD", "PUT", "PATCH", "DELETE")
	case 3:
		id := segs[1]
		if !validID(id) {
			return errorf(http.StatusBadRequest, "invalid id %q", id)
		}
		if segs[2] == "_history" {
			if m != http.MethodGet {
				return methodNotAllowed(req.Method, "GET", "HEAD")
			}
			return h.history(w, req, typ, id)
		}
		if typ == "Patient" && spec.IsResourceType(segs[2]) {
			if m != http.MethodGet {
				return methodNotAllowed(req.Method, "GET", "HEAD")
			}
			return h.search(w, req, segs[2], id, req.query)
		}
	case 4:
		if segs[2] == "_history" {
			if m != http.MethodGet {
				return methodNotAllowed(req.Method, "GET", "HEAD")
			}
			vid, err := strconv.ParseInt(segs[3], 10, 64)
			if err != nil || vid < 1 {
				return errorf(http.StatusNotFound, "no version %q", segs[3])
			}
			return h.vread(w, req, typ, segs[1], vid)
		}
	}
	if err := refuseUnknown(req.Context(), req.URL.Path); err != nil {
		return err
	}
	return errorf(http.StatusNotFound, "no FHIR endpoint at %s", req.URL.Path)
}

// formParams merges the query string and a form-encoded body (POST
// _search).
func (h *Handler) formParams(req *request) (url.Values, error) {
	body, err := h.readBody(req.Request)
	if err != nil {
		return nil, err
	}
	params := url.Values{}
	for k, v := range req.query {
		params[k] = append(params[k], v...)
	}
	if len(bytes.TrimSpace(body)) > 0 {
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "bad form body: %v", err)
		}
		for k, v := range form {
			params[k] = append(params[k], v...)
		}
	}
	return params, nil
}

// writeRaw sends a JSON body.
func (h *Handler) writeRaw(w http.ResponseWriter, req *request, status int, body []byte) error {
	if req.pretty {
		var b bytes.Buffer
		if json.Indent(&b, body, "", "  ") == nil {
			body = b.Bytes()
		}
	}
	hd := w.Header()
	hd.Set("Content-Type", ContentType)
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
	return nil
}

// versionHeaders sets ETag and Last-Modified for v.
func versionHeaders(w http.ResponseWriter, v *store.Version) {
	hd := w.Header()
	hd.Set("ETag", etag(v.Version))
	hd.Set("Last-Modified", v.Updated.UTC().Format(http.TimeFormat))
}

func etag(v int64) string { return `W/"` + strconv.FormatInt(v, 10) + `"` }

// parseETag reads W/"3", "3" or 3.
func parseETag(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "W/")
	s = strings.Trim(s, `"`)
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil && v > 0
}
