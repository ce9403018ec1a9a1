package fhirreq

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Entry is one entry of a batch or transaction Bundle, classified like a
// request of its own.
type Entry struct {
	// Request is the interaction the entry asks for; its Interaction is ""
	// when the entry's method and url are not a FHIR RESTful interaction
	// (the server refuses such an entry).
	Request
	// Index is the entry's position in the Bundle, from 0.
	Index int
	// Method and URL are the entry's request.method and request.url as
	// given.
	Method, URL string
	// Query is the url's query: the parameters of a search, or the
	// criteria of a conditional update, patch or delete.
	Query url.Values
	// IfNoneExist is the criteria of a conditional create.
	IfNoneExist string
	// Resource is the entry's resource, nil when it has none.
	Resource json.RawMessage
}

// Conditional reports whether the entry is a conditional create, update,
// patch or delete: one whose target is found by a search.
func (e *Entry) Conditional() bool {
	switch e.Interaction {
	case Create:
		return e.IfNoneExist != ""
	case Update, Patch, Delete:
		return e.ID == "" && len(e.Query) > 0
	}
	return false
}

// Bundle is a batch or transaction posted to a FHIR server's base.
type Bundle struct {
	// Type is "batch" or "transaction".
	Type string
	// Entries are the entries, in order.
	Entries []Entry
}

// ErrNotBundle is returned by ParseBundle for a body that is not a batch or
// transaction Bundle.
var ErrNotBundle = errors.New("not a batch or transaction Bundle")

// ParseBundle reads a batch or transaction Bundle and classifies each of its
// entries. Entry urls are relative to the server's base ("Patient/85",
// "Observation?code=x"); absolute urls are read from their path, with base
// (the server's base path, e.g. "/fhir/R4") removed. It returns ErrNotBundle
// (wrapped) for JSON that is not such a Bundle, and a decoding error for
// malformed JSON.
func ParseBundle(body []byte, base string) (*Bundle, error) {
	var b struct {
		ResourceType string `json:"resourceType"`
		Type         string `json:"type"`
		Entry        []struct {
			Resource json.RawMessage `json:"resource"`
			Request  *struct {
				Method      string `json:"method"`
				URL         string `json:"url"`
				IfNoneExist string `json:"ifNoneExist"`
			} `json:"request"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, fmt.Errorf("decode bundle: %w", err)
	}
	if b.ResourceType != "Bundle" || b.Type != "batch" && b.Type != "transaction" {
		return nil, fmt.Errorf("resourceType %q, type %q: %w", b.ResourceType, b.Type, ErrNotBundle)
	}
	out := &Bundle{Type: b.Type, Entries: make([]Entry, len(b.Entry))}
	for i, raw := range b.Entry {
		e := &out.Entries[i]
		e.Index, e.Resource = i, raw.Resource
		if raw.Request == nil {
			continue
		}
		e.Method, e.URL, e.IfNoneExist = raw.Request.Method, raw.Request.URL, raw.Request.IfNoneExist
		path, query := entryPath(e.URL, base)
		q, err := url.ParseQuery(query)
		if err != nil {
			continue
		}
		e.Query = q
		if r, ok := Parse(strings.ToUpper(e.Method), "/"+path, ""); ok {
			e.Request = r
		}
	}
	return out, nil
}

// entryPath splits an entry's url into its path relative to the base,
// percent-decoded as a server decodes it ("%4Fbservation/1" is
// Observation/1), and its query.
func entryPath(raw, base string) (path, query string) {
	u, err := url.Parse(raw)
	if err != nil {
		// Not a URL a server would act on: left for the caller to refuse.
		path, query, _ = strings.Cut(raw, "?")
		return strings.Trim(path, "/"), query
	}
	path = u.Path
	if u.IsAbs() {
		path = strings.TrimPrefix(path, strings.TrimSuffix(base, "/"))
	}
	return strings.Trim(path, "/"), u.RawQuery
}
