package fhir

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// op is one write: a create, update, patch or delete, from a request or a
// Bundle entry.
type op struct {
	method string // POST, PUT, PATCH or DELETE
	typ    string
	id     string // the target (PUT, PATCH, DELETE), or the id to give a POST
	// cond holds the criteria of a conditional update, patch or delete.
	cond url.Values
	// ifNoneExist is the query of a conditional create.
	ifNoneExist string
	// ifMatch is the If-Match header ("" for none).
	ifMatch string
	res     *parsed // POST and PUT
	patch   []byte  // PATCH (JSON Patch)
	where   string  // prefix of messages: "entry[3]: "
	// label prefixes refusals by the access policy: a Bundle entry's
	// index, method and URL ("entry[3] (PUT Observation/1): "), else where.
	label string
	// index is the Bundle entry's index (when label is set), fullURL its
	// fullUrl.
	index   int
	fullURL string
	// resolveRefs has the write resolve the conditional references of res
	// in its own transaction (a batch entry; a transaction resolves those
	// of all its entries before it writes).
	resolveRefs bool
	// fhirPatch is a PATCH's FHIRPath Patch, turned into a JSON Patch of
	// the whole resource when it applies.
	fhirPatch *fhirPatch
}

// refusal prefixes the messages of access refusals.
func (o *op) refusal() string {
	if o.label != "" {
		return o.label
	}
	return o.where
}

// guard decides the op under the policy on ctx (see entryPerm).
func (h *Handler) guard(ctx context.Context, o *op) (*guard, error) {
	return h.guardFor(ctx, entryPerm(o), o.typ, o.refusal())
}

// contains refuses a write whose new version v falls outside g: outside
// the compartment, or matching none of the scope constraints. It runs in
// the write's transaction, after the write, which the refusal rolls back.
func (h *Handler) contains(ctx context.Context, tx store.Tx, g *guard, o *op, v *store.Version) error {
	ok, err := h.sees(ctx, tx, g, v)
	if err != nil || ok {
		return err
	}
	return forbidden(o.refusal(), "the %s would be outside %s", o.typ, g.describe())
}

// mayTouch refuses to write over cur, an existing resource (a deletion
// included), when g does not reach it: the caller may not change what it
// may not see, and a write must not make a second resource of it either.
func (h *Handler) mayTouch(ctx context.Context, tx store.Tx, g *guard, o *op, cur *store.Version) error {
	ok, err := h.seesVersion(ctx, tx, g, cur)
	if err != nil || ok {
		return err
	}
	return forbidden(o.refusal(), "%s/%s is outside %s", cur.Type, cur.ID, g.describe())
}

// result is what an op did.
type result struct {
	status int
	v      *store.Version // the version written or found; nil after a no-op delete
	write  *Write         // nil when nothing was written
}

// commit runs ops in one transaction and reports the writes after it
// commits.
func (h *Handler) commit(ctx context.Context, ops ...*op) ([]*result, error) {
	results := make([]*result, len(ops))
	err := h.store.Update(ctx, func(tx store.Tx) error {
		now := h.now()
		for i, o := range ops {
			r, err := h.apply(ctx, tx, o, now)
			if err != nil {
				return err
			}
			results[i] = r
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	h.notifyResults(ctx, results)
	return results, nil
}

func (h *Handler) notifyResults(ctx context.Context, results []*result) {
	var ws []Write
	for _, r := range results {
		if r != nil && r.write != nil {
			ws = append(ws, *r.write)
		}
	}
	if len(ws) > 0 {
		h.notify(ctx, ws)
	}
}

func (h *Handler) hasListeners() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.onWrite) > 0
}

// resultParams are the parameters that shape the result of a search
// rather than select resources: a condition takes none of them.
var resultParams = map[string]bool{
	"_count": true, "_offset": true, "_page": true, "_sort": true, "_summary": true, "_elements": true,
	"_total": true, "_include": true, "_revinclude": true, "_contained": true, "_containedType": true,
}

// conditionQuery parses the criteria of a conditional interaction (create,
// update, patch, delete, a conditional reference) on typ. It is always
// strict, whatever the request's handling preference: an unknown or
// unsupported parameter, a parameter that shapes the result (_count,
// _sort, …), a chain or _has, or criteria without a search parameter are
// a 400 naming the parameter, so that a condition never acts on part of what it says.
func (h *Handler) conditionQuery(typ string, crit url.Values, where string) (*search.Query, error) {
	bad := &search.Error{}
	filters := make(url.Values, len(crit))
	for name, vals := range crit {
		if code, _, _ := strings.Cut(name, ":"); resultParams[code] {
			bad.Problems = append(bad.Problems, search.Problem{Param: name, Message: "shapes the result of a search; a condition takes search criteria only"})
			continue
		}
		filters[name] = vals
	}
	q, err := search.Parse(typ, filters, search.Options{DefaultCount: 2, MaxCount: 2, Now: h.now()})
	var se *search.Error
	switch {
	case errors.As(err, &se):
		bad.Problems = append(bad.Problems, se.Problems...)
	case err != nil:
		return nil, err
	}
	if q != nil {
		for _, c := range q.Clauses {
			if c.Chain != nil {
				bad.Problems = append(bad.Problems, search.Problem{Param: c.Name, Message: "a condition cannot follow references (chains and _has are search-only)"})
			}
		}
	}
	if len(bad.Problems) > 0 {
		sort.SliceStable(bad.Problems, func(i, j int) bool { return bad.Problems[i].Param < bad.Problems[j].Param })
		return nil, searchError(bad, where)
	}
	if len(q.Clauses) == 0 {
		return nil, errorf(http.StatusBadRequest, "%sthe condition %q has no search criteria", where, crit.Encode())
	}
	return q, nil
}

// matchOne runs conditional criteria in r (a write's transaction): it
// returns the matching resource, nil for none, or 412 for several. The
// criteria are parsed strictly (see conditionQuery) and, under a policy (g
// not nil), confined to what g reaches: a condition never selects more
// than it says, nor anything outside the policy.
func (h *Handler) matchOne(ctx context.Context, r store.Reader, g *guard, typ string, crit url.Values, where string) (*store.Version, error) {
	q, err := h.conditionQuery(typ, crit, where)
	if err != nil {
		return nil, err
	}
	g.confine(q)
	ms, err := r.Search(ctx, q, 0, 2)
	if err != nil {
		return nil, err
	}
	switch len(ms) {
	case 0:
		return nil, nil
	case 1:
		vs, err := r.Fetch(ctx, ms)
		if err != nil || len(vs) == 0 {
			return nil, err
		}
		return vs[0], nil
	}
	return nil, errorf(http.StatusPreconditionFailed, "%sthe condition %q matches more than one %s", where, crit.Encode(), typ)
}

// ifNoneExistCriteria parses the criteria of a conditional create of typ:
// the query (what follows the "?"), though "Type?query" is taken too.
func ifNoneExistCriteria(typ, s, where string) (url.Values, error) {
	s = strings.TrimPrefix(s, "/")
	if i := strings.IndexByte(s, '?'); i >= 0 && !strings.ContainsAny(s[:i], "=&") {
		if s[:i] != typ {
			return nil, errorf(http.StatusBadRequest, "%sthe If-None-Exist criteria %q are for %s, not %s", where, s, s[:i], typ)
		}
		s = s[i+1:]
	}
	crit, err := url.ParseQuery(s)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "%sbad If-None-Exist %q: %v", where, s, err)
	}
	return crit, nil
}

func searchError(err error, where string) error {
	var se *search.Error
	if !errors.As(err, &se) {
		return err
	}
	he := &httpError{status: http.StatusBadRequest}
	for _, p := range se.Problems {
		is := newIssue(http.StatusBadRequest, fmt.Sprintf("%s%s: %s", where, p.Param, p.Message))
		is.Expression = []string{p.Param}
		he.issues = append(he.issues, is)
	}
	return he
}

// checkIfMatch compares an If-Match header with the current version.
func checkIfMatch(header string, cur *store.Version, where string) error {
	if header == "" {
		return nil
	}
	want, ok := parseETag(header)
	if !ok {
		return errorf(http.StatusBadRequest, "%sbad If-Match %q: want W/\"version\"", where, header)
	}
	if cur == nil || cur.Deleted {
		return errorf(http.StatusPreconditionFailed, "%sIf-Match %s: the resource does not exist", where, header)
	}
	if cur.Version != want {
		return errorf(http.StatusPreconditionFailed, "%sIf-Match %s: the current version is %d", where, header, cur.Version)
	}
	return nil
}

func (h *Handler) apply(ctx context.Context, tx store.Tx, o *op, now time.Time) (*result, error) {
	if o.resolveRefs && o.res != nil {
		cond, err := h.resolveCondRefs(ctx, tx, []*op{o}, nil)
		if err != nil {
			return nil, err
		}
		o.res.rewriteLinks(nil, cond)
	}
	switch o.method {
	case http.MethodPost:
		return h.applyCreate(ctx, tx, o, now)
	case http.MethodPut:
		return h.applyUpdate(ctx, tx, o, now)
	case http.MethodPatch:
		return h.applyPatch(ctx, tx, o, now)
	case http.MethodDelete:
		return h.applyDelete(ctx, tx, o, now)
	}
	return nil, errorf(http.StatusMethodNotAllowed, "%smethod %s cannot write", o.where, o.method)
}

func (h *Handler) applyCreate(ctx context.Context, tx store.Tx, o *op, now time.Time) (*result, error) {
	g, err := h.guard(ctx, o)
	if err != nil {
		return nil, err
	}
	if o.ifNoneExist != "" {
		crit, err := ifNoneExistCriteria(o.typ, o.ifNoneExist, o.where)
		if err != nil {
			return nil, err
		}
		found, err := h.matchOne(ctx, tx, g, o.typ, crit, o.where)
		if err != nil {
			return nil, err
		}
		if found != nil {
			return &result{status: http.StatusOK, v: found}, nil
		}
	}
	id := o.id
	if id == "" {
		id = newID()
	}
	r, err := h.put(ctx, tx, o, id, nil, now)
	if err != nil {
		return nil, err
	}
	return r, h.contains(ctx, tx, g, o, r.v)
}

func (h *Handler) applyUpdate(ctx context.Context, tx store.Tx, o *op, now time.Time) (*result, error) {
	g, err := h.guard(ctx, o)
	if err != nil {
		return nil, err
	}
	bodyID, _ := o.res.tree["id"].(string)
	id := o.id
	var cur *store.Version
	if o.cond != nil {
		found, err := h.matchOne(ctx, tx, g, o.typ, o.cond, o.where)
		if err != nil {
			return nil, err
		}
		switch {
		case found != nil:
			if bodyID != "" && bodyID != found.ID {
				return nil, locErr(http.StatusBadRequest, o.typ+".id", fmt.Sprintf("%sthe body's id %q is not that of the matching resource", o.where, bodyID))
			}
			id, cur = found.ID, found
		case bodyID != "":
			id = bodyID
		case o.id != "":
			// The id a transaction gave the entry when it mapped its
			// fullUrl: the one other entries' references were rewritten to.
			id = o.id
		default:
			id = newID()
		}
	} else {
		switch {
		case bodyID == "":
			return nil, locErr(http.StatusBadRequest, o.typ+".id", o.where+"the resource has no id; an update must carry the id of the URL")
		case bodyID != id:
			return nil, locErr(http.StatusBadRequest, o.typ+".id", fmt.Sprintf("%sthe body's id %q does not match the URL's %q", o.where, bodyID, id))
		}
	}
	if cur == nil {
		var err error
		if cur, err = tx.Read(ctx, o.typ, id); err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		// What the caller writes over must be within its reach (a
		// conditional match is by construction).
		if cur != nil {
			if err := h.mayTouch(ctx, tx, g, o, cur); err != nil {
				return nil, err
			}
		}
	}
	// An update that creates the resource needs Create as well.
	var gc *guard
	if g != nil && (cur == nil || cur.Deleted) {
		perm := access.Create
		if o.cond != nil {
			perm |= access.Search
		}
		if gc, err = h.guardFor(ctx, perm, o.typ, o.refusal()); err != nil {
			return nil, err
		}
	}
	if err := checkIfMatch(o.ifMatch, cur, o.where); err != nil {
		return nil, err
	}
	if cur == nil && !boolOr(h.cfg.UpdateCreate, true) {
		return nil, errorf(http.StatusMethodNotAllowed, "%s%s/%s does not exist, and this server does not create resources by update", o.where, o.typ, id)
	}
	r, err := h.put(ctx, tx, o, id, cur, now)
	if err != nil {
		return nil, err
	}
	if err := h.contains(ctx, tx, g, o, r.v); err != nil {
		return nil, err
	}
	if gc != nil && gc.key() != g.key() {
		if err := h.contains(ctx, tx, gc, o, r.v); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (h *Handler) applyPatch(ctx context.Context, tx store.Tx, o *op, now time.Time) (*result, error) {
	g, err := h.guard(ctx, o)
	if err != nil {
		return nil, err
	}
	var cur *store.Version
	if o.cond != nil {
		found, err := h.matchOne(ctx, tx, g, o.typ, o.cond, o.where)
		if err != nil {
			return nil, err
		}
		if found == nil {
			return nil, errorf(http.StatusNotFound, "%sno %s matches %q", o.where, o.typ, o.cond.Encode())
		}
		cur = found
	} else {
		if g.constrained() {
			// Out of reach before deleted: a deletion says the resource
			// existed.
			if cur, err := tx.Read(ctx, o.typ, o.id); err == nil {
				if err := h.mayTouch(ctx, tx, g, o, cur); err != nil {
					return nil, err
				}
			} else if notFoundOK(err) != nil {
				return nil, err
			}
		}
		var err error
		cur, err = h.current(ctx, tx, o.typ, o.id, o.where)
		if err != nil {
			return nil, err
		}
	}
	if err := checkIfMatch(o.ifMatch, cur, o.where); err != nil {
		return nil, err
	}
	if o.fhirPatch != nil {
		if o.patch, err = o.fhirPatch.asJSONPatch(o.typ, cur.Body, o.where); err != nil {
			return nil, err
		}
	}
	patch, err := jsonpatch.DecodePatch(o.patch)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "%sbad JSON Patch: %v", o.where, err)
	}
	doc, err := patch.Apply(cur.Body)
	if err != nil {
		return nil, errorf(http.StatusUnprocessableEntity, "%sthe patch does not apply: %v", o.where, err)
	}
	p, err := h.parseResource(doc, o.typ, o.where, checkAll)
	if err != nil {
		var he *httpError
		if errors.As(err, &he) && he.status == http.StatusBadRequest {
			he.status = http.StatusUnprocessableEntity
			for i := range he.issues {
				he.issues[i].Diagnostics = "the patched resource is invalid: " + he.issues[i].Diagnostics
			}
		}
		return nil, err
	}
	if id, _ := p.tree["id"].(string); id != cur.ID {
		return nil, locErr(http.StatusUnprocessableEntity, o.typ+".id", o.where+"a patch must not change the id")
	}
	po := *o
	po.res = p
	r, err := h.put(ctx, tx, &po, cur.ID, cur, now)
	if err != nil {
		return nil, err
	}
	return r, h.contains(ctx, tx, g, o, r.v)
}

// current reads a resource that must exist: 404 or 410 otherwise.
func (h *Handler) current(ctx context.Context, r store.Reader, typ, id, where string) (*store.Version, error) {
	cur, err := r.Read(ctx, typ, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errorf(http.StatusNotFound, "%s%s/%s is not known", where, typ, id)
	}
	if err != nil {
		return nil, err
	}
	if cur.Deleted {
		return nil, errorf(http.StatusGone, "%s%s/%s was deleted", where, typ, id)
	}
	return cur, nil
}

func (h *Handler) applyDelete(ctx context.Context, tx store.Tx, o *op, now time.Time) (*result, error) {
	g, err := h.guard(ctx, o)
	if err != nil {
		return nil, err
	}
	var cur *store.Version
	if o.cond != nil {
		if cur, err = h.matchOne(ctx, tx, g, o.typ, o.cond, o.where); err != nil {
			return nil, err
		}
	} else if cur, err = tx.Read(ctx, o.typ, o.id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	} else if g.constrained() {
		// What the caller cannot see is not there: 404, as for a read, and
		// so is a resource that never existed.
		ok := false
		if cur != nil {
			if ok, err = h.seesVersion(ctx, tx, g, cur); err != nil {
				return nil, err
			}
		}
		if !ok {
			return nil, errorf(http.StatusNotFound, "%s%s/%s is not known", o.where, o.typ, o.id)
		}
	}
	if err := checkIfMatch(o.ifMatch, cur, o.where); err != nil {
		return nil, err
	}
	if cur == nil || cur.Deleted {
		return &result{status: http.StatusNoContent, v: cur}, nil
	}
	v := &store.Version{Type: o.typ, ID: cur.ID, Version: cur.Version + 1, Updated: now, Deleted: true, Method: http.MethodDelete}
	if err := tx.Put(ctx, v, nil); err != nil {
		return nil, err
	}
	w := &Write{Type: v.Type, ID: v.ID, Version: v.Version, Deleted: true}
	if h.hasListeners() {
		w.Compartments = h.compartmentsOf(cur, nil)
	}
	return &result{status: http.StatusNoContent, v: v, write: w}, nil
}

// put writes o.res as the next version of typ/id after cur (nil: a new
// resource).
func (h *Handler) put(ctx context.Context, tx store.Tx, o *op, id string, cur *store.Version, now time.Time) (*result, error) {
	version, status := int64(1), http.StatusCreated
	if cur != nil {
		version = cur.Version + 1
		if !cur.Deleted {
			status = http.StatusOK
		}
	}
	body, err := stamp(o.res, id, version, now)
	if err != nil {
		return nil, err
	}
	idx := o.res.index(id)
	v := &store.Version{Type: o.typ, ID: id, Version: version, Updated: now, Method: o.method, Body: body}
	if err := tx.Put(ctx, v, idx); err != nil {
		return nil, err
	}
	w := &Write{Type: o.typ, ID: id, Version: version}
	if h.hasListeners() {
		w.Compartments = h.compartmentsOf(cur, idx.Compartments)
	}
	return &result{status: status, v: v, write: w}, nil
}

// compartmentsOf merges the compartments of the previous version (if any)
// with those after the write, as "Patient/id", sorted.
func (h *Handler) compartmentsOf(prev *store.Version, after []string) []string {
	set := map[string]bool{}
	for _, id := range after {
		set["Patient/"+id] = true
	}
	if prev != nil && !prev.Deleted {
		if tree, err := decodeJSON(prev.Body); err == nil {
			for _, id := range search.Compartments(prev.Type, prev.ID, tree) {
				set["Patient/"+id] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
