package fhir

// Access control. The authz plugin puts an access.Policy on the request
// context; the server enforces it here, inside its queries, on every
// interaction: a decision per interaction and resource type, then the
// Patient compartment and the scope constraints the decision carries, as
// conditions of the store's searches, so that counts, paging and includes
// only ever see what the policy covers. A request without a policy is not
// access-controlled.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// guard is what an allowed interaction on one resource type may reach. A
// nil *guard means the request carries no policy: everything.
type guard struct {
	typ string
	// compartment confines to the Patient compartment of this patient id.
	compartment string
	// filters are the scope constraints as granted; alts the same parsed
	// for typ, one AND-group each, of which a resource must match one.
	filters []url.Values
	alts    [][]search.Clause
}

// constrained reports whether the guard lets through only some resources
// of its type.
func (g *guard) constrained() bool {
	return g != nil && (g.compartment != "" || len(g.alts) > 0)
}

// key identifies the guard's constraints, for paging snapshots.
func (g *guard) key() string {
	if !g.constrained() {
		return ""
	}
	parts := []string{g.compartment}
	for _, f := range g.filters {
		parts = append(parts, f.Encode())
	}
	return strings.Join(parts, "|")
}

// describe names the guard's constraints for messages.
func (g *guard) describe() string {
	var parts []string
	if g.compartment != "" {
		parts = append(parts, "the compartment of Patient/"+g.compartment)
	}
	if len(g.filters) > 0 {
		fs := make([]string, len(g.filters))
		for i, f := range g.filters {
			fs[i] = f.Encode()
		}
		parts = append(parts, "the scope constraint "+strings.Join(fs, " or "))
	}
	return strings.Join(parts, " and ")
}

// confine adds the guard's constraints to a search of its type.
func (g *guard) confine(q *search.Query) {
	if g == nil {
		return
	}
	if g.compartment != "" {
		q.Compartment = g.compartment
	}
	q.Alternatives = g.alts
}

// confineChains confines the inner searches of q's chained and _has
// clauses, however deep, to what the policy on ctx lets the caller search
// on their types: the Patient compartment and the scope constraints, as
// for a search of that type of its own, so that a chain or _has never
// tells anything about a resource the caller could not find. An inner
// search of a type the policy does not grant is refused (403); a chain
// without :Type drops the target types the policy does not grant, and is
// refused when none is left. It returns a key of the constraints set, for
// paging snapshots ("" without a policy).
func (h *Handler) confineChains(ctx context.Context, q *search.Query) (string, error) {
	if access.FromContext(ctx) == nil {
		return "", nil
	}
	var keys []string
	var walk func(q *search.Query) error
	walk = func(q *search.Query) error {
		for i := range q.Clauses {
			ch := q.Clauses[i].Chain
			if ch == nil {
				continue
			}
			implicit := !ch.Rev && len(ch.Queries) > 1
			var kept []*search.Query
			var refused error
			for _, in := range ch.Queries {
				g, err := h.guardFor(ctx, access.Search, in.Type, q.Clauses[i].Name+": ")
				if err != nil {
					if implicit {
						refused = err
						continue
					}
					return err
				}
				g.confine(in)
				keys = append(keys, in.Type+"="+g.key())
				if err := walk(in); err != nil {
					return err
				}
				kept = append(kept, in)
			}
			if len(kept) == 0 {
				return refused
			}
			ch.Queries = kept
		}
		return nil
	}
	if err := walk(q); err != nil {
		return "", err
	}
	return strings.Join(keys, ","), nil
}

// forbidden is the 403 of a refused interaction.
func forbidden(where, format string, args ...any) *httpError {
	return errorf(http.StatusForbidden, "%s%s", where, fmt.Sprintf(format, args...))
}

// guardFor decides an interaction that needs perm on typ ("" for every
// type) under the policy on ctx: nil for no policy, a 403 when the policy
// refuses, else what the interaction may reach. where prefixes messages.
func (h *Handler) guardFor(ctx context.Context, perm access.Perm, typ, where string) (*guard, error) {
	p := access.FromContext(ctx)
	if p == nil {
		return nil, nil
	}
	d := p.Decide(perm, typ)
	if !d.Allowed {
		return nil, forbidden(where, "%s", d.Reason)
	}
	g := &guard{typ: typ, compartment: d.Compartment, filters: d.Filters}
	for _, f := range d.Filters {
		if typ == "" {
			return nil, forbidden(where, "scope constraints (%s) cannot be enforced across resource types", f.Encode())
		}
		cs, err := search.ParseConstraint(typ, f, h.now())
		if err != nil {
			// Deny by default: a constraint the server cannot evaluate.
			return nil, forbidden(where, "the scope constraint %q cannot be enforced on %s: %v", f.Encode(), typ, err)
		}
		g.alts = append(g.alts, cs)
	}
	return g, nil
}

// idQuery is the search of one resource by id under g.
func (h *Handler) idQuery(g *guard, ids ...string) (*search.Query, error) {
	q, err := search.Parse(g.typ, url.Values{"_id": {strings.Join(ids, ",")}}, search.Options{Now: h.now(), MaxCount: len(ids)})
	if err != nil {
		return nil, err
	}
	g.confine(q)
	return q, nil
}

// sees reports whether v, the current version of its resource read from
// r, is within g: a search for its id under g's constraints finds it, in
// that very version.
func (h *Handler) sees(ctx context.Context, r store.Reader, g *guard, v *store.Version) (bool, error) {
	if !g.constrained() {
		return true, nil
	}
	if v == nil || v.Deleted {
		return false, nil
	}
	q, err := h.idQuery(g, v.ID)
	if err != nil {
		return false, err
	}
	ms, err := r.Search(ctx, q, 0, 1)
	if err != nil {
		return false, err
	}
	return len(ms) == 1 && ms[0].Key == v.Key && ms[0].Version == v.Version, nil
}

// seesVersion reports whether g reaches version v of a resource, current
// or not. Past versions are judged by their own content: a deletion by
// the version it deleted. A scope constraint can only be evaluated on the
// current version (the index holds no other), so under one past versions
// and deletions are out of reach.
func (h *Handler) seesVersion(ctx context.Context, r store.Reader, g *guard, v *store.Version) (bool, error) {
	if !g.constrained() {
		return true, nil
	}
	if len(g.alts) > 0 {
		return h.sees(ctx, r, g, v)
	}
	for v.Deleted {
		if v.Version <= 1 {
			return false, nil
		}
		prev, err := r.VRead(ctx, v.Type, v.ID, v.Version-1)
		if err != nil {
			return false, notFoundOK(err)
		}
		v = prev
	}
	tree, err := decodeJSON(v.Body)
	if err != nil {
		return false, fmt.Errorf("decode %s/%s: %w", v.Type, v.ID, err)
	}
	return slices.Contains(search.Compartments(v.Type, v.ID, tree), g.compartment), nil
}

// notFoundOK is err, but nil for store.ErrNotFound.
func notFoundOK(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// readGuarded is read under a constrained guard: the current version if g
// reaches it; 410 for a deletion g reaches; else the 404 of a resource that
// does not exist.
func (h *Handler) readGuarded(ctx context.Context, w http.ResponseWriter, g *guard, typ, id string) (*store.Version, error) {
	q, err := h.idQuery(g, id)
	if err != nil {
		return nil, err
	}
	ms, err := h.store.Search(ctx, q, 0, 1)
	if err != nil {
		return nil, err
	}
	if len(ms) == 1 {
		// The version that matched, even if a write has just replaced it.
		vs, err := h.store.Fetch(ctx, ms)
		if err != nil {
			return nil, err
		}
		if len(vs) == 1 {
			return vs[0], nil
		}
	}
	notFound := errorf(http.StatusNotFound, "%s/%s is not known", typ, id)
	cur, err := h.store.Read(ctx, typ, id)
	if err != nil {
		if notFoundOK(err) == nil {
			return nil, notFound
		}
		return nil, err
	}
	if cur.Deleted {
		ok, err := h.seesVersion(ctx, h.store, g, cur)
		if err != nil {
			return nil, err
		}
		if ok {
			versionHeaders(w, cur)
			return nil, errorf(http.StatusGone, "%s/%s was deleted", typ, id)
		}
	}
	return nil, notFound
}

// visibleIncludes keeps the included resources the policy on ctx lets the
// caller see: for each type, what a search of it may reach (else what a
// read may), checked by one store search of their ids per type, so that
// the compartment and the scope constraints are the store's.
func (h *Handler) visibleIncludes(ctx context.Context, vs []*store.Version) ([]*store.Version, error) {
	if access.FromContext(ctx) == nil || len(vs) == 0 {
		return vs, nil
	}
	byType := map[string][]*store.Version{}
	for _, v := range vs {
		byType[v.Type] = append(byType[v.Type], v)
	}
	keep := map[*store.Version]bool{}
	for typ, tvs := range byType {
		g, err := h.guardFor(ctx, access.Search, typ, "")
		if err != nil {
			if g, err = h.guardFor(ctx, access.Read, typ, ""); err != nil {
				continue // a type the policy does not grant
			}
		}
		if !g.constrained() {
			for _, v := range tvs {
				keep[v] = true
			}
			continue
		}
		const chunk = 500
		for start := 0; start < len(tvs); start += chunk {
			part := tvs[start:min(len(tvs), start+chunk)]
			ids := make([]string, len(part))
			for i, v := range part {
				ids[i] = v.ID
			}
			q, err := h.idQuery(g, ids...)
			if err != nil {
				return nil, err
			}
			ms, err := h.store.Search(ctx, q, 0, len(part))
			if err != nil {
				return nil, err
			}
			found := make(map[store.Match]bool, len(ms))
			for _, m := range ms {
				found[m] = true
			}
			for _, v := range part {
				if found[store.Match{Key: v.Key, Version: v.Version}] {
					keep[v] = true
				}
			}
		}
	}
	out := vs[:0:0]
	for _, v := range vs {
		if keep[v] {
			out = append(out, v)
		}
	}
	return out, nil
}

// hiddenTypes lists the resource types a whole-store history under g must
// leave out: those the policy on ctx does not let the caller search as
// widely as g (AuditEvent, which wildcard scopes do not cover; under a
// compartment, only types that can be in it matter).
func hiddenTypes(ctx context.Context, g *guard) []string {
	p := access.FromContext(ctx)
	if p == nil {
		return nil
	}
	var out []string
	for _, t := range spec.ResourceTypes {
		if g.compartment != "" && !access.InCompartment(t) {
			continue
		}
		d := p.Decide(access.Search, t)
		if !d.Allowed || len(d.Filters) > 0 || d.Compartment != "" && d.Compartment != g.compartment {
			out = append(out, t)
		}
	}
	return out
}

// entryPerm is the permission a Bundle entry's write needs at least (an
// update that creates needs Create as well, decided when it runs).
func entryPerm(o *op) access.Perm {
	var p access.Perm
	switch o.method {
	case http.MethodPost:
		p = access.Create
		if o.ifNoneExist != "" {
			p |= access.Search
		}
	case http.MethodPut, http.MethodPatch:
		p = access.Update
	case http.MethodDelete:
		p = access.Delete
	}
	if o.cond != nil {
		p |= access.Search
	}
	return p
}

// decideEntries refuses a transaction with an entry the policy on ctx
// does not allow: the 403 names the first such entry, its request method
// and URL. Reads are decided on the interaction their URL asks for; what
// an entry may reach is checked again as it runs.
func (h *Handler) decideEntries(ctx context.Context, entries []*bundleEntry) error {
	p := access.FromContext(ctx)
	if p == nil {
		return nil
	}
	for _, e := range entries {
		var d access.Decision
		if e.op != nil {
			d = p.Decide(entryPerm(e.op), e.op.typ)
		} else {
			d = decideRead(p, e.get)
		}
		if !d.Allowed {
			he := forbidden(e.label(), "%s; the transaction is refused", d.Reason)
			prefixEntry(he, e.index)
			return he
		}
	}
	return nil
}

// decideRead decides a read entry of a Bundle by the interaction its URL
// (below the base) asks for.
func decideRead(p *access.Policy, rawURL string) access.Decision {
	u, err := url.Parse(rawURL)
	if err != nil {
		return access.Decision{Reason: "bad request.url"}
	}
	r, ok := fhirreq.Parse(http.MethodGet, "/"+strings.Trim(u.Path, "/"), "")
	if !ok {
		return access.Decision{Reason: "request.url " + rawURL + " is not a FHIR interaction"}
	}
	return p.DecideInteraction(r.Interaction, r.Type)
}

// refuseUnknown answers, under a policy, the requests the server does not
// implement (operations, unknown endpoints) with 403 rather than letting
// them be read as anything else.
func refuseUnknown(ctx context.Context, what string) error {
	if access.FromContext(ctx) == nil {
		return nil
	}
	return forbidden("", "%s is not available under access control", what)
}
