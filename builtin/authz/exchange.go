package authz

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	jsonpatch "github.com/evanphx/json-patch/v5"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/gateway/outcome"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// exchange is one FHIR interaction as the gateway forwards it: a request
// of its own, or an entry of a batch or transaction.
type exchange struct {
	req fhirreq.Request
	// method is GET (for HEAD too), POST, PUT, PATCH or DELETE.
	method string
	// path is below the base, without a leading '/': "Observation/1",
	// "Patient/85/Observation", "Observation/_search", "" for the base.
	path  string
	query url.Values
	// the conditional headers (or the entry's request fields)
	ifMatch, ifNoneExist, ifNoneMatch, ifModifiedSince string
	// contentType is the body's media type ("" for FHIR JSON).
	contentType string
	// body is the resource written, the patch, or a search's form.
	body []byte
}

func (x *exchange) clone() *exchange {
	y := *x
	y.query = cloneValues(x.query)
	return &y
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// plan is what the gateway does with one exchange it enforces.
type plan struct {
	// pass forwards the exchange as it came, unchecked: the policy's
	// type-level decision says everything.
	pass bool
	// out, when set, is forwarded instead, and check (when set) vets the
	// answer.
	out   *exchange
	check func(status int, body []byte) verdict
	// Otherwise the gateway answers itself: status with reason, a
	// refusal when refused is set (403, 404), else a local answer (204
	// for a conditional delete that matches nothing, 412, …).
	status  int
	reason  string
	refused bool
	// compartment is the patient the exchange was confined to.
	compartment string
}

func refusal(status int, reason string) *plan {
	return &plan{refused: true, status: status, reason: reason}
}

func local(status int, reason string) *plan { return &plan{status: status, reason: reason} }

// verdict is what a check says of an answer.
type verdict struct {
	// status and body replace the answer's (body nil: unchanged).
	status int
	body   []byte
	// denied: the answer was outside the policy and is replaced by a 404
	// (msg for the client, reason for the record).
	denied      bool
	reason, msg string
	// failed: the answer could not be checked (502, reason).
	failed bool
}

func asAnswered(status int) verdict { return verdict{status: status} }

func failed(reason string) verdict {
	return verdict{status: http.StatusBadGateway, failed: true, reason: reason}
}

// checked reports whether a decision needs the gateway to look at data:
// it confines to a compartment or carries v2 constraints.
func checked(d access.Decision) bool { return d.Compartment != "" || len(d.Filters) > 0 }

// planExchange decides how the gateway enforces dec (allowed, for perm)
// on x.
func (c *call) planExchange(x *exchange, dec access.Decision, perm access.Perm) *plan {
	typ := x.req.Type
	if len(dec.Filters) > 0 && typ != "" {
		for _, f := range dec.Filters {
			if err := access.CheckFilter(typ, f); err != nil {
				return refusal(http.StatusForbidden, "the scope's constraint on "+typ+" cannot be checked by the gateway: "+err.Error())
			}
		}
	}
	if checked(dec) || x.req.Interaction == fhirreq.Operation || isSearch(x.req.Interaction) {
		if f := x.query.Get("_format"); f != "" && !jsonFormat(f) {
			return refusal(http.StatusNotAcceptable, "only JSON is served here (_format="+f+")")
		}
	}
	var pl *plan
	switch x.req.Interaction {
	case fhirreq.Read, fhirreq.VRead:
		if !checked(dec) {
			return &plan{pass: true}
		}
		out := x.clone()
		out.method = http.MethodGet
		stripForCheck(out.query, false)
		out.ifNoneMatch, out.ifModifiedSince = "", ""
		pl = &plan{out: out, check: c.resourceCheck(x.req.Type, x.req.ID, dec)}
	case fhirreq.HistoryInstance:
		if !checked(dec) {
			return &plan{pass: true}
		}
		out := x.clone()
		stripForCheck(out.query, false)
		pl = &plan{out: out, check: c.instanceHistoryCheck(typ, x.req.ID, dec)}
	case fhirreq.SearchType, fhirreq.SearchSystem:
		pl = c.planSearch(x, dec)
	case fhirreq.HistoryType, fhirreq.HistorySystem:
		if dec.Compartment != "" {
			return refusal(http.StatusForbidden, "a history of "+typeOrAll(typ)+" cannot be confined to the patient's compartment: read the history of one resource")
		}
		if len(dec.Filters) > 0 {
			return refusal(http.StatusForbidden, "the scope's constraints cannot be applied to a history of "+typeOrAll(typ))
		}
		if typ != "" {
			return &plan{pass: true}
		}
		out := x.clone()
		stripForCheck(out.query, false)
		decide := c.perType(access.Search)
		pl = &plan{out: out, check: c.bundleCheck(decide, func(t string) bool {
			d := decide(t, "")
			return d.Allowed && !checked(d)
		}, false)}
	case fhirreq.Create:
		pl = c.planCreate(x, dec)
	case fhirreq.Update:
		pl = c.planUpdate(x, dec, perm)
	case fhirreq.Patch:
		pl = c.planPatch(x, dec)
	case fhirreq.Delete:
		pl = c.planDelete(x, dec)
	case fhirreq.Operation:
		pl = c.planOperation(x, dec)
	default:
		return refusal(http.StatusForbidden, "interaction "+x.req.Interaction+" is not allowed here")
	}
	if pl.compartment == "" {
		pl.compartment = dec.Compartment
	}
	return pl
}

func typeOrAll(typ string) string {
	if typ == "" {
		return "every type"
	}
	return typ
}

func jsonFormat(f string) bool {
	switch strings.TrimSpace(strings.SplitN(f, ";", 2)[0]) {
	case "json", "application/json", "application/fhir+json":
		return true
	}
	return false
}

// stripForCheck removes what would keep the gateway from checking an
// answer: _elements and _summary (the elements that place a resource in a
// compartment may be left out), except _summary=count on searches, and
// _format (the gateway asks for JSON).
func stripForCheck(q url.Values, search bool) {
	delete(q, "_elements")
	delete(q, "_format")
	if !search || q.Get("_summary") != "count" {
		delete(q, "_summary")
	}
}

// fixedDecision decides dec for typ, and refuses every other type.
func fixedDecision(typ string, dec access.Decision) func(string, string) access.Decision {
	return func(t, _ string) access.Decision {
		if t == typ {
			return dec
		}
		return access.Decision{Reason: t + " is not " + typ}
	}
}

// perType decides perm per resource type, once per type.
func (c *call) perType(perm access.Perm) func(string, string) access.Decision {
	memo := map[string]access.Decision{}
	return func(t, _ string) access.Decision {
		d, ok := memo[t]
		if !ok {
			d = c.pol.Decide(perm, t)
			memo[t] = d
		}
		return d
	}
}

// resourceCheck vets the answer to a read: a resource of type typ (and id,
// when given) that dec admits, else 404.
func (c *call) resourceCheck(typ, id string, dec access.Decision) func(int, []byte) verdict {
	return func(status int, body []byte) verdict {
		if status != http.StatusOK {
			return asAnswered(status)
		}
		res, err := access.DecodeResource(body)
		if err != nil {
			return failed("the upstream answered " + typ + " with something that is not a resource")
		}
		if res.Type != typ || id != "" && res.ID != id {
			return failed("the upstream answered " + typ + "/" + id + " with " + res.Type + "/" + res.ID)
		}
		if ok, why := dec.Admits(res); !ok {
			c.p.metrics.removed.WithLabelValues(c.route, "read").Inc()
			return verdict{status: http.StatusNotFound, denied: true, reason: why, msg: typ + "/" + id + " is not known"}
		}
		return asAnswered(status)
	}
}

// instanceHistoryCheck vets the history of one resource: the versions the
// decision does not admit are removed, and when none is left the resource
// is answered as a read of it would be, 404, as if it did not exist (an
// empty history would tell that it does).
func (c *call) instanceHistoryCheck(typ, id string, dec access.Decision) func(int, []byte) verdict {
	return func(status int, body []byte) verdict {
		if status != http.StatusOK {
			return asAnswered(status)
		}
		out, st, err := filterBundle(body, fixedDecision(typ, dec), nil)
		if err != nil {
			return failed("the upstream answered with a Bundle the gateway cannot read: " + err.Error())
		}
		if st.match+st.bare > 0 {
			c.p.metrics.removed.WithLabelValues(c.route, "read").Add(float64(st.match))
		}
		if st.kept == 0 {
			return verdict{status: http.StatusNotFound, denied: true, reason: "no version of " + typ + "/" + id + " is in the policy",
				msg: typ + "/" + id + " is not known"}
		}
		return verdict{status: status, body: out}
	}
}

// bundleCheck vets a searchset or history Bundle: entries whose resource
// the decision for its type and search mode (decide) does not admit are
// removed; entries without a resource (deletions in a history) are kept
// when keepBare says so. refuseMatches applies on_violation: refuse.
func (c *call) bundleCheck(decide func(typ, mode string) access.Decision, keepBare func(typ string) bool, narrowed bool) func(int, []byte) verdict {
	return func(status int, body []byte) verdict {
		if status != http.StatusOK {
			return asAnswered(status)
		}
		out, st, err := filterBundle(body, decide, keepBare)
		if err != nil {
			return failed("the upstream answered with a Bundle the gateway cannot read: " + err.Error())
		}
		if st.include > 0 {
			c.p.metrics.removed.WithLabelValues(c.route, "include").Add(float64(st.include))
		}
		if st.match > 0 {
			c.p.metrics.removed.WithLabelValues(c.route, "match").Add(float64(st.match))
			if narrowed {
				c.p.logger.LogAttrs(c.r.Context(), slog.LevelWarn, "upstream answered a narrowed search outside the policy",
					slog.String("request_id", gateway.RequestID(c.r.Context())),
					slog.String("route", c.route),
					slog.String("user", c.id.UserID),
					slog.String("type", c.typ),
					slog.Int("removed", st.match))
				if c.p.cfg.Enforcement.OnViolation == ViolationRefuse {
					return failed("the upstream answered with resources outside the policy")
				}
			}
		}
		return verdict{status: status, body: out}
	}
}

// planSearch narrows a search to the policy and vets its answer.
func (c *call) planSearch(x *exchange, dec access.Decision) *plan {
	typ := x.req.Type
	q := x.query
	for _, k := range []string{"_query", "_containedType"} {
		if _, ok := q[k]; ok {
			return refusal(http.StatusForbidden, k+" cannot be checked by the gateway")
		}
	}
	if v, ok := q["_contained"]; ok && !(len(v) == 1 && v[0] == "false") {
		return refusal(http.StatusForbidden, "_contained cannot be checked by the gateway")
	}
	includes := false
	for k := range q {
		if strings.HasPrefix(k, "_include") || strings.HasPrefix(k, "_revinclude") {
			includes = true
		}
	}
	if !checked(dec) && !includes && typ != "" {
		return &plan{pass: true}
	}
	out := x.clone()
	out.method = http.MethodGet
	out.path = strings.TrimSuffix(strings.TrimSuffix(out.path, "_search"), "/")
	out.body, out.contentType = nil, ""
	stripForCheck(out.query, true)
	if why := c.narrow(out, typ, dec, c.p.cfg.Enforcement.Narrowing); why != "" {
		return refusal(http.StatusForbidden, why)
	}
	var decide func(string, string) access.Decision
	search, read := c.perType(access.Search), c.perType(access.Read)
	decide = func(t, mode string) access.Decision {
		if mode == "include" {
			return read(t, mode)
		}
		if t == typ {
			return dec
		}
		return search(t, mode)
	}
	return &plan{out: out, check: c.bundleCheck(decide, nil, checked(dec))}
}

// narrow confines out, a search of typ ("" for every type), to dec: the
// patient's compartment and the scopes' constraints. It returns why it
// cannot.
func (c *call) narrow(out *exchange, typ string, dec access.Decision, form string) string {
	if pid := dec.Compartment; pid != "" {
		switch {
		case typ == "":
			if out.req.CompartmentID == "" {
				return "a search of every type cannot be confined to the patient's compartment: search one type at a time"
			}
		case typ == "Patient":
			out.query.Add("_id", pid)
		case out.req.CompartmentID != "":
			// Already a search of the patient's compartment (its id was
			// checked).
		case form == NarrowCompartment:
			out.path = "Patient/" + pid + "/" + typ
		default:
			out.query.Add(compartmentParam(typ), "Patient/"+pid)
		}
	}
	if len(dec.Filters) > 0 {
		if typ == "" {
			return "the scopes' constraints cannot be applied to a search of every type"
		}
		add, ok := expressFilters(dec.Filters)
		if !ok {
			return "the scopes' constraints on " + typ + " are alternatives that one search cannot express"
		}
		for k, vs := range add {
			out.query[k] = append(out.query[k], vs...)
		}
	}
	return ""
}

// compartmentParam is the parameter that adds a compartment to a search of
// typ: patient, else subject, else the first the compartment definition
// lists.
func compartmentParam(typ string) string {
	ps := access.CompartmentParams(typ)
	for _, want := range []string{"patient", "subject"} {
		for _, p := range ps {
			if p == want {
				return p
			}
		}
	}
	if len(ps) > 0 {
		return ps[0]
	}
	return "patient"
}

// expressFilters turns alternative constraints into search parameters:
// what they share is ANDed as is, and alternatives that differ in one
// parameter with one value each are ORed with a comma. It reports false
// when the alternatives cannot be written as one search.
func expressFilters(filters []url.Values) (url.Values, bool) {
	if len(filters) == 1 {
		return cloneValues(filters[0]), true
	}
	common := url.Values{}
	for k, vs := range filters[0] {
		same := true
		for _, f := range filters[1:] {
			if !equalStrings(f[k], vs) {
				same = false
				break
			}
		}
		if same {
			common[k] = append([]string(nil), vs...)
		}
	}
	key := ""
	var values []string
	for _, f := range filters {
		var rest []string
		for k := range f {
			if _, ok := common[k]; !ok {
				rest = append(rest, k)
			}
		}
		if len(rest) == 0 {
			return common, true // this alternative alone is the weakest
		}
		if len(rest) > 1 || key != "" && rest[0] != key || len(f[rest[0]]) != 1 {
			return nil, false
		}
		key = rest[0]
		values = append(values, f[key][0])
	}
	common[key] = []string{strings.Join(values, ",")}
	return common, true
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// planCreate checks a new resource against dec before it is written. Its
// type is checked whatever dec: a create of an Observation must not write
// a Condition the scopes do not allow, should an upstream accept it.
func (c *call) planCreate(x *exchange, dec access.Decision) *plan {
	res, bad := c.bodyResource(x)
	if bad != nil {
		return bad
	}
	if !checked(dec) {
		return &plan{pass: true}
	}
	if ok, why := dec.Admits(res); !ok {
		return refusal(http.StatusForbidden, "the new "+x.req.Type+" would not be allowed: "+why)
	}
	out := x.clone()
	if x.ifNoneExist != "" {
		crit, err := url.ParseQuery(x.ifNoneExist)
		if err != nil {
			return local(http.StatusBadRequest, "bad If-None-Exist: "+err.Error())
		}
		probe := &exchange{req: fhirreq.Request{Interaction: fhirreq.SearchType, Type: x.req.Type}, path: x.req.Type, query: crit}
		if why := c.narrow(probe, x.req.Type, dec, NarrowParameter); why != "" {
			return refusal(http.StatusForbidden, why)
		}
		out.ifNoneExist = probe.query.Encode()
	}
	// A conditional create that finds a match answers it: vet it like a
	// read.
	read := c.resourceCheck(x.req.Type, "", dec)
	return &plan{out: out, check: func(status int, body []byte) verdict {
		if status == http.StatusOK && len(bytes.TrimSpace(body)) > 0 {
			return read(status, body)
		}
		return asAnswered(status)
	}}
}

// bodyResource decodes the resource an exchange writes.
func (c *call) bodyResource(x *exchange) (*access.Resource, *plan) {
	res, err := access.DecodeResource(x.body)
	if err != nil {
		return nil, local(http.StatusBadRequest, "the body is not a FHIR resource: "+err.Error())
	}
	if res.Type != x.req.Type {
		return nil, local(http.StatusBadRequest, "the body is a "+res.Type+", not a "+x.req.Type)
	}
	return res, nil
}

// planUpdate checks the resource being replaced and the new one.
func (c *call) planUpdate(x *exchange, dec access.Decision, perm access.Perm) *plan {
	typ := x.req.Type
	create := c.pol.Decide(perm|access.Create, typ)
	if _, bad := c.bodyResource(x); bad != nil {
		return bad // the body's type is checked whatever dec (see planCreate)
	}
	if x.req.ID == "" {
		if !checked(dec) && create.Allowed {
			return &plan{pass: true}
		}
		ms, pl := c.resolve(typ, x.query, dec)
		if pl != nil {
			return pl
		}
		switch len(ms) {
		case 0:
			if !create.Allowed {
				return refusal(http.StatusForbidden, "no "+typ+" matches, and creating one is not allowed: "+create.Reason)
			}
			res, bad := c.bodyResource(x)
			if bad != nil {
				return bad
			}
			if ok, why := create.Admits(res); !ok {
				return refusal(http.StatusForbidden, "the new "+typ+" would not be allowed: "+why)
			}
			probe := &exchange{path: typ, query: cloneValues(x.query)}
			c.narrow(probe, typ, create, NarrowParameter)
			out := &exchange{req: fhirreq.Request{Interaction: fhirreq.Create, Type: typ}, method: http.MethodPost, path: typ,
				query: url.Values{}, ifNoneExist: probe.query.Encode(), body: withoutID(x.body)}
			return &plan{out: out}
		case 1:
			m := ms[0]
			if why := ifMatchConflict(x.ifMatch, m.version); why != "" {
				return local(http.StatusPreconditionFailed, why)
			}
			res, bad := c.bodyResource(x)
			if bad != nil {
				return bad
			}
			if res.ID != "" && res.ID != m.id {
				return local(http.StatusBadRequest, "the body's id "+res.ID+" is not the id of the matching "+typ)
			}
			if ok, why := dec.Admits(res); !ok {
				return refusal(http.StatusForbidden, "the new version would not be allowed: "+why)
			}
			out := &exchange{req: fhirreq.Request{Interaction: fhirreq.Update, Type: typ, ID: m.id}, method: http.MethodPut,
				path: typ + "/" + m.id, query: url.Values{}, ifMatch: weakETag(m.version), body: withID(x.body, m.id)}
			return &plan{out: out}
		}
		return local(http.StatusPreconditionFailed, "the criteria match several "+typ+" resources")
	}
	if !checked(dec) && create.Allowed {
		return &plan{pass: true}
	}
	cur, bad := c.fetch(typ, x.req.ID)
	if bad != nil {
		return bad
	}
	out := x.clone()
	switch cur.status {
	case http.StatusOK:
		if ok, why := dec.Admits(cur.res); !ok {
			return refusal(http.StatusForbidden, typ+"/"+x.req.ID+" is not writable: "+why)
		}
		if why := ifMatchConflict(x.ifMatch, cur.version); why != "" {
			return local(http.StatusPreconditionFailed, why)
		}
		if cur.version != "" {
			out.ifMatch = weakETag(cur.version)
		}
	case http.StatusNotFound, http.StatusGone:
		if !create.Allowed {
			return refusal(http.StatusForbidden, "creating "+typ+"/"+x.req.ID+" is not allowed: "+create.Reason)
		}
		dec = create
	default:
		return local(http.StatusBadGateway, "the current version of "+typ+"/"+x.req.ID+" cannot be checked (the upstream answered "+strconv.Itoa(cur.status)+")")
	}
	if checked(dec) {
		res, bad := c.bodyResource(x)
		if bad != nil {
			return bad
		}
		if ok, why := dec.Admits(res); !ok {
			return refusal(http.StatusForbidden, "the new version would not be allowed: "+why)
		}
	}
	return &plan{out: out, compartment: dec.Compartment}
}

// planPatch applies a JSON Patch to the current version to check the
// result before the upstream writes it.
func (c *call) planPatch(x *exchange, dec access.Decision) *plan {
	typ := x.req.Type
	if !checked(dec) {
		return &plan{pass: true}
	}
	if mt, _, _ := mime.ParseMediaType(x.contentType); mt != "application/json-patch+json" {
		return refusal(http.StatusForbidden, "only JSON Patch (application/json-patch+json) can be checked by the gateway")
	}
	id := x.req.ID
	var cur *current
	if id == "" {
		ms, pl := c.resolve(typ, x.query, dec)
		if pl != nil {
			return pl
		}
		switch len(ms) {
		case 0:
			return local(http.StatusNotFound, "no "+typ+" matches the criteria")
		case 1:
			id = ms[0].id
			res, err := access.DecodeResource(ms[0].raw)
			if err != nil {
				return local(http.StatusBadGateway, "the upstream answered with an unreadable "+typ)
			}
			cur = &current{status: http.StatusOK, res: res, raw: ms[0].raw, version: ms[0].version}
		default:
			return local(http.StatusPreconditionFailed, "the criteria match several "+typ+" resources")
		}
	} else {
		var bad *plan
		if cur, bad = c.fetch(typ, id); bad != nil {
			return bad
		}
		if cur.status != http.StatusOK {
			return local(cur.status, typ+"/"+id+" is not known")
		}
	}
	if ok, why := dec.Admits(cur.res); !ok {
		return refusal(http.StatusForbidden, typ+"/"+id+" is not writable: "+why)
	}
	if why := ifMatchConflict(x.ifMatch, cur.version); why != "" {
		return local(http.StatusPreconditionFailed, why)
	}
	patch, err := jsonpatch.DecodePatch(x.body)
	if err != nil {
		return local(http.StatusBadRequest, "bad JSON Patch: "+err.Error())
	}
	patched, err := patch.Apply(cur.raw)
	if err != nil {
		return local(http.StatusUnprocessableEntity, "the patch does not apply: "+err.Error())
	}
	res, err := access.DecodeResource(patched)
	if err != nil || res.Type != typ {
		return local(http.StatusUnprocessableEntity, "the patch does not leave a "+typ)
	}
	if ok, why := dec.Admits(res); !ok {
		return refusal(http.StatusForbidden, "the patched "+typ+" would not be allowed: "+why)
	}
	out := x.clone()
	out.req.ID, out.path, out.query = id, typ+"/"+id, url.Values{}
	if cur.version != "" {
		out.ifMatch = weakETag(cur.version)
	}
	return &plan{out: out}
}

// planDelete checks the resource being deleted.
func (c *call) planDelete(x *exchange, dec access.Decision) *plan {
	typ := x.req.Type
	if !checked(dec) {
		return &plan{pass: true}
	}
	id, version := x.req.ID, ""
	if id == "" {
		ms, pl := c.resolve(typ, x.query, dec)
		if pl != nil {
			return pl
		}
		switch len(ms) {
		case 0:
			return local(http.StatusNoContent, "nothing to delete")
		case 1:
			id, version = ms[0].id, ms[0].version
		default:
			return local(http.StatusPreconditionFailed, "the criteria match several "+typ+" resources")
		}
	} else {
		cur, bad := c.fetch(typ, id)
		if bad != nil {
			return bad
		}
		switch cur.status {
		case http.StatusOK:
			if ok, why := dec.Admits(cur.res); !ok {
				return refusal(http.StatusForbidden, typ+"/"+id+" is not deletable: "+why)
			}
			version = cur.version
		case http.StatusNotFound, http.StatusGone:
			return &plan{pass: true} // nothing to delete: the upstream says so
		default:
			return local(http.StatusBadGateway, "the current version of "+typ+"/"+id+" cannot be checked (the upstream answered "+strconv.Itoa(cur.status)+")")
		}
	}
	if why := ifMatchConflict(x.ifMatch, version); why != "" {
		return local(http.StatusPreconditionFailed, why)
	}
	out := x.clone()
	out.req.ID, out.path, out.query = id, typ+"/"+id, url.Values{}
	if version != "" {
		out.ifMatch = weakETag(version)
	}
	return &plan{out: out}
}

// planOperation checks the instance an operation is invoked on and every
// resource it answers with.
func (c *call) planOperation(x *exchange, dec access.Decision) *plan {
	if x.req.ID != "" && checked(dec) {
		cur, bad := c.fetch(x.req.Type, x.req.ID)
		if bad != nil {
			return bad
		}
		if cur.status != http.StatusOK {
			return local(cur.status, x.req.Type+"/"+x.req.ID+" is not known")
		}
		if ok, why := dec.Admits(cur.res); !ok {
			return refusal(http.StatusNotFound, x.req.Type+"/"+x.req.ID+" is not known: "+why)
		}
	}
	read := c.perType(access.Read)
	bundle := c.bundleCheck(read, func(string) bool { return false }, false)
	return &plan{out: x.clone(), check: func(status int, body []byte) verdict {
		if status != http.StatusOK || len(bytes.TrimSpace(body)) == 0 {
			return asAnswered(status)
		}
		res, err := access.DecodeResource(body)
		if err != nil {
			return failed("the upstream answered $" + x.req.Operation + " with something that is not a FHIR resource")
		}
		switch res.Type {
		case "Bundle":
			return bundle(status, body)
		case "OperationOutcome":
			return asAnswered(status)
		case "Parameters":
			if why := checkParameters(body, read); why != "" {
				return verdict{status: http.StatusForbidden, denied: true, reason: why, msg: "the answer holds data outside what the scopes allow"}
			}
			return asAnswered(status)
		}
		if ok, why := read(res.Type, "").Admits(res); !ok {
			return verdict{status: http.StatusForbidden, denied: true, reason: why, msg: "the answer holds data outside what the scopes allow"}
		}
		return asAnswered(status)
	}}
}

// checkParameters checks every resource a Parameters carries (in
// parameter[].resource and their parts), returning why one is refused.
func checkParameters(body []byte, decide func(string, string) access.Decision) string {
	var p struct {
		Parameter []json.RawMessage `json:"parameter"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return "unreadable Parameters"
	}
	var walk func(ps []json.RawMessage, depth int) string
	walk = func(ps []json.RawMessage, depth int) string {
		if depth > 8 {
			return "Parameters nested too deep"
		}
		for _, raw := range ps {
			var prm struct {
				Resource json.RawMessage   `json:"resource"`
				Part     []json.RawMessage `json:"part"`
			}
			if err := json.Unmarshal(raw, &prm); err != nil {
				return "unreadable parameter"
			}
			if len(prm.Resource) > 0 {
				res, err := access.DecodeResource(prm.Resource)
				if err != nil {
					return "unreadable resource in a parameter"
				}
				if ok, why := decide(res.Type, "").Admits(res); !ok {
					return why
				}
			}
			if why := walk(prm.Part, depth+1); why != "" {
				return why
			}
		}
		return ""
	}
	return walk(p.Parameter, 0)
}

// current is the current version of a resource, fetched before a write.
type current struct {
	status  int
	res     *access.Resource
	raw     []byte
	version string
}

// fetch reads the current version of typ/id through the rest of the
// chain, bypassing caches.
func (c *call) fetch(typ, id string) (*current, *plan) {
	x := &exchange{method: http.MethodGet, path: typ + "/" + id, query: url.Values{}}
	capt := c.send(x, true)
	if capt.over {
		return nil, local(http.StatusBadGateway, typ+"/"+id+" is too large to check")
	}
	cur := &current{status: capt.status}
	if capt.status != http.StatusOK {
		return cur, nil
	}
	cur.raw = capt.body.Bytes()
	res, err := access.DecodeResource(cur.raw)
	if err != nil || res.Type != typ || res.ID != id {
		return nil, local(http.StatusBadGateway, "the upstream answered "+typ+"/"+id+" with something else")
	}
	cur.res = res
	cur.version = versionOf(capt.header.Get("ETag"), cur.raw)
	return cur, nil
}

// match is one resource a conditional write's criteria found.
type match struct {
	id, version string
	raw         []byte
}

// resolve finds what the criteria of a conditional write match within dec,
// by a search narrowed like any other (two matches are enough to know
// there are several).
func (c *call) resolve(typ string, crit url.Values, dec access.Decision) ([]match, *plan) {
	x := &exchange{req: fhirreq.Request{Interaction: fhirreq.SearchType, Type: typ}, method: http.MethodGet, path: typ, query: url.Values{}}
	for k, vs := range crit {
		switch k {
		case "_count", "_summary", "_elements", "_include", "_revinclude", "_sort", "_format", "_pretty", "_total":
			continue
		}
		x.query[k] = append([]string(nil), vs...)
	}
	if len(x.query) == 0 {
		return nil, local(http.StatusBadRequest, "a conditional "+typ+" write needs search criteria")
	}
	if why := c.narrow(x, typ, dec, c.p.cfg.Enforcement.Narrowing); why != "" {
		return nil, refusal(http.StatusForbidden, why)
	}
	x.query.Set("_count", "2")
	capt := c.send(x, true)
	if capt.over {
		return nil, local(http.StatusBadGateway, "the matches are too large to check")
	}
	if capt.status != http.StatusOK {
		return nil, local(capt.status, "the criteria cannot be searched (the upstream answered "+strconv.Itoa(capt.status)+")")
	}
	var b struct {
		Total *int `json:"total"`
		Entry []struct {
			Resource json.RawMessage `json:"resource"`
			Search   *struct {
				Mode string `json:"mode"`
			} `json:"search"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(capt.body.Bytes(), &b); err != nil {
		return nil, local(http.StatusBadGateway, "the upstream answered the criteria with an unreadable Bundle")
	}
	var out []match
	for _, e := range b.Entry {
		if e.Search != nil && e.Search.Mode != "match" || len(e.Resource) == 0 {
			continue
		}
		res, err := access.DecodeResource(e.Resource)
		if err != nil || res.Type != typ {
			continue
		}
		if ok, _ := dec.Admits(res); !ok {
			c.p.metrics.removed.WithLabelValues(c.route, "match").Inc()
			continue
		}
		out = append(out, match{id: res.ID, version: versionOf("", e.Resource), raw: e.Resource})
	}
	if b.Total != nil && *b.Total > len(out) && len(out) > 0 {
		out = append(out, match{}) // more than the page: several
	}
	return out, nil
}

// versionOf reads a version id from an ETag (W/"3") or from the resource's
// meta.versionId.
func versionOf(etag string, raw []byte) string {
	if v := strings.Trim(strings.TrimPrefix(strings.TrimSpace(etag), "W/"), `"`); v != "" {
		return v
	}
	var m struct {
		Meta struct {
			VersionID string `json:"versionId"`
		} `json:"meta"`
	}
	json.Unmarshal(raw, &m)
	return m.Meta.VersionID
}

func weakETag(v string) string { return `W/"` + v + `"` }

// ifMatchConflict compares a client's If-Match with the version the
// gateway checked: the write goes to the upstream with the checked version
// as its If-Match, so a client that asked for another must get 412 here.
func ifMatchConflict(ifMatch, version string) string {
	if ifMatch == "" {
		return ""
	}
	if v := strings.Trim(strings.TrimPrefix(strings.TrimSpace(ifMatch), "W/"), `"`); v != version {
		return "If-Match " + ifMatch + " does not match the current version"
	}
	return ""
}

// withID returns the resource JSON with its id set to id; withoutID with
// none.
func withID(body []byte, id string) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return body
	}
	m["id"], _ = json.Marshal(id)
	out, err := json.Marshal(m)
	if err != nil {
		return body
	}
	return out
}

func withoutID(body []byte) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return body
	}
	if _, ok := m["id"]; !ok {
		return body
	}
	delete(m, "id")
	out, err := json.Marshal(m)
	if err != nil {
		return body
	}
	return out
}

// captured is a response of the rest of the chain, buffered to be checked
// (up to max bytes; more sets over and is dropped).
type captured struct {
	header http.Header
	status int
	body   bytes.Buffer
	max    int
	over   bool
}

func (w *captured) Header() http.Header { return w.header }

func (w *captured) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *captured) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.over || w.body.Len()+len(b) > w.max {
		w.over = true
		return len(b), nil
	}
	return w.body.Write(b)
}

// Flush does nothing: the response is checked whole.
func (w *captured) Flush() {}

// send passes x through the rest of the chain, as the caller, and buffers
// the answer. fetch marks a request the gateway makes for itself (a
// current version, a conditional write's matches): caches are bypassed.
func (c *call) send(x *exchange, fetch bool) *captured {
	capt := &captured{header: http.Header{}, max: int(c.p.cfg.Enforcement.MaxResponse)}
	r := c.request(x)
	if fetch {
		r.Header.Set("Cache-Control", "no-cache")
	}
	c.next.ServeHTTP(capt, r)
	if capt.status == 0 {
		capt.status = http.StatusOK
	}
	if ce := capt.header.Get("Content-Encoding"); ce != "" && ce != "identity" {
		capt.over = true // cannot be read; treated as unreadable
	}
	return capt
}

// request builds the HTTP request for x from the caller's.
func (c *call) request(x *exchange) *http.Request {
	r := c.r.Clone(c.r.Context())
	r.Method = x.method
	path := strings.TrimSuffix(c.rt.base, "/")
	if x.path != "" {
		path += "/" + x.path
	}
	r.URL.Path, r.URL.RawPath = path, ""
	r.URL.RawQuery = ""
	if len(x.query) > 0 {
		r.URL.RawQuery = x.query.Encode()
	}
	r.RequestURI = r.URL.RequestURI()
	h := r.Header
	for _, k := range []string{"Accept-Encoding", "If-Match", "If-None-Match", "If-None-Exist", "If-Modified-Since",
		"If-Unmodified-Since", "If-Range", "Range", "Content-Length", "Content-Type", "Content-Encoding"} {
		h.Del(k)
	}
	h.Set("Accept", outcome.ContentType)
	set := func(k, v string) {
		if v != "" {
			h.Set(k, v)
		}
	}
	set("If-Match", x.ifMatch)
	set("If-None-Exist", x.ifNoneExist)
	set("If-None-Match", x.ifNoneMatch)
	set("If-Modified-Since", x.ifModifiedSince)
	if x.body != nil {
		r.Body = io.NopCloser(bytes.NewReader(x.body))
		r.ContentLength = int64(len(x.body))
		body := x.body
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		ct := x.contentType
		if ct == "" {
			ct = outcome.ContentType
		}
		h.Set("Content-Type", ct)
	} else {
		r.Body, r.ContentLength, r.GetBody = http.NoBody, 0, nil
	}
	return r
}

// enforceOne enforces dec on a request that is not a Bundle, on a route
// where the gateway enforces.
func (c *call) enforceOne(req fhirreq.Request, dec access.Decision, perm access.Perm, query url.Values) {
	if c.quickPass(req, dec, perm) {
		c.allow("", "")
		c.next.ServeHTTP(c.w, c.r)
		return
	}
	x, err := c.exchangeOf(req, query)
	if err != nil {
		c.fail(statusOf(err), err.Error())
		return
	}
	pl := c.planExchange(x, dec, perm)
	switch {
	case pl.refused:
		c.refuse(pl.status, pl.reason)
	case pl.pass:
		c.allow(pl.compartment, "")
		c.next.ServeHTTP(c.w, c.r)
	case pl.out == nil:
		c.allow(pl.compartment, "")
		if pl.status == http.StatusNoContent {
			c.w.WriteHeader(pl.status)
			return
		}
		gateway.Error(c.w, c.r, pl.status, pl.reason)
	default:
		capt := c.send(pl.out, false)
		if capt.over {
			c.fail(http.StatusBadGateway, "the upstream's answer is too large or encoded: the gateway cannot check it")
			return
		}
		v := asAnswered(capt.status)
		if pl.check != nil {
			v = pl.check(capt.status, capt.body.Bytes())
		}
		switch {
		case v.denied:
			c.finish(false, v.reason, "")
			gateway.Error(c.w, c.r, v.status, v.msg)
		case v.failed:
			c.fail(v.status, v.reason)
		default:
			c.allow(pl.compartment, "")
			body := v.body
			if body == nil {
				body = capt.body.Bytes()
			}
			c.relay(capt, v.status, body)
		}
	}
}

// quickPass reports, without reading the request further, whether the
// type-level decision says everything about it: what planExchange would
// pass unchanged.
func (c *call) quickPass(req fhirreq.Request, dec access.Decision, perm access.Perm) bool {
	if checked(dec) {
		return false
	}
	switch req.Interaction {
	case fhirreq.Read, fhirreq.VRead, fhirreq.HistoryInstance, fhirreq.Patch, fhirreq.Delete:
		return true
	case fhirreq.HistoryType:
		return req.Type != ""
	}
	return false
}

// exchangeOf reads a request as an exchange (its body too).
func (c *call) exchangeOf(req fhirreq.Request, query url.Values) (*exchange, error) {
	r := c.r
	x := &exchange{req: req, method: r.Method, query: query,
		path:    strings.Trim(strings.TrimPrefix(r.URL.Path, strings.TrimSuffix(c.rt.base, "/")), "/"),
		ifMatch: r.Header.Get("If-Match"), ifNoneExist: r.Header.Get("If-None-Exist"),
		ifNoneMatch: r.Header.Get("If-None-Match"), ifModifiedSince: r.Header.Get("If-Modified-Since")}
	if x.method == http.MethodHead {
		x.method = http.MethodGet
	}
	if x.query == nil {
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			return nil, httpErr(http.StatusBadRequest, "bad query string: "+err.Error())
		}
		x.query = q
	}
	switch x.method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		if isSearch(req.Interaction) {
			break
		}
		b, err := c.readBody()
		if err != nil {
			return nil, err
		}
		x.body, x.contentType = b, r.Header.Get("Content-Type")
	}
	return x, nil
}

// relay writes an upstream answer, with body in place of its own.
func (c *call) relay(capt *captured, status int, body []byte) {
	h := c.w.Header()
	for k, vs := range capt.header {
		if k == "Content-Length" || k == gateway.RequestIDHeader {
			continue
		}
		h[k] = vs
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	c.w.WriteHeader(status)
	if c.r.Method != http.MethodHead {
		c.w.Write(body)
	}
}
