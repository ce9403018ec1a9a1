package authz

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/gateway/outcome"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// rawEntry is an entry of a batch or transaction as it was sent.
type rawEntry struct {
	FullURL  json.RawMessage `json:"fullUrl,omitempty"`
	Resource json.RawMessage `json:"resource,omitempty"`
	Request  *entryRequest   `json:"request,omitempty"`
}

// entryRequest is Bundle.entry.request.
type entryRequest struct {
	Method          string `json:"method"`
	URL             string `json:"url"`
	IfNoneMatch     string `json:"ifNoneMatch,omitempty"`
	IfModifiedSince string `json:"ifModifiedSince,omitempty"`
	IfMatch         string `json:"ifMatch,omitempty"`
	IfNoneExist     string `json:"ifNoneExist,omitempty"`
}

// entryPlan is what happens to one entry.
type entryPlan struct {
	*plan
	index int
	raw   json.RawMessage
	entry *rawEntry
	rec   access.EntryDecision
}

// serveBundle decides every entry of a batch or transaction. A transaction
// with one refused entry is refused whole (403 naming the entry); in a
// batch, refused entries are answered 403 in place and the others are
// forwarded, their answers spliced back in order. Where the gateway
// enforces, each entry is also narrowed and checked like a request of its
// own.
func (c *call) serveBundle() {
	c.interaction, c.label = fhirreq.Batch, fhirreq.Batch
	body, err := c.readBody()
	if err != nil {
		c.fail(statusOf(err), err.Error())
		return
	}
	if err := access.CheckJSON(body); err != nil {
		c.fail(http.StatusBadRequest, "malformed Bundle: "+err.Error())
		return
	}
	b, err := fhirreq.ParseBundle(body, c.rt.base)
	if err != nil {
		if errors.Is(err, fhirreq.ErrNotBundle) {
			c.fail(http.StatusBadRequest, "a POST to the base takes a batch or transaction Bundle")
			return
		}
		c.fail(http.StatusBadRequest, "malformed Bundle: "+err.Error())
		return
	}
	transaction := b.Type == "transaction"
	if transaction {
		c.label = "transaction"
	}
	var raws struct {
		Entry []json.RawMessage `json:"entry"`
	}
	if err := json.Unmarshal(body, &raws); err != nil || len(raws.Entry) != len(b.Entries) {
		c.fail(http.StatusBadRequest, "malformed Bundle entries")
		return
	}
	plans := make([]*entryPlan, len(b.Entries))
	allPass := true
	for i := range b.Entries {
		ep := &entryPlan{index: i, raw: raws.Entry[i], entry: &rawEntry{}}
		if err := json.Unmarshal(raws.Entry[i], ep.entry); err != nil {
			c.fail(http.StatusBadRequest, fmt.Sprintf("entry %d: %v", i, err))
			return
		}
		c.planEntry(&b.Entries[i], ep)
		plans[i] = ep
		allPass = allPass && ep.pass
		c.entries = append(c.entries, ep.rec)
		result := resultAllow
		if !ep.rec.Allowed {
			result = resultDeny
		}
		c.p.metrics.entries.WithLabelValues(result).Inc()
	}
	if transaction {
		for _, ep := range plans {
			if ep.refused {
				e := &b.Entries[ep.index]
				c.refuse(http.StatusForbidden, fmt.Sprintf("transaction entry %d (%s %s): %s", ep.index, e.Method, e.URL, ep.reason))
				return
			}
		}
	}
	c.r = c.r.WithContext(access.WithPolicy(c.r.Context(), c.pol))
	if allPass {
		// Nothing to change: the Bundle goes on as sent (the embedded
		// server enforces compartments in its entries from the policy).
		c.allow("", "")
		c.next.ServeHTTP(c.w, c.r)
		return
	}
	var fwd []json.RawMessage
	var fwdIndex []int
	for _, ep := range plans {
		switch {
		case ep.refused || ep.out == nil && !ep.pass:
			continue
		case ep.pass:
			fwd = append(fwd, ep.raw)
		default:
			raw, err := encodeEntry(ep.entry, ep.out)
			if err != nil {
				c.fail(http.StatusInternalServerError, "cannot encode entry "+strconv.Itoa(ep.index))
				return
			}
			fwd = append(fwd, raw)
		}
		fwdIndex = append(fwdIndex, ep.index)
	}
	respType := b.Type + "-response"
	answers := make([]json.RawMessage, len(plans))
	var top []member
	if len(fwd) > 0 {
		entries, _ := json.Marshal(fwd)
		nb := writeObject([]member{{"resourceType", json.RawMessage(`"Bundle"`)}, {"type", mustJSON(b.Type)}, {"entry", entries}})
		capt := c.send(&exchange{method: http.MethodPost, path: "", query: url.Values{}, body: nb}, false)
		if capt.over {
			c.fail(http.StatusBadGateway, "the answer is too large or encoded: the gateway cannot check it")
			return
		}
		if capt.status != http.StatusOK {
			// The whole Bundle failed (a transaction rolled back): its
			// OperationOutcome says why.
			c.allow("", "")
			c.relay(capt, capt.status, capt.body.Bytes())
			return
		}
		ms, got, err := responseEntries(capt.body.Bytes())
		if err != nil || len(got) != len(fwd) {
			c.fail(http.StatusBadGateway, "the upstream answered the Bundle with a Bundle the gateway cannot match to its entries")
			return
		}
		top = ms
		for j, i := range fwdIndex {
			answers[i] = c.checkEntry(plans[i], got[j])
		}
	} else {
		top = []member{{"resourceType", json.RawMessage(`"Bundle"`)}, {"type", mustJSON(respType)}}
	}
	for i, ep := range plans {
		if answers[i] == nil {
			answers[i] = localEntry(ep.status, ep.reason)
		}
	}
	entries, _ := json.Marshal(answers)
	top = replaceMember(top, "entry", entries)
	c.allow("", "")
	out := writeObject(top)
	h := c.w.Header()
	h.Set("Content-Type", outcome.ContentType)
	h.Set("Content-Length", strconv.Itoa(len(out)))
	c.w.WriteHeader(http.StatusOK)
	c.w.Write(out)
}

// responseEntries reads a batch-response or transaction-response: its
// members in order and its entries, by exact key.
func responseEntries(body []byte) ([]member, []json.RawMessage, error) {
	if err := access.CheckJSON(body); err != nil {
		return nil, nil, err
	}
	ms, err := members(body)
	if err != nil {
		return nil, nil, err
	}
	var entries []json.RawMessage
	for _, m := range ms {
		if err := exactKey(m.key, "resourceType", "type", "entry"); err != nil {
			return nil, nil, err
		}
		if m.key == "entry" {
			if err := json.Unmarshal(m.value, &entries); err != nil {
				return nil, nil, err
			}
		}
	}
	return ms, entries, nil
}

// planEntry decides one entry (type-level), and where the gateway
// enforces, plans it like a request of its own.
func (c *call) planEntry(e *fhirreq.Entry, ep *entryPlan) {
	ep.rec = access.EntryDecision{Index: e.Index, Interaction: e.Interaction, Type: e.Type}
	deny := func(reason string) {
		ep.plan = refusal(http.StatusForbidden, reason)
		ep.rec.Reason = reason
	}
	switch e.Interaction {
	case "":
		deny("not a FHIR RESTful interaction")
		return
	case fhirreq.Batch:
		deny("an entry cannot be a batch or transaction")
		return
	case fhirreq.Capabilities:
		ep.plan, ep.rec.Allowed = &plan{pass: true}, true
		return
	}
	perm, typ, why := c.p.need(e.Request, e.Conditional())
	if why != "" {
		deny(why)
		return
	}
	dec := c.pol.Decide(perm, typ)
	if !dec.Allowed {
		deny(dec.Reason)
		return
	}
	if why := compartmentMismatch(e.Request, dec); why != "" {
		deny(why)
		return
	}
	if isSearch(e.Interaction) {
		if why := c.searchParamsReason(e.Type, e.Query); why != "" {
			deny(why)
			return
		}
	}
	if !c.rt.gateway {
		ep.plan, ep.rec.Allowed = &plan{pass: true}, true
		return
	}
	x := c.entryExchange(e, ep.entry)
	ep.plan = c.planExchange(x, dec, perm)
	ep.rec.Allowed = !ep.refused
	ep.rec.Reason = ""
	if ep.refused {
		ep.rec.Reason = ep.reason
	}
}

// entryExchange reads an entry as an exchange.
func (c *call) entryExchange(e *fhirreq.Entry, raw *rawEntry) *exchange {
	path, _, _ := strings.Cut(entryPath(e.URL, c.rt.base), "?")
	x := &exchange{req: e.Request, method: strings.ToUpper(e.Method), path: path, query: cloneValues(e.Query),
		ifNoneExist: e.IfNoneExist}
	if x.method == http.MethodHead {
		x.method = http.MethodGet
	}
	if raw.Request != nil {
		x.ifMatch, x.ifNoneMatch, x.ifModifiedSince = raw.Request.IfMatch, raw.Request.IfNoneMatch, raw.Request.IfModifiedSince
	}
	switch x.method {
	case http.MethodPost, http.MethodPut:
		x.body = e.Resource
	case http.MethodPatch:
		// A Binary holding the JSON Patch, or the patch itself.
		x.body, x.contentType = e.Resource, "application/json-patch+json"
		var bin struct {
			ResourceType string `json:"resourceType"`
			ContentType  string `json:"contentType"`
			Data         []byte `json:"data"`
		}
		if json.Unmarshal(e.Resource, &bin) == nil && bin.ResourceType == "Binary" {
			x.body, x.contentType = bin.Data, bin.ContentType
		}
	}
	return x
}

// entryPath is an entry's url relative to the base (an absolute url
// loses its scheme, host and base).
func entryPath(raw, base string) string {
	if u, err := url.Parse(raw); err == nil && u.IsAbs() {
		p := strings.TrimPrefix(u.EscapedPath(), strings.TrimSuffix(base, "/"))
		if u.RawQuery != "" {
			p += "?" + u.RawQuery
		}
		return strings.TrimPrefix(p, "/")
	}
	return strings.TrimPrefix(raw, "/")
}

// encodeEntry writes the entry that forwards out, keeping the original's
// fullUrl (other entries may refer to it) and, for a patch, its resource.
func encodeEntry(orig *rawEntry, out *exchange) (json.RawMessage, error) {
	e := rawEntry{FullURL: orig.FullURL, Request: &entryRequest{
		Method: out.method, URL: out.path, IfMatch: out.ifMatch, IfNoneExist: out.ifNoneExist,
		IfNoneMatch: out.ifNoneMatch, IfModifiedSince: out.ifModifiedSince,
	}}
	if len(out.query) > 0 {
		e.Request.URL += "?" + out.query.Encode()
	}
	switch out.method {
	case http.MethodPost, http.MethodPut:
		e.Resource = out.body
	case http.MethodPatch:
		e.Resource = orig.Resource
	}
	return json.Marshal(e)
}

// checkEntry vets the answer to a forwarded entry.
func (c *call) checkEntry(ep *entryPlan, answer json.RawMessage) json.RawMessage {
	if ep.check == nil {
		return answer
	}
	ms, err := members(answer)
	if err != nil {
		return localEntry(http.StatusBadGateway, "the upstream's answer to this entry cannot be read")
	}
	var resource json.RawMessage
	status := 0
	for _, m := range ms {
		if err := exactKey(m.key, "resource", "response"); err != nil {
			return localEntry(http.StatusBadGateway, "the upstream's answer to this entry cannot be read")
		}
		switch m.key {
		case "resource":
			resource = m.value
		case "response":
			var r struct {
				Status string `json:"status"`
			}
			json.Unmarshal(m.value, &r)
			code, _, _ := strings.Cut(strings.TrimSpace(r.Status), " ")
			status, _ = strconv.Atoi(code)
		}
	}
	if status == 0 {
		return localEntry(http.StatusBadGateway, "the upstream's answer to this entry has no status")
	}
	v := ep.check(status, resource)
	switch {
	case v.denied:
		c.entries[ep.index].Allowed, c.entries[ep.index].Reason = false, v.reason
		return localEntry(v.status, v.msg)
	case v.failed:
		return localEntry(v.status, v.reason)
	case v.body == nil:
		return answer
	}
	return writeObject(replaceMember(ms, "resource", v.body))
}

// localEntry is an entry of a batch-response answered by the gateway.
func localEntry(status int, msg string) json.RawMessage {
	if status == 0 {
		status = http.StatusForbidden
	}
	st := strconv.Itoa(status) + " " + http.StatusText(status)
	var e map[string]any
	if status >= 400 {
		e = map[string]any{"response": map[string]any{"status": st, "outcome": outcome.New(status, msg)}}
	} else {
		e = map[string]any{"response": map[string]any{"status": st}}
	}
	b, _ := json.Marshal(e)
	return b
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}
