package fhir

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/gateway/outcome"
)

func (h *Handler) read(w http.ResponseWriter, req *request, typ, id string) error {
	v, err := h.readCurrent(req.Context(), w, typ, id)
	if err != nil {
		return err
	}
	return h.writeVersion(w, req, http.StatusOK, v)
}

// readCurrent is the current version of typ/id as the policy on ctx lets
// the caller read it: 404 when it does not exist or is out of reach, 410
// when it was deleted (its version headers set on w).
func (h *Handler) readCurrent(ctx context.Context, w http.ResponseWriter, typ, id string) (*store.Version, error) {
	g, err := h.guardFor(ctx, access.Read, typ, "")
	if err != nil {
		return nil, err
	}
	if g.constrained() {
		return h.readGuarded(ctx, w, g, typ, id)
	}
	v, err := h.store.Read(ctx, typ, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errorf(http.StatusNotFound, "%s/%s is not known", typ, id)
	}
	if err != nil {
		return nil, err
	}
	if v.Deleted {
		versionHeaders(w, v)
		return nil, errorf(http.StatusGone, "%s/%s was deleted", typ, id)
	}
	return v, nil
}

func (h *Handler) vread(w http.ResponseWriter, req *request, typ, id string, vid int64) error {
	g, err := h.guardFor(req.Context(), access.Read, typ, "")
	if err != nil {
		return err
	}
	v, err := h.store.VRead(req.Context(), typ, id, vid)
	if errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusNotFound, "%s/%s has no version %d", typ, id, vid)
	}
	if err != nil {
		return err
	}
	if ok, err := h.seesVersion(req.Context(), h.store, g, v); err != nil {
		return err
	} else if !ok {
		return errorf(http.StatusNotFound, "%s/%s has no version %d", typ, id, vid)
	}
	if v.Deleted {
		versionHeaders(w, v)
		return errorf(http.StatusGone, "version %d of %s/%s is a deletion", vid, typ, id)
	}
	return h.writeVersion(w, req, http.StatusOK, v)
}

// notModified answers conditional reads (If-None-Match, If-Modified-Since).
func notModified(r *http.Request, v *store.Version) bool {
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		for _, t := range strings.Split(inm, ",") {
			if n, ok := parseETag(t); ok && n == v.Version || strings.TrimSpace(t) == "*" {
				return true
			}
		}
		return false
	}
	if ims := r.Header.Get("If-Modified-Since"); ims != "" {
		if t, err := http.ParseTime(ims); err == nil && !v.Updated.Truncate(time.Second).After(t) {
			return true
		}
	}
	return false
}

// writeVersion sends a resource with its ETag and Last-Modified, honouring
// conditional reads, _summary and _elements.
func (h *Handler) writeVersion(w http.ResponseWriter, req *request, status int, v *store.Version) error {
	versionHeaders(w, v)
	if status == http.StatusOK && (req.Method == http.MethodGet || req.Method == http.MethodHead) && notModified(req.Request, v) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	body := v.Body
	summary, elems := req.query.Get("_summary"), elementsParam(req.query)
	if summary != "" || len(elems) > 0 {
		var err error
		if body, err = subset(v.Type, body, summary, elems); err != nil {
			return err
		}
	}
	return h.writeRaw(w, req, status, body)
}

func elementsParam(q url.Values) []string {
	var out []string
	for _, v := range q["_elements"] {
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				out = append(out, e)
			}
		}
	}
	return out
}

// location is the versioned URL of v.
func location(base string, v *store.Version) string {
	return base + "/" + v.Type + "/" + v.ID + "/_history/" + strconv.FormatInt(v.Version, 10)
}

// respondWrite answers a create, update, patch or delete as Prefer asks.
func (h *Handler) respondWrite(w http.ResponseWriter, req *request, r *result) error {
	if r.v == nil || r.v.Deleted {
		if r.v != nil {
			versionHeaders(w, r.v)
		}
		if req.prefer.ret == "OperationOutcome" {
			msg := "deleted"
			if r.write == nil {
				msg = "nothing to delete"
			}
			return h.writeOutcome(w, req, http.StatusOK, msg)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	versionHeaders(w, r.v)
	if r.status == http.StatusCreated || req.Method == http.MethodPut || req.Method == http.MethodPatch {
		loc := location(req.base, r.v)
		if r.status == http.StatusCreated {
			w.Header().Set("Location", loc)
		}
		w.Header().Set("Content-Location", loc)
	}
	switch req.prefer.ret {
	case "minimal":
		w.WriteHeader(r.status)
		return nil
	case "OperationOutcome":
		msg := "updated"
		switch {
		case r.write == nil:
			msg = "a matching resource exists; nothing was created"
		case r.status == http.StatusCreated:
			msg = "created"
		}
		return h.writeOutcome(w, req, r.status, msg)
	}
	return h.writeRaw(w, req, r.status, r.v.Body)
}

func (h *Handler) writeOutcome(w http.ResponseWriter, req *request, status int, msg string) error {
	oo := outcome.Of(outcome.Issue{Severity: "information", Code: "informational", Diagnostics: msg})
	outcome.Write(w, status, oo)
	return nil
}

// runOp commits one write and answers it.
func (h *Handler) runOp(w http.ResponseWriter, req *request, o *op) error {
	rs, err := h.commit(req.Context(), o)
	if err != nil {
		return err
	}
	return h.respondWrite(w, req, rs[0])
}

// bodyResource reads and checks the resource a request carries.
func (h *Handler) bodyResource(req *request, typ string) (*parsed, error) {
	body, err := h.readBody(req.Request)
	if err != nil {
		return nil, err
	}
	return h.parseResource(body, typ, "", req.checks)
}

func (h *Handler) create(w http.ResponseWriter, req *request, typ string) error {
	p, err := h.bodyResource(req, typ)
	if err != nil {
		return err
	}
	return h.runOp(w, req, &op{method: http.MethodPost, typ: typ, res: p, ifNoneExist: req.Header.Get("If-None-Exist")})
}

func (h *Handler) update(w http.ResponseWriter, req *request, typ, id string) error {
	p, err := h.bodyResource(req, typ)
	if err != nil {
		return err
	}
	return h.runOp(w, req, &op{method: http.MethodPut, typ: typ, id: id, res: p, ifMatch: req.Header.Get("If-Match")})
}

// criteria returns the search parameters of a conditional request, or 400
// when there are none.
func criteria(req *request, what string) (url.Values, error) {
	crit := url.Values{}
	for k, v := range req.query {
		if k != "_format" && k != "_pretty" {
			crit[k] = v
		}
	}
	if len(crit) == 0 {
		return nil, errorf(http.StatusBadRequest, "a %s needs search criteria in the query string", what)
	}
	return crit, nil
}

func (h *Handler) conditionalUpdate(w http.ResponseWriter, req *request, typ string) error {
	crit, err := criteria(req, "conditional update (PUT [type]?criteria)")
	if err != nil {
		return err
	}
	p, err := h.bodyResource(req, typ)
	if err != nil {
		return err
	}
	return h.runOp(w, req, &op{method: http.MethodPut, typ: typ, cond: crit, res: p, ifMatch: req.Header.Get("If-Match")})
}

func (h *Handler) patch(w http.ResponseWriter, req *request, typ, id string) error {
	body, fp, err := h.patchBody(req)
	if err != nil {
		return err
	}
	return h.runOp(w, req, &op{method: http.MethodPatch, typ: typ, id: id, patch: body, fhirPatch: fp, ifMatch: req.Header.Get("If-Match")})
}

func (h *Handler) conditionalPatch(w http.ResponseWriter, req *request, typ string) error {
	crit, err := criteria(req, "conditional patch (PATCH [type]?criteria)")
	if err != nil {
		return err
	}
	body, fp, err := h.patchBody(req)
	if err != nil {
		return err
	}
	return h.runOp(w, req, &op{method: http.MethodPatch, typ: typ, cond: crit, patch: body, fhirPatch: fp, ifMatch: req.Header.Get("If-Match")})
}

func (h *Handler) delete(w http.ResponseWriter, req *request, typ, id string) error {
	return h.runOp(w, req, &op{method: http.MethodDelete, typ: typ, id: id, ifMatch: req.Header.Get("If-Match")})
}

func (h *Handler) conditionalDelete(w http.ResponseWriter, req *request, typ string) error {
	crit, err := criteria(req, "conditional delete (DELETE [type]?criteria)")
	if err != nil {
		return err
	}
	return h.runOp(w, req, &op{method: http.MethodDelete, typ: typ, cond: crit, ifMatch: req.Header.Get("If-Match")})
}
