package fhir

import (
	"context"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// systemResultParams are the parameters of a search that shape its result
// rather than select resources; a search across types takes them as a
// search of one type does.
var systemResultParams = map[string]bool{
	"_count": true, "_offset": true, "_page": true, "_summary": true, "_elements": true, "_total": true,
	"_include": true, "_revinclude": true, "_include:iterate": true, "_revinclude:iterate": true,
	"_format": true, "_pretty": true,
}

// systemSearch serves GET [base]?… and POST [base]/_search: a search of
// the resource types _type lists (comma-separated, or repeated), by
// default every type the policy on the request lets the caller search.
// Its parameters must be ones every type searched defines (_id,
// _lastUpdated, _tag, _profile, _security, and any other all the listed
// types share): any other is a 400 naming the types that lack it. Results
// come in the order the resources were created, across types; paging,
// _include, _revinclude, _summary, _elements and _total work as in a
// search of one type. _sort is not supported across types (400).
func (h *Handler) systemSearch(w http.ResponseWriter, req *request, params url.Values) error {
	ctx := req.Context()
	types := spec.ResourceTypes
	explicit := false
	if vals, ok := params["_type"]; ok {
		set, err := typeList(vals)
		if err != nil {
			return err
		}
		types = make([]string, 0, len(set))
		for t := range set {
			types = append(types, t)
		}
		sort.Strings(types)
		explicit = true
	}
	rest := url.Values{}
	for k, v := range params {
		if k != "_type" {
			rest[k] = v
		}
	}
	if err := commonParams(rest, types, explicit); err != nil {
		return err
	}
	opts := search.Options{DefaultCount: h.cfg.DefaultCount, MaxCount: h.cfg.MaxCount, Lenient: h.lenient(req),
		Now: h.now(), LocalBases: h.localBases(req)}
	var qs []*search.Query
	var keys []string
	for _, t := range types {
		g, err := h.guardFor(ctx, access.Search, t, "")
		if err != nil {
			if explicit {
				return err
			}
			continue // a type the policy does not grant
		}
		q, err := search.Parse(t, rest, opts)
		if err != nil {
			return searchError(err, "")
		}
		g.confine(q)
		inner, err := h.confineChains(ctx, q)
		if err != nil {
			return err
		}
		qs = append(qs, q)
		keys = append(keys, t+"="+g.key()+"|"+inner)
	}
	if len(qs) == 0 {
		return forbidden("", "no scope grants search on any resource type")
	}
	q0 := qs[0]
	self := *q0
	self.Self = url.Values{}
	for k, v := range q0.Self {
		self.Self[k] = v
	}
	if explicit {
		self.Self.Set("_type", strings.Join(types, ","))
	}
	if q0.Summary == "count" {
		n, err := h.countAll(ctx, qs)
		if err != nil {
			return err
		}
		return h.writeRaw(w, req, http.StatusOK, writeBundle(h.now(), "searchset", n, []link{{"self", pageURL(req.base, &self, q0.Count, 0, "")}}, nil))
	}
	key := "system|" + strings.Join(keys, ",") + "|" + q0.Self.Encode()
	pg, err := h.systemPage(ctx, qs, key)
	if err != nil {
		return err
	}
	entries, err := h.pageEntries(ctx, req, q0, pg.matches)
	if err != nil {
		return err
	}
	links := []link{{"self", pageURL(req.base, &self, q0.Count, q0.Offset, pg.token)}}
	if pg.hasNext {
		links = append(links, link{"next", pageURL(req.base, &self, q0.Count, q0.Offset+q0.Count, pg.token)})
	}
	if q0.Offset > 0 {
		links = append(links, link{"previous", pageURL(req.base, &self, q0.Count, max(0, q0.Offset-q0.Count), pg.token)})
	}
	total := pg.total
	if q0.Total == "none" {
		total = -1
	}
	return h.writeRaw(w, req, http.StatusOK, writeBundle(h.now(), "searchset", total, links, entries))
}

// commonParams refuses parameters that some of types do not define, and
// _sort.
func commonParams(params url.Values, types []string, explicit bool) error {
	var bad []issue
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		if systemResultParams[name] {
			continue
		}
		if name == "_sort" {
			is := newIssue(http.StatusBadRequest, "_sort is not supported in a search across resource types")
			is.Expression = []string{name}
			bad = append(bad, is)
			continue
		}
		code, _, _ := strings.Cut(name, ":")
		if code == "_id" || code == "_lastUpdated" {
			continue
		}
		var missing []string
		for _, t := range types {
			if _, ok := search.Lookup(t, code); !ok {
				missing = append(missing, t)
			}
		}
		if len(missing) == 0 {
			continue
		}
		msg := "the parameter " + code + " is not defined for "
		if explicit {
			msg += strings.Join(missing, ", ") + ": a search across types takes only parameters every listed type defines"
		} else {
			msg += "every resource type: without _type, a search takes only the parameters common to all (_id, _lastUpdated, _tag, _profile, _security)"
		}
		is := newIssue(http.StatusBadRequest, msg)
		is.Expression = []string{name}
		bad = append(bad, is)
	}
	if len(bad) > 0 {
		return &httpError{status: http.StatusBadRequest, issues: bad}
	}
	return nil
}

func (h *Handler) countAll(ctx context.Context, qs []*search.Query) (int, error) {
	n := 0
	for _, q := range qs {
		c, err := h.store.Count(ctx, q)
		if err != nil {
			return 0, err
		}
		n += c
	}
	return n, nil
}

// merged returns the first limit matches of the queries together, in
// order of creation (the store's order of each, without _sort).
func (h *Handler) merged(ctx context.Context, qs []*search.Query, limit int) ([]store.Match, error) {
	var all []store.Match
	for _, q := range qs {
		ms, err := h.store.Search(ctx, q, 0, limit)
		if err != nil {
			return nil, err
		}
		all = append(all, ms...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Key < all[j].Key })
	if len(all) > limit {
		all = all[:limit]
	}
	return all, nil
}

// systemPage is page for a search across types: the first page keeps a
// snapshot of up to SnapshotSize matches for the paging links; without
// one, a page is found by merging each type's first offset+count+1
// matches.
func (h *Handler) systemPage(ctx context.Context, qs []*search.Query, key string) (page, error) {
	q0 := qs[0]
	count, offset := q0.Count, q0.Offset
	if q0.Page != "" && h.pages != nil {
		if s := h.pages.get(ctx, q0.Page, key); s != nil && (offset < len(s.matches) || s.complete) {
			end := min(len(s.matches), offset+count)
			start := min(offset, end)
			return page{matches: s.matches[start:end], total: s.total, hasNext: offset+count < s.total, token: q0.Page}, nil
		}
	}
	if offset == 0 && h.pages != nil && count > 0 {
		ms, err := h.merged(ctx, qs, max(h.cfg.SnapshotSize+1, count+1))
		if err != nil {
			return page{}, err
		}
		if len(ms) <= count {
			return page{matches: ms, total: len(ms)}, nil
		}
		complete := len(ms) <= h.cfg.SnapshotSize
		total := len(ms)
		if !complete {
			ms = ms[:h.cfg.SnapshotSize]
			if total, err = h.totalAll(ctx, qs); err != nil {
				return page{}, err
			}
		}
		token := h.pages.put(ctx, key, ms, total, complete)
		return page{matches: ms[:count], total: total, hasNext: true, token: token}, nil
	}
	ms, err := h.merged(ctx, qs, offset+count+1)
	if err != nil {
		return page{}, err
	}
	ms = ms[min(offset, len(ms)):]
	pg := page{matches: ms, hasNext: len(ms) > count}
	if pg.hasNext {
		pg.matches = ms[:count]
	}
	if offset == 0 && !pg.hasNext {
		pg.total = len(pg.matches)
	} else if pg.total, err = h.totalAll(ctx, qs); err != nil {
		return page{}, err
	}
	return pg, nil
}

func (h *Handler) totalAll(ctx context.Context, qs []*search.Query) (int, error) {
	if qs[0].Total == "none" {
		return -1, nil
	}
	return h.countAll(ctx, qs)
}
