package fhir

// Patient $everything: the patient, every resource of its Patient
// compartment, and the resources those reference that are outside any
// compartment (Practitioner, Organization, Location, Medication, …), under
// the access policy on the request. The collector that finds them also
// serves patient-level bulk exports.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// compartmentTypes are the resource types that can be members of a Patient
// compartment, Patient excepted, sorted.
var compartmentTypes = sync.OnceValue(func() []string {
	var out []string
	for t := range spec.PatientCompartment {
		if t != "Patient" {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out
})

// collector finds the resources of Patient compartments and what they
// reference, as searches of the store confined by the access policy on the
// context: each type by what a search of it may reach (else a read), so
// that types the policy does not grant are left out and compartments and
// scope constraints are the store's conditions.
type collector struct {
	h *Handler
	// types, when not nil, are the only types collected (_type).
	types map[string]bool
	// since and until bound meta.lastUpdated (FHIR instants), "" for none.
	since, until string
	// filters are _typeFilter queries: a resource of a type listed must
	// match one of its queries.
	filters map[string][]url.Values
	// local are the server's own base URLs: absolute references under
	// them name resources of this server.
	local []string

	guards map[string]*guard
	denied map[string]bool
	// fetched keeps the versions read for their references, up to
	// keepFetched of them, so that a page of the result need not read
	// them again; nil when not kept.
	fetched     map[int64]*store.Version
	keepFetched int
}

func newCollector(h *Handler, local []string) *collector {
	return &collector{h: h, local: local, guards: map[string]*guard{}, denied: map[string]bool{}}
}

// wants reports whether typ is collected at all.
func (c *collector) wants(typ string) bool { return c.types == nil || c.types[typ] }

// guardOf decides what of typ the caller may reach: what a search may,
// else what a read may; false when the policy grants neither.
func (c *collector) guardOf(ctx context.Context, typ string) (*guard, bool) {
	if c.denied[typ] {
		return nil, false
	}
	if g, ok := c.guards[typ]; ok {
		return g, true
	}
	g, err := c.h.guardFor(ctx, access.Search, typ, "")
	if err != nil {
		if g, err = c.h.guardFor(ctx, access.Read, typ, ""); err != nil {
			c.denied[typ] = true
			return nil, false
		}
	}
	c.guards[typ] = g
	return g, true
}

// find returns the matches of typ, in order of creation: within the
// compartment of patient compartment ("" for none), among ids (nil for
// any), matching one of the type's filters and the lastUpdated bounds,
// within what the policy lets the caller reach.
func (c *collector) find(ctx context.Context, typ, compartment string, ids []string) ([]store.Match, error) {
	g, ok := c.guardOf(ctx, typ)
	if !ok {
		return nil, nil
	}
	if compartment != "" && g != nil && g.compartment != "" && g.compartment != compartment {
		return nil, nil
	}
	filters := c.filters[typ]
	if len(filters) == 0 {
		filters = []url.Values{nil}
	}
	var out []store.Match
	seen := map[int64]bool{}
	for _, f := range filters {
		params := url.Values{}
		for k, v := range f {
			params[k] = slices.Clone(v)
		}
		if c.since != "" {
			params.Add("_lastUpdated", "ge"+c.since)
		}
		if c.until != "" {
			params.Add("_lastUpdated", "le"+c.until)
		}
		if ids != nil {
			params.Add("_id", strings.Join(ids, ","))
		}
		q, err := search.Parse(typ, params, search.Options{Now: c.h.now(), LocalBases: c.local})
		if err != nil {
			return nil, searchError(err, "")
		}
		q.Compartment = compartment
		g.confine(q)
		ms, err := c.h.store.Search(ctx, q, 0, math.MaxInt32)
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			if !seen[m.Key] {
				seen[m.Key] = true
				out = append(out, m)
			}
		}
	}
	if len(filters) > 1 {
		sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	}
	return out, nil
}

// compartment returns the matches of patient pid's compartment by type:
// the Patient itself first, then the other members type by type.
func (c *collector) compartment(ctx context.Context, pid string) ([]typedMatches, error) {
	var out []typedMatches
	if c.wants("Patient") {
		self, err := c.find(ctx, "Patient", "", []string{pid})
		if err != nil {
			return nil, err
		}
		// Patients linking to pid are members too.
		linked, err := c.find(ctx, "Patient", pid, nil)
		if err != nil {
			return nil, err
		}
		for _, m := range linked {
			if len(self) == 0 || m.Key != self[0].Key {
				self = append(self, m)
			}
		}
		out = append(out, typedMatches{"Patient", self})
	}
	for _, t := range compartmentTypes() {
		if !c.wants(t) {
			continue
		}
		ms, err := c.find(ctx, t, pid, nil)
		if err != nil {
			return nil, err
		}
		if len(ms) > 0 {
			out = append(out, typedMatches{t, ms})
		}
	}
	return out, nil
}

// typedMatches are matches of one resource type.
type typedMatches struct {
	typ string
	ms  []store.Match
}

// refSet collects references to resources outside every compartment, by
// type.
type refSet map[string]map[string]bool

// scan adds the references of v's body to types outside the compartment
// that the collector wants.
func (c *collector) scan(refs refSet, v *store.Version) {
	eachReference(v.Body, func(ref string) {
		typ, id, ok := c.localRef(ref)
		if !ok || access.InCompartment(typ) || !c.wants(typ) {
			return
		}
		if refs[typ] == nil {
			refs[typ] = map[string]bool{}
		}
		refs[typ][id] = true
	})
}

// localRef reads a literal reference to a resource of this server:
// "Practitioner/12", or the same under one of its base URLs.
func (c *collector) localRef(ref string) (typ, id string, ok bool) {
	if strings.Contains(ref, ":") {
		found := false
		for _, b := range c.local {
			if rest, ok := strings.CutPrefix(ref, b+"/"); ok {
				ref, found = rest, true
				break
			}
		}
		if !found {
			return "", "", false
		}
	}
	if i := strings.Index(ref, "/_history/"); i >= 0 {
		ref = ref[:i]
	}
	typ, id, ok = strings.Cut(ref, "/")
	if !ok || !spec.IsResourceType(typ) || !validID(id) {
		return "", "", false
	}
	return typ, id, true
}

// resolve returns the matches of the referenced resources the policy lets
// the caller reach, type by type in name order.
func (c *collector) resolve(ctx context.Context, refs refSet) ([]typedMatches, error) {
	types := make([]string, 0, len(refs))
	for t := range refs {
		types = append(types, t)
	}
	sort.Strings(types)
	var out []typedMatches
	for _, t := range types {
		ids := make([]string, 0, len(refs[t]))
		for id := range refs[t] {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		var ms []store.Match
		const chunk = 500
		for start := 0; start < len(ids); start += chunk {
			part, err := c.find(ctx, t, "", ids[start:min(len(ids), start+chunk)])
			if err != nil {
				return nil, err
			}
			ms = append(ms, part...)
		}
		if len(ms) > 0 {
			sort.Slice(ms, func(i, j int) bool { return ms[i].Key < ms[j].Key })
			out = append(out, typedMatches{t, ms})
		}
	}
	return out, nil
}

// everything returns the matches of the compartments of patients (each
// resource once) followed by those of the resources they reference
// outside every compartment. It reads every member's body once to find
// the references.
func (c *collector) everything(ctx context.Context, patients []string) ([]store.Match, error) {
	var out []store.Match
	seen := map[int64]bool{}
	refs := refSet{}
	for _, pid := range patients {
		groups, err := c.compartment(ctx, pid)
		if err != nil {
			return nil, err
		}
		for _, g := range groups {
			var fresh []store.Match
			for _, m := range g.ms {
				if !seen[m.Key] {
					seen[m.Key] = true
					fresh = append(fresh, m)
				}
			}
			if err := c.scanMatches(ctx, refs, fresh); err != nil {
				return nil, err
			}
			out = append(out, fresh...)
		}
	}
	inc, err := c.resolve(ctx, refs)
	if err != nil {
		return nil, err
	}
	for _, g := range inc {
		out = append(out, g.ms...)
	}
	return out, nil
}

// scanMatches reads the bodies of ms, a chunk at a time, for references.
func (c *collector) scanMatches(ctx context.Context, refs refSet, ms []store.Match) error {
	// Only references to types outside the compartment matter.
	if c.types != nil {
		outside := false
		for t := range c.types {
			if !access.InCompartment(t) {
				outside = true
				break
			}
		}
		if !outside {
			return nil
		}
	}
	const chunk = 500
	for start := 0; start < len(ms); start += chunk {
		vs, err := c.h.store.Fetch(ctx, ms[start:min(len(ms), start+chunk)])
		if err != nil {
			return err
		}
		for _, v := range vs {
			c.scan(refs, v)
			if c.fetched != nil && len(c.fetched) < c.keepFetched {
				c.fetched[v.Key] = v
			}
		}
	}
	return nil
}

// versions returns the versions of ms: those kept when their references
// were read, the others fetched.
func (c *collector) versions(ctx context.Context, ms []store.Match) ([]*store.Version, error) {
	var missing []store.Match
	for _, m := range ms {
		if v := c.fetched[m.Key]; v == nil || v.Version != m.Version {
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		vs, err := c.h.store.Fetch(ctx, missing)
		if err != nil {
			return nil, err
		}
		if c.fetched == nil {
			c.fetched = map[int64]*store.Version{}
		}
		for _, v := range vs {
			c.fetched[v.Key] = v
		}
	}
	out := make([]*store.Version, 0, len(ms))
	for _, m := range ms {
		// Versions that no longer exist are left out, as Fetch does.
		if v := c.fetched[m.Key]; v != nil && v.Version == m.Version {
			out = append(out, v)
		}
	}
	return out, nil
}

// eachReference calls fn with the value of every "reference" member of a
// JSON document (a Reference's reference, at any depth).
func eachReference(body []byte, fn func(string)) {
	key := []byte(`"reference"`)
	for i := 0; i < len(body); {
		j := bytes.Index(body[i:], key)
		if j < 0 {
			return
		}
		j += i
		i = j + len(key)
		if j > 0 && body[j-1] == '\\' {
			continue // text inside a string
		}
		k := skipSpace(body, i)
		if k >= len(body) || body[k] != ':' {
			continue
		}
		k = skipSpace(body, k+1)
		if k >= len(body) || body[k] != '"' {
			continue
		}
		end := skipString(body, k)
		raw := body[k+1 : max(k+1, end-1)]
		if bytes.IndexByte(raw, '\\') < 0 {
			fn(string(raw))
		} else {
			var s string
			if json.Unmarshal(body[k:end], &s) == nil {
				fn(s)
			}
		}
		i = end
	}
}

// localBases are the absolute base URLs under which a reference names a
// resource of this server: the configured base_url and the request's own.
func (h *Handler) localBases(req *request) []string {
	out := []string{req.base}
	if own := h.requestBase(req.Request); own != req.base {
		out = append(out, own)
	}
	return out
}

// requestBase is the base URL the request was sent to, from its Host and
// scheme, whatever base_url says.
func (h *Handler) requestBase(r *http.Request) string {
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

// policyKey identifies what the policy on ctx lets the caller search and
// read, type by type, for paging snapshots of operations that span types:
// two policies with the same key reach the same resources.
func (h *Handler) policyKey(ctx context.Context) string {
	p := access.FromContext(ctx)
	if p == nil {
		return ""
	}
	sum := sha256.New()
	for _, t := range spec.ResourceTypes {
		for _, perm := range []access.Perm{access.Search, access.Read} {
			d := p.Decide(perm, t)
			sum.Write([]byte(t))
			if d.Allowed {
				sum.Write([]byte{1})
				sum.Write([]byte(d.Compartment))
				for _, f := range d.Filters {
					sum.Write([]byte{0})
					sum.Write([]byte(f.Encode()))
				}
			}
			sum.Write([]byte{0xff})
		}
	}
	return hex.EncodeToString(sum.Sum(nil))
}

// everythingRequest is a parsed $everything request.
type everythingRequest struct {
	since         string
	types         map[string]bool
	count, offset int
	page          string
	self          url.Values
}

// parseEverything reads the parameters of $everything: _since, _type,
// _count and the paging parameters. start and end (care dates) are not
// supported; other parameters are ignored, or a 400 with handling=strict.
func (h *Handler) parseEverything(params url.Values, strict bool) (*everythingRequest, error) {
	e := &everythingRequest{count: h.cfg.DefaultCount, self: url.Values{}}
	var bad []issue
	fail := func(format string, args ...any) {
		bad = append(bad, newIssue(http.StatusBadRequest, "$everything: "+fmt.Sprintf(format, args...)))
	}
	for name, vals := range params {
		v := vals[len(vals)-1]
		switch name {
		case "_since":
			s, err := instant(v)
			if err != nil {
				fail("_since: %v", err)
				continue
			}
			e.since = s
			e.self.Set(name, v)
		case "_type":
			types, err := typeList(vals)
			if err != nil {
				fail("_type: %v", err)
				continue
			}
			e.types = types
			e.self[name] = vals
		case "_count":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				fail("_count must be a non-negative integer")
				continue
			}
			e.count = min(n, h.cfg.MaxCount)
		case "_offset":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				fail("_offset must be a non-negative integer")
				continue
			}
			e.offset = n
		case "_page":
			e.page = v
		case "_format", "_pretty":
		case "start", "end":
			fail("the parameter %s is not supported", name)
		default:
			if strict {
				fail("unknown parameter %s", name)
			}
		}
	}
	if len(bad) > 0 {
		return nil, &httpError{status: http.StatusBadRequest, issues: bad}
	}
	return e, nil
}

// instant checks a FHIR date, dateTime or instant and returns the instant
// it starts at, as a search value ("2024-06-01T00:00:00.000Z").
func instant(s string) (string, error) {
	lo, _, err := search.ParseDate(strings.ReplaceAll(s, " ", "+"))
	if err != nil {
		return "", err
	}
	return formatMillis(lo), nil
}

// formatMillis formats milliseconds since the epoch as a FHIR instant.
func formatMillis(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

// typeList reads comma-separated resource types.
func typeList(vals []string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, v := range vals {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if t == "" {
				continue
			}
			if !spec.IsResourceType(t) {
				return nil, errorf(http.StatusBadRequest, "unknown resource type %q", t)
			}
			out[t] = true
		}
	}
	if len(out) == 0 {
		return nil, errorf(http.StatusBadRequest, "no resource type given")
	}
	return out, nil
}

// everything serves Patient/[id]/$everything, and Patient/$everything (id
// ""): for a caller confined to a patient's compartment that patient,
// otherwise every patient the caller may search.
func (h *Handler) everything(w http.ResponseWriter, req *request, id string) error {
	ctx := req.Context()
	params, err := h.operationParams(req)
	if err != nil {
		return err
	}
	e, err := h.parseEverything(params, req.prefer.strict)
	if err != nil {
		return err
	}
	path := req.base + "/Patient/$everything"
	var patients []string
	if id != "" {
		path = req.base + "/Patient/" + id + "/$everything"
		if err := h.readable(ctx, w, "Patient", id); err != nil {
			return err
		}
		patients = []string{id}
	} else if patients, err = h.visiblePatients(ctx); err != nil {
		return err
	}
	c := newCollector(h, h.localBases(req))
	c.types, c.since = e.types, e.since
	c.fetched, c.keepFetched = map[int64]*store.Version{}, h.cfg.MaxCount
	key := "everything|" + path + "|" + h.policyKey(ctx) + "|" + e.self.Encode()
	var all []store.Match
	token := ""
	if e.page != "" && h.pages != nil {
		if s := h.pages.get(ctx, e.page, key); s != nil {
			all, token = s.matches, e.page
		}
	}
	if token == "" {
		if all, err = c.everything(ctx, patients); err != nil {
			return err
		}
		if len(all) > e.count && h.pages != nil && len(all) <= h.cfg.SnapshotSize {
			token = h.pages.put(ctx, key, all, len(all), true)
		}
	}
	start := min(e.offset, len(all))
	end := min(len(all), start+e.count)
	versions, err := c.versions(ctx, all[start:end])
	if err != nil {
		return err
	}
	entries := make([]entry, 0, len(versions))
	for _, v := range versions {
		mode := "match"
		if !access.InCompartment(v.Type) {
			mode = "include"
		}
		entries = append(entries, entry{fullURL: req.base + "/" + v.Type + "/" + v.ID, resource: v.Body, mode: mode})
	}
	pageLink := func(offset int) string {
		vals := url.Values{}
		for k, v := range e.self {
			vals[k] = v
		}
		vals.Set("_count", strconv.Itoa(e.count))
		if offset > 0 {
			vals.Set("_offset", strconv.Itoa(offset))
		}
		if token != "" {
			vals.Set("_page", token)
		}
		return path + "?" + vals.Encode()
	}
	links := []link{{"self", pageLink(e.offset)}}
	if end < len(all) {
		links = append(links, link{"next", pageLink(end)})
	}
	if e.offset > 0 {
		links = append(links, link{"previous", pageLink(max(0, e.offset-e.count))})
	}
	return h.writeRaw(w, req, http.StatusOK, writeBundle(h.now(), "searchset", len(all), links, entries))
}

// readable checks that the caller may read typ/id: the 404 (or 410) a
// read would answer otherwise, or the policy's 403.
func (h *Handler) readable(ctx context.Context, w http.ResponseWriter, typ, id string) error {
	g, err := h.guardFor(ctx, access.Read, typ, "")
	if err != nil {
		return err
	}
	if g.constrained() {
		_, err := h.readGuarded(ctx, w, g, typ, id)
		return err
	}
	_, err = h.current(ctx, h.store, typ, id, "")
	return err
}

// visiblePatients returns the ids of the patients the caller may search:
// the patient in context for a caller confined to one, otherwise every
// Patient the policy reaches (all without a policy), in order of creation.
func (h *Handler) visiblePatients(ctx context.Context) ([]string, error) {
	g, err := h.guardFor(ctx, access.Search, "Patient", "")
	if err != nil {
		return nil, err
	}
	q, err := search.Parse("Patient", url.Values{}, search.Options{Now: h.now()})
	if err != nil {
		return nil, err
	}
	if g != nil && g.compartment != "" {
		q, err = h.idQuery(g, g.compartment)
		if err != nil {
			return nil, err
		}
	}
	g.confine(q)
	ms, err := h.store.Search(ctx, q, 0, math.MaxInt32)
	if err != nil {
		return nil, err
	}
	var ids []string
	const chunk = 500
	for start := 0; start < len(ms); start += chunk {
		vs, err := h.store.Fetch(ctx, ms[start:min(len(ms), start+chunk)])
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			ids = append(ids, v.ID)
		}
	}
	return ids, nil
}

// operationParams are the parameters of an operation: the query string
// and, for a POST, those of its Parameters body (value[x] read as the
// strings a query would carry; a Reference as its reference).
func (h *Handler) operationParams(req *request) (url.Values, error) {
	params := url.Values{}
	for k, v := range req.query {
		params[k] = slices.Clone(v)
	}
	if req.Method != http.MethodPost {
		return params, nil
	}
	body, err := h.readBody(req.Request)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return params, nil
	}
	var p struct {
		ResourceType string                       `json:"resourceType"`
		Parameter    []map[string]json.RawMessage `json:"parameter"`
	}
	if err := json.Unmarshal(body, &p); err != nil || p.ResourceType != "Parameters" {
		return nil, errorf(http.StatusBadRequest, "the body of an operation must be a Parameters resource")
	}
	for i, prm := range p.Parameter {
		var name string
		if json.Unmarshal(prm["name"], &name) != nil || name == "" {
			return nil, errorf(http.StatusBadRequest, "Parameters.parameter[%d] has no name", i)
		}
		v, err := parameterValue(prm)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "Parameters.parameter[%d] (%s): %v", i, name, err)
		}
		params.Add(name, v)
	}
	return params, nil
}

// parameterValue reads the value[x] of an operation parameter as a string.
func parameterValue(prm map[string]json.RawMessage) (string, error) {
	for k, raw := range prm {
		if !strings.HasPrefix(k, "value") || len(k) == len("value") {
			continue
		}
		switch k {
		case "valueReference":
			var r struct {
				Reference string `json:"reference"`
			}
			if err := json.Unmarshal(raw, &r); err != nil || r.Reference == "" {
				return "", errorf(http.StatusBadRequest, "valueReference needs a reference")
			}
			return r.Reference, nil
		case "valueInteger", "valueUnsignedInt", "valuePositiveInt", "valueDecimal", "valueBoolean":
			var n json.RawMessage
			if err := json.Unmarshal(raw, &n); err != nil {
				return "", err
			}
			return string(bytes.TrimSpace(n)), nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", errorf(http.StatusBadRequest, "%s is not a primitive value", k)
		}
		return s, nil
	}
	return "", errorf(http.StatusBadRequest, "no value[x]")
}
