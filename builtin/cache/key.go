package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// keyOf returns the cache key of a GET or HEAD request in a partition: the
// SHA-256 of the normalized path, the sorted query, the response format
// asked for (Accept or _format), the configured Vary headers, the
// partition and, when host is not "", the origin the request was sent to
// (see requestOrigin). Hashing keeps queries (which may hold names or birth dates)
// and user ids out of Redis key names. vals and qerr are
// url.ParseQuery(r.URL.RawQuery), parsed once by the caller.
func keyOf(r *http.Request, vals url.Values, qerr error, partition string, vary []string, host string) string {
	var b strings.Builder
	b.WriteString("v1\n")
	b.WriteString(normalizePath(r.URL.Path))
	b.WriteByte('\n')
	q, format := normalizeQuery(r.URL.RawQuery, vals, qerr)
	b.WriteString(q)
	b.WriteByte('\n')
	if format == "" {
		format = normalizeAccept(r.Header.Get("Accept"))
	}
	b.WriteString(format)
	b.WriteByte('\n')
	for _, h := range vary {
		b.WriteString(h)
		b.WriteByte(':')
		b.WriteString(strings.Join(r.Header.Values(h), ","))
		b.WriteByte('\n')
	}
	b.WriteString(partition)
	if host != "" {
		b.WriteString("\nhost:")
		b.WriteString(host)
	}
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:])
}

// requestOrigin is the scheme and host a request was sent to, as the
// embedded FHIR server builds its links from them without fhir.base_url:
// https with TLS or X-Forwarded-Proto https, and the Host header,
// lowercased.
func requestOrigin(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p == "https" || p == "http" {
		scheme = p
	}
	return scheme + "://" + strings.ToLower(r.Host)
}

// normalizePath drops a trailing slash (FHIR treats /Patient/ as /Patient).
func normalizePath(p string) string {
	if len(p) > 1 {
		p = strings.TrimRight(p, "/")
		if p == "" {
			p = "/"
		}
	}
	return p
}

// normalizeQuery returns the query with parameters sorted by name and
// values sorted within a name (repeated FHIR search parameters are ANDed,
// so their order does not matter), without _format, which it returns as
// the format asked for.
func normalizeQuery(raw string, vals url.Values, err error) (query, format string) {
	if raw == "" {
		return "", ""
	}
	if err != nil {
		// Unparsable: keep it verbatim so distinct queries stay distinct.
		return "raw:" + raw, ""
	}
	if f, ok := vals["_format"]; ok {
		format = normalizeAccept(strings.Join(f, ","))
	}
	names := make([]string, 0, len(vals))
	for k := range vals {
		if k != "_format" {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	var b strings.Builder
	for _, k := range names {
		vs := slices.Clone(vals[k])
		slices.Sort(vs)
		for _, v := range vs {
			if b.Len() > 0 {
				b.WriteByte('&')
			}
			b.WriteString(url.QueryEscape(k))
			b.WriteByte('=')
			b.WriteString(url.QueryEscape(v))
		}
	}
	return b.String(), format
}

// normalizeAccept folds the JSON media types a FHIR server treats alike.
func normalizeAccept(a string) string {
	a = strings.ToLower(strings.TrimSpace(a))
	if a == "" || a == "*/*" {
		return "json"
	}
	var parts []string
	for _, p := range strings.Split(a, ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(p))
		if err != nil {
			mt = strings.TrimSpace(p)
		}
		switch mt {
		case "application/fhir+json", "application/json", "json", "application/json+fhir", "*/*":
			mt = "json"
		}
		if !slices.Contains(parts, mt) {
			parts = append(parts, mt)
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// Tags name what an entry depends on. An entry records the version of each
// of its tags when it was made; a write bumps the versions of the tags it
// affects, and an entry whose versions are behind is a miss.
const (
	tagAll          = "all" // every entry: purge all, recovery after an outage
	tagAnyWrite     = "w"   // system-wide searches, operations, includes
	tagUnknownComp  = "c:?" // compartment entries, for writes whose compartment is unknown
	prefixResource  = "r:"  // r:Patient/85
	prefixTypeReads = "rt:" // every read of a type, for writes whose id is unknown
	prefixType      = "t:"  // searches and history of a type
	prefixComp      = "c:"  // c:Patient/85, the patient compartment
	prefixRoute     = "route:"
)

// readTags returns the tags of a FHIR GET, and whether it is patient data
// (for the patient TTL). base is the FHIR base path of the route.
func readTags(path string, query url.Values, base string) (tags []string, typ string, patient bool) {
	req, ok := fhirreq.Parse(http.MethodGet, normalizePath(path), base)
	if !ok {
		return []string{tagAll, tagAnyWrite}, "", false
	}
	tags = []string{tagAll}
	typ = req.Type
	switch req.Interaction {
	case fhirreq.Capabilities:
		tags = append(tags, "metadata")
	case fhirreq.Read, fhirreq.VRead, fhirreq.HistoryInstance:
		tags = append(tags, prefixResource+req.Type+"/"+req.ID, prefixTypeReads+req.Type)
		patient = req.Type == "Patient"
	case fhirreq.SearchType, fhirreq.SearchSystem:
		if req.CompartmentType != "" {
			tags = append(tags, prefixComp+req.CompartmentType+"/"+req.CompartmentID, tagUnknownComp)
			patient = req.CompartmentType == "Patient"
			if req.Type == "" {
				tags = append(tags, tagAnyWrite)
			}
			break
		}
		if req.Type == "" {
			tags = append(tags, tagAnyWrite)
			break
		}
		tags = append(tags, prefixType+req.Type)
		patient = req.Type == "Patient" || hasPatientParam(query)
	case fhirreq.HistoryType:
		tags = append(tags, prefixType+req.Type)
	default:
		tags = append(tags, tagAnyWrite)
	}
	for k := range query {
		if strings.HasPrefix(k, "_include") || strings.HasPrefix(k, "_revinclude") || strings.HasPrefix(k, "_has") {
			tags = append(tags, tagAnyWrite) // other types' data comes along
			break
		}
	}
	return tags, typ, patient
}

func hasPatientParam(q url.Values) bool {
	for k := range q {
		name, _, _ := strings.Cut(k, ":")
		if name == "patient" || name == "subject" && strings.Contains(strings.Join(q[k], ","), "Patient/") {
			return true
		}
	}
	return false
}

// patientRefRE finds references to patients in resource JSON.
var patientRefRE = regexp.MustCompile(`"reference"\s*:\s*"(?:[^"]*/)?Patient/([A-Za-z0-9.\-]{1,64})(?:/_history/[^"]*)?"`)

// writeTags returns the tags a successful FHIR write affects. req is the
// interaction, body the request body, resp the response body (either may
// be nil), location the response's Location or Content-Location.
func writeTags(req fhirreq.Request, body, resp []byte, location string) []string {
	tags := []string{tagAnyWrite}
	add := func(t string) {
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	addResource := func(typ, id string, docs ...[]byte) {
		add(prefixType + typ)
		if id != "" {
			add(prefixResource + typ + "/" + id)
		} else {
			add(prefixTypeReads + typ)
		}
		if typ == "Patient" && id != "" {
			add(prefixComp + "Patient/" + id)
		}
		found := false
		for _, d := range docs {
			for _, m := range patientRefRE.FindAllSubmatch(d, -1) {
				add(prefixComp + "Patient/" + string(m[1]))
				found = true
			}
		}
		if !found && (typ != "Patient" || id == "") {
			add(tagUnknownComp)
		}
	}
	switch req.Interaction {
	case fhirreq.Batch:
		for _, e := range bundleWrites(body) {
			addResource(e.typ, e.id, e.resource)
		}
		add(tagUnknownComp)
	case fhirreq.Create, fhirreq.Update, fhirreq.Patch, fhirreq.Delete:
		id := req.ID
		if id == "" {
			id = idFromLocation(location, req.Type)
		}
		addResource(req.Type, id, body, resp)
	default:
		// Operations and anything else: invalidate widely.
		add(tagUnknownComp)
		if req.Type != "" {
			add(prefixType + req.Type)
			add(prefixTypeReads + req.Type)
		}
	}
	return tags
}

// idFromLocation takes the id from [base/]Type/id[/_history/n].
func idFromLocation(loc, typ string) string {
	if loc == "" || typ == "" {
		return ""
	}
	i := strings.LastIndex(loc, "/"+typ+"/")
	if i < 0 {
		if !strings.HasPrefix(loc, typ+"/") {
			return ""
		}
		i = -1
	}
	rest := loc[i+len(typ)+2:]
	id, _, _ := strings.Cut(rest, "/")
	if !fhirreq.IsID(id) {
		return ""
	}
	return id
}
