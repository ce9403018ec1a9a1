package fhir

import (
	"bytes"
	"container/list"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// link is a Bundle link.
type link struct{ rel, url string }

// entry is a Bundle entry being written.
type entry struct {
	fullURL  string
	resource []byte
	mode     string // search mode: match, include, outcome
	request  *entryRequest
	response *entryResponse
}

type entryRequest struct {
	Method string `json:"method"`
	URL    string `json:"url"`
}

type entryResponse struct {
	Status       string          `json:"status"`
	Location     string          `json:"location,omitempty"`
	Etag         string          `json:"etag,omitempty"`
	LastModified string          `json:"lastModified,omitempty"`
	Outcome      json.RawMessage `json:"outcome,omitempty"`
}

// writeBundle serializes a Bundle; resources are copied as stored.
func writeBundle(now time.Time, typ string, total int, links []link, entries []entry) []byte {
	var b bytes.Buffer
	b.WriteString(`{"resourceType":"Bundle","id":"`)
	b.WriteString(newID())
	b.WriteString(`","meta":{"lastUpdated":"`)
	b.WriteString(now.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	b.WriteString(`"},"type":"`)
	b.WriteString(typ)
	b.WriteByte('"')
	if total >= 0 {
		b.WriteString(`,"total":`)
		b.WriteString(strconv.Itoa(total))
	}
	if len(links) > 0 {
		b.WriteString(`,"link":[`)
		for i, l := range links {
			if i > 0 {
				b.WriteByte(',')
			}
			u := marshal(l.url)
			b.WriteString(`{"relation":"` + l.rel + `","url":`)
			b.Write(u)
			b.WriteByte('}')
		}
		b.WriteByte(']')
	}
	if len(entries) > 0 {
		b.WriteString(`,"entry":[`)
		for i, e := range entries {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteByte('{')
			sep := ""
			if e.fullURL != "" {
				u := marshal(e.fullURL)
				b.WriteString(`"fullUrl":`)
				b.Write(u)
				sep = ","
			}
			if e.resource != nil {
				b.WriteString(sep + `"resource":`)
				b.Write(e.resource)
				sep = ","
			}
			if e.mode != "" {
				b.WriteString(sep + `"search":{"mode":"` + e.mode + `"}`)
				sep = ","
			}
			if e.request != nil {
				r := marshal(e.request)
				b.WriteString(sep + `"request":`)
				b.Write(r)
				sep = ","
			}
			if e.response != nil {
				r := marshal(e.response)
				b.WriteString(sep + `"response":`)
				b.Write(r)
			}
			b.WriteByte('}')
		}
		b.WriteByte(']')
	}
	b.WriteByte('}')
	return b.Bytes()
}

// marshal encodes v without escaping <, > and & (URLs keep their &).
func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return []byte("null")
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// lenient reports whether a search ignores the parameters it does not
// know: Prefer: handling=lenient, or search.unknown_params: lenient
// without a handling preference.
func (h *Handler) lenient(req *request) bool {
	return req.prefer.lenient || !req.prefer.strict && h.cfg.Search.lenient()
}

func (h *Handler) search(w http.ResponseWriter, req *request, typ, compartment string, params url.Values) error {
	ctx := req.Context()
	g, err := h.guardFor(ctx, access.Search, typ, "")
	if err != nil {
		return err
	}
	q, err := search.Parse(typ, params, search.Options{DefaultCount: h.cfg.DefaultCount, MaxCount: h.cfg.MaxCount, Lenient: h.lenient(req),
		Now: h.now(), LocalBases: h.localBases(req)})
	if err != nil {
		return searchError(err, "")
	}
	path := req.base + "/" + typ
	if compartment != "" {
		if _, ok := spec.PatientCompartment[typ]; !ok && typ != "Patient" {
			return errorf(http.StatusBadRequest, "%s resources are not in the Patient compartment", typ)
		}
		if g != nil && g.compartment != "" && g.compartment != compartment {
			// What a read of that Patient answers.
			return errorf(http.StatusNotFound, "Patient/%s is not known", compartment)
		}
		q.Compartment = compartment
		path = req.base + "/Patient/" + compartment + "/" + typ
	}
	// The policy's compartment and constraints are conditions of the
	// store's query, and of the inner searches of its chains: counts,
	// _total and pages see only what they allow.
	g.confine(q)
	inner, err := h.confineChains(ctx, q)
	if err != nil {
		return err
	}
	if q.Summary == "count" {
		n, err := h.store.Count(ctx, q)
		if err != nil {
			return err
		}
		return h.writeRaw(w, req, http.StatusOK, writeBundle(h.now(), "searchset", n, []link{{"self", pageURL(path, q, q.Count, 0, "")}}, nil))
	}
	pg, err := h.page(ctx, q, g.key()+"|"+inner)
	if err != nil {
		return err
	}
	entries, err := h.pageEntries(ctx, req, q, pg.matches)
	if err != nil {
		return err
	}
	links := []link{{"self", pageURL(path, q, q.Count, q.Offset, pg.token)}}
	if pg.hasNext {
		links = append(links, link{"next", pageURL(path, q, q.Count, q.Offset+q.Count, pg.token)})
	}
	if q.Offset > 0 {
		links = append(links, link{"previous", pageURL(path, q, q.Count, max(0, q.Offset-q.Count), pg.token)})
	}
	total := pg.total
	if q.Total == "none" {
		total = -1
	}
	return h.writeRaw(w, req, http.StatusOK, writeBundle(h.now(), "searchset", total, links, entries))
}

// includes resolves _include and _revinclude for a page, then the
// :iterate ones once more over what they found. Under a policy, only the
// resources it lets the caller see are included, and only they lead on.
// pageEntries are the entries of a search page: its matches, shaped by
// _summary and _elements, then what _include and _revinclude add.
func (h *Handler) pageEntries(ctx context.Context, req *request, q *search.Query, matches []store.Match) ([]entry, error) {
	versions, err := h.store.Fetch(ctx, matches)
	if err != nil {
		return nil, err
	}
	entries := make([]entry, 0, len(versions))
	seen := map[string]bool{}
	for _, v := range versions {
		body, err := h.shape(v, q)
		if err != nil {
			return nil, err
		}
		seen[v.Type+"/"+v.ID] = true
		entries = append(entries, entry{fullURL: req.base + "/" + v.Type + "/" + v.ID, resource: body, mode: "match"})
	}
	included, err := h.includes(ctx, q, versions, seen)
	if err != nil {
		return nil, err
	}
	for _, v := range included {
		entries = append(entries, entry{fullURL: req.base + "/" + v.Type + "/" + v.ID, resource: v.Body, mode: "include"})
	}
	return entries, nil
}

func (h *Handler) includes(ctx context.Context, q *search.Query, page []*store.Version, seen map[string]bool) ([]*store.Version, error) {
	var out []*store.Version
	from := page
	for round := 0; round < 2 && len(from) > 0; round++ {
		var found []*store.Version
		for _, inc := range q.Includes {
			if round > 0 && !inc.Iterate {
				continue
			}
			vs, err := h.store.Include(ctx, from, inc)
			if err != nil {
				return nil, err
			}
			if vs, err = h.visibleIncludes(ctx, vs); err != nil {
				return nil, err
			}
			for _, v := range vs {
				if k := v.Type + "/" + v.ID; !seen[k] {
					seen[k] = true
					found = append(found, v)
				}
			}
		}
		out = append(out, found...)
		from = found
	}
	return out, nil
}

// shape applies _summary and _elements to a search match.
func (h *Handler) shape(v *store.Version, q *search.Query) ([]byte, error) {
	if q.Summary == "" && len(q.Elements) == 0 {
		return v.Body, nil
	}
	return subset(v.Type, v.Body, q.Summary, q.Elements)
}

// pageURL is a link to one page of a search.
func pageURL(path string, q *search.Query, count, offset int, token string) string {
	vals := url.Values{}
	for k, v := range q.Self {
		vals[k] = v
	}
	vals.Set("_count", strconv.Itoa(count))
	if offset > 0 {
		vals.Set("_offset", strconv.Itoa(offset))
	}
	if token != "" {
		vals.Set("_page", token)
	}
	return path + "?" + vals.Encode()
}

// queryKey identifies a search for its snapshot: the same type,
// compartment, access constraints (see guard.key) and parameters. A
// snapshot made under one policy's constraints is never served under
// others.
func queryKey(q *search.Query, constraints string) string {
	return q.Type + "|" + q.Compartment + "|" + constraints + "|" + q.Self.Encode()
}

type page struct {
	matches []store.Match
	total   int
	hasNext bool
	token   string
}

// page finds the matches of one page. The first page of a search with more
// than one page stores a snapshot of up to SnapshotSize matches; the links
// to other pages name it, so that they show the results as they were when
// the search ran even while others write. Without a snapshot (expired,
// turned off, or past its end), a page is read at its offset.
func (h *Handler) page(ctx context.Context, q *search.Query, constraints string) (page, error) {
	key := queryKey(q, constraints)
	count := q.Count
	if q.Page != "" && h.pages != nil {
		if s := h.pages.get(ctx, q.Page, key); s != nil && (q.Offset < len(s.matches) || s.complete) {
			end := min(len(s.matches), q.Offset+count)
			start := min(q.Offset, end)
			return page{
				matches: s.matches[start:end],
				total:   s.total,
				hasNext: q.Offset+count < s.total,
				token:   q.Page,
			}, nil
		}
	}
	if q.Offset == 0 && h.pages != nil && count > 0 {
		limit := h.cfg.SnapshotSize + 1
		ms, err := h.store.Search(ctx, q, 0, max(limit, count+1))
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
			if total, err = h.total(ctx, q); err != nil {
				return page{}, err
			}
		}
		token := h.pages.put(ctx, key, ms, total, complete)
		return page{matches: ms[:count], total: total, hasNext: true, token: token}, nil
	}
	ms, err := h.store.Search(ctx, q, q.Offset, count+1)
	if err != nil {
		return page{}, err
	}
	pg := page{matches: ms, hasNext: len(ms) > count}
	if pg.hasNext {
		pg.matches = ms[:count]
	}
	if q.Offset == 0 && !pg.hasNext {
		pg.total = len(pg.matches)
	} else if pg.total, err = h.total(ctx, q); err != nil {
		return page{}, err
	}
	return pg, nil
}

func (h *Handler) total(ctx context.Context, q *search.Query) (int, error) {
	if q.Total == "none" {
		return -1, nil
	}
	return h.store.Count(ctx, q)
}

// snapshots keeps recent search results for paging, least recently used
// first out. With a shared store (store.Snapshots: a database every
// instance serves) each snapshot is also written there, so that a page link
// works on whichever instance it reaches; there a snapshot lives for the
// TTL after it was made (here, after its last use).
type snapshots struct {
	mu     sync.Mutex
	max    int
	ttl    time.Duration
	now    func() time.Time
	byTok  map[string]*list.Element
	lru    *list.List // of *snapshot, most recent at the front
	shared store.Snapshots
}

type snapshot struct {
	token    string
	key      string
	matches  []store.Match
	total    int
	complete bool
	used     time.Time
}

func newSnapshots(n int, ttl time.Duration, now func() time.Time, shared store.Snapshots) *snapshots {
	return &snapshots{max: n, ttl: ttl, now: now, byTok: map[string]*list.Element{}, lru: list.New(), shared: shared}
}

// put keeps a snapshot and returns its token; "" when the shared store
// could not take it (the pages are then read at their offsets).
func (s *snapshots) put(ctx context.Context, key string, ms []store.Match, total int, complete bool) string {
	var b [12]byte
	rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	snap := &snapshot{token: tok, key: key, matches: ms, total: total, complete: complete, used: s.now()}
	if s.shared != nil {
		if err := s.shared.PutSnapshot(ctx, tok, snap.encode(), snap.used.Add(s.ttl)); err != nil {
			return ""
		}
	}
	s.keep(snap)
	return tok
}

func (s *snapshots) keep(snap *snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byTok[snap.token]; ok {
		return
	}
	s.byTok[snap.token] = s.lru.PushFront(snap)
	for s.lru.Len() > s.max {
		old := s.lru.Remove(s.lru.Back()).(*snapshot)
		delete(s.byTok, old.token)
	}
}

func (s *snapshots) get(ctx context.Context, tok, key string) *snapshot {
	if snap := s.local(tok, key); snap != nil || s.shared == nil {
		return snap
	}
	// Made by another instance, or forgotten here.
	data, err := s.shared.GetSnapshot(ctx, tok, s.now())
	if err != nil {
		return nil
	}
	snap, ok := decodeSnapshot(tok, data)
	if !ok || snap.key != key {
		return nil
	}
	snap.used = s.now()
	s.keep(snap)
	return snap
}

func (s *snapshots) local(tok, key string) *snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.byTok[tok]
	if !ok {
		return nil
	}
	snap := e.Value.(*snapshot)
	now := s.now()
	if now.Sub(snap.used) > s.ttl {
		s.lru.Remove(e)
		delete(s.byTok, tok)
		return nil
	}
	if snap.key != key {
		return nil
	}
	snap.used = now
	s.lru.MoveToFront(e)
	return snap
}

// encode writes the snapshot for a shared store: its key, total,
// completeness and matches, as varints.
func (snap *snapshot) encode() []byte {
	b := make([]byte, 0, 16+len(snap.key)+len(snap.matches)*6)
	b = binary.AppendUvarint(b, uint64(len(snap.key)))
	b = append(b, snap.key...)
	b = binary.AppendVarint(b, int64(snap.total))
	if snap.complete {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(snap.matches)))
	for _, m := range snap.matches {
		b = binary.AppendVarint(b, m.Key)
		b = binary.AppendVarint(b, m.Version)
	}
	return b
}

// decodeSnapshot reads what encode wrote; ok is false for anything else.
func decodeSnapshot(tok string, b []byte) (*snapshot, bool) {
	snap := &snapshot{token: tok}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, false
	}
	b = b[k:]
	snap.key, b = string(b[:n]), b[n:]
	total, k := binary.Varint(b)
	if k <= 0 || len(b) < k+1 || total < 0 {
		return nil, false
	}
	snap.total, snap.complete, b = int(total), b[k] == 1, b[k+1:]
	count, k := binary.Uvarint(b)
	if k <= 0 || count > uint64(len(b)) {
		return nil, false
	}
	b = b[k:]
	snap.matches = make([]store.Match, 0, count)
	for range count {
		key, k1 := binary.Varint(b)
		if k1 <= 0 {
			return nil, false
		}
		ver, k2 := binary.Varint(b[k1:])
		if k2 <= 0 {
			return nil, false
		}
		b = b[k1+k2:]
		snap.matches = append(snap.matches, store.Match{Key: key, Version: ver})
	}
	return snap, len(b) == 0
}

// subsetTag marks resources that _summary or _elements cut.
var subsetTag = map[string]string{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}

// subset keeps the elements _summary and _elements ask for.
func subset(typ string, body []byte, summary string, elems []string) ([]byte, error) {
	if summary == "false" || (summary == "" && len(elems) == 0) {
		return body, nil
	}
	ms, err := members(body)
	if err != nil {
		return nil, err
	}
	keep := func(k string) bool {
		switch k {
		case "resourceType", "id", "meta":
			return true
		}
		switch summary {
		case "data":
			return k != "text"
		case "text":
			return k == "text"
		case "true":
			return matchesElement(k, spec.SummaryElements[typ])
		}
		return matchesElement(k, elems)
	}
	var b bytes.Buffer
	b.WriteByte('{')
	n := 0
	for _, m := range ms {
		if !keep(m.key) {
			continue
		}
		raw := []byte(m.raw)
		if m.key == "meta" {
			raw = tagSubsetted(raw)
		}
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(raw)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// matchesElement reports whether JSON key k is one of names, choice
// elements included (valueQuantity for value).
func matchesElement(k string, names []string) bool {
	for _, n := range names {
		if k == n || (strings.HasPrefix(k, n) && len(k) > len(n) && k[len(n)] >= 'A' && k[len(n)] <= 'Z') {
			return true
		}
	}
	return false
}

func tagSubsetted(meta []byte) []byte {
	var m map[string]any
	if json.Unmarshal(meta, &m) != nil {
		return meta
	}
	tags, _ := m["tag"].([]any)
	m["tag"] = append(tags, subsetTag)
	out, err := json.Marshal(m)
	if err != nil {
		return meta
	}
	return out
}

// history serves instance, type and system history.
func (h *Handler) history(w http.ResponseWriter, req *request, typ, id string) error {
	ctx := req.Context()
	perm := access.Search
	if id != "" {
		perm = access.Read
	}
	g, err := h.guardFor(ctx, perm, typ, "")
	if err != nil {
		return err
	}
	hq := store.HistoryQuery{Type: typ, ID: id, Count: h.cfg.DefaultCount}
	if g != nil {
		if len(g.filters) > 0 {
			return forbidden("", "history is not available under %s: past versions cannot be checked against scope constraints", g.describe())
		}
		// Only the versions that were in the compartment.
		hq.Compartment = g.compartment
		if typ == "" {
			hq.ExcludeTypes = hiddenTypes(ctx, g)
		}
	}
	var bad []issue
	if s := req.query.Get("_count"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			bad = append(bad, newIssue(http.StatusBadRequest, "_count must be a non-negative integer"))
		}
		hq.Count = min(n, h.cfg.MaxCount)
	}
	if s := req.query.Get("_since"); s != "" {
		lo, _, err := search.ParseDate(strings.ReplaceAll(s, " ", "+"))
		if err != nil {
			bad = append(bad, newIssue(http.StatusBadRequest, "_since: "+err.Error()))
		}
		hq.Since = time.UnixMilli(lo)
	}
	if s := req.query.Get("_page"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 1 {
			bad = append(bad, newIssue(http.StatusBadRequest, "bad _page"))
		}
		hq.Before = n
	}
	if len(bad) > 0 {
		return &httpError{status: http.StatusBadRequest, issues: bad}
	}
	vs, total, err := h.store.History(ctx, hq)
	if err != nil {
		return err
	}
	if id != "" && total == 0 && hq.Since.IsZero() {
		return errorf(http.StatusNotFound, "%s/%s is not known", typ, id)
	}
	path := req.base
	if typ != "" {
		path += "/" + typ
	}
	if id != "" {
		path += "/" + id
	}
	path += "/_history"
	self := url.Values{}
	for _, k := range []string{"_since", "_count", "_page"} {
		if v := req.query.Get(k); v != "" {
			self.Set(k, v)
		}
	}
	links := []link{{"self", path + "?" + self.Encode()}}
	if len(vs) == hq.Count && len(vs) > 0 {
		next := url.Values{}
		for k, v := range self {
			next[k] = v
		}
		next.Set("_count", strconv.Itoa(hq.Count))
		next.Set("_page", strconv.FormatInt(vs[len(vs)-1].Seq, 10))
		links = append(links, link{"next", path + "?" + next.Encode()})
	}
	entries := make([]entry, len(vs))
	for i, v := range vs {
		e := entry{fullURL: req.base + "/" + v.Type + "/" + v.ID}
		status := "200 OK"
		rq := &entryRequest{Method: v.Method, URL: v.Type + "/" + v.ID}
		switch {
		case v.Deleted:
			status = "204 No Content"
		case v.Version == 1 || v.Method == http.MethodPost:
			status = "201 Created"
			if v.Method == http.MethodPost {
				rq.URL = v.Type
			}
		}
		if !v.Deleted {
			e.resource = v.Body
		}
		e.request = rq
		e.response = &entryResponse{Status: status, Etag: etag(v.Version), LastModified: v.Updated.UTC().Format(time.RFC3339Nano)}
		entries[i] = e
	}
	return h.writeRaw(w, req, http.StatusOK, writeBundle(h.now(), "history", total, links, entries))
}
