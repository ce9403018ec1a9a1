package fhirreq

import (
	"net/url"
	"strings"
)

// RequestEntry describes a request that is not a batch or transaction as
// the one Entry it stands for, in the shape of a Bundle entry: its
// interaction as Parse classifies it (Interaction "" when the path is not a
// FHIR RESTful path under base), Method, URL relative to base with the
// query ("Patient/85", "Observation?code=x"), Query, and IfNoneExist from
// the If-None-Exist header of a conditional create. path is the decoded
// URL path, rawQuery the query without "?".
func RequestEntry(method, path, rawQuery, ifNoneExist, base string) Entry {
	e := Entry{Method: method, IfNoneExist: ifNoneExist}
	if r, ok := Parse(method, path, base); ok {
		e.Request = r
	}
	rel := strings.Trim(strings.TrimPrefix(path, strings.TrimSuffix(base, "/")), "/")
	if rawQuery != "" {
		rel += "?" + rawQuery
		e.Query, _ = url.ParseQuery(rawQuery) // what parses: the server refuses the rest
	}
	e.URL = rel
	return e
}
