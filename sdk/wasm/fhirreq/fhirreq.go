// Package fhirreq tells which FHIR R4 RESTful interaction a request is from
// its method and path: read, search, create, a compartment search, and so on.
// It reads only the method and the path, never the body or the query, so it
// is cheap enough for every request a policy looks at.
package fhirreq

import "strings"

// Interaction codes, from the FHIR R4 TypeRestfulInteraction and
// SystemRestfulInteraction value sets.
const (
	Read            = "read"
	VRead           = "vread"
	Update          = "update"
	Patch           = "patch"
	Delete          = "delete"
	HistoryInstance = "history-instance"
	HistoryType     = "history-type"
	HistorySystem   = "history-system"
	Create          = "create"
	SearchType      = "search-type"
	SearchSystem    = "search-system"
	Capabilities    = "capabilities"
	// Batch is a POST of a Bundle to the base: a batch or a transaction
	// (the Bundle's type tells which).
	Batch     = "batch"
	Operation = "operation"
)

// Request is what a FHIR request path says.
type Request struct {
	// Interaction is one of the constants above.
	Interaction string
	// Type is the resource type the interaction is on ("" for system-level
	// interactions and for a search of all types in a compartment).
	Type string
	// ID is the resource id of instance-level interactions.
	ID string
	// VersionID is the version of a vread.
	VersionID string
	// Operation is the operation's name without "$", for Interaction
	// "operation".
	Operation string
	// CompartmentType and CompartmentID name the compartment of a
	// compartment search (GET [base]/Patient/123/Observation or
	// [base]/Patient/123/*): "Patient" and "123".
	CompartmentType, CompartmentID string
}

// Parse returns the interaction of a request with the given method and path
// on a FHIR server mounted at base (e.g. "/fhir/R4"). It reports false when
// the path is not under base or is not a FHIR RESTful path.
func Parse(method, path, base string) (Request, bool) {
	base = strings.TrimSuffix(base, "/")
	rest, ok := strings.CutPrefix(path, base)
	if !ok || rest != "" && rest[0] != '/' {
		return Request{}, false
	}
	rest = strings.Trim(rest, "/")
	var segs [5]string
	n := 0
	for rest != "" {
		if n == len(segs) {
			return Request{}, false
		}
		seg, after, _ := strings.Cut(rest, "/")
		if seg == "" {
			return Request{}, false
		}
		segs[n], rest = seg, after
		n++
	}
	if method == "HEAD" {
		method = "GET"
	}
	var r Request
	switch n {
	case 0:
		switch method {
		case "GET":
			r.Interaction = SearchSystem
		case "POST":
			r.Interaction = Batch
		default:
			return Request{}, false
		}
		return r, true
	case 1:
		s := segs[0]
		switch {
		case s == "metadata" && method == "GET":
			r.Interaction = Capabilities
		case s == "_history" && method == "GET":
			r.Interaction = HistorySystem
		case s == "_search" && method == "POST":
			r.Interaction = SearchSystem
		case isOperation(s):
			r.Interaction, r.Operation = Operation, s[1:]
		case IsResourceType(s):
			r.Type = s
			switch method {
			case "GET":
				r.Interaction = SearchType
			case "POST":
				r.Interaction = Create
			case "PUT": // conditional update
				r.Interaction = Update
			case "PATCH":
				r.Interaction = Patch
			case "DELETE":
				r.Interaction = Delete
			default:
				return Request{}, false
			}
		default:
			return Request{}, false
		}
		return r, true
	}
	if !IsResourceType(segs[0]) {
		return Request{}, false
	}
	r.Type = segs[0]
	s := segs[1]
	if n == 2 {
		switch {
		case s == "_search" && method == "POST":
			r.Interaction = SearchType
		case s == "_history" && method == "GET":
			r.Interaction = HistoryType
		case isOperation(s):
			r.Interaction, r.Operation = Operation, s[1:]
		case IsID(s):
			r.ID = s
			switch method {
			case "GET":
				r.Interaction = Read
			case "PUT":
				r.Interaction = Update
			case "PATCH":
				r.Interaction = Patch
			case "DELETE":
				r.Interaction = Delete
			default:
				return Request{}, false
			}
		default:
			return Request{}, false
		}
		return r, true
	}
	if !IsID(s) {
		return Request{}, false
	}
	r.ID = s
	t := segs[2]
	switch {
	case n == 3 && t == "_history" && method == "GET":
		r.Interaction = HistoryInstance
	case n == 4 && t == "_history" && method == "GET" && IsID(segs[3]):
		r.Interaction, r.VersionID = VRead, segs[3]
	case n == 3 && isOperation(t):
		r.Interaction, r.Operation = Operation, t[1:]
	case n == 3 && (t == "*" || IsResourceType(t)) && method == "GET",
		n == 4 && (t == "*" || IsResourceType(t)) && segs[3] == "_search" && method == "POST":
		r.CompartmentType, r.CompartmentID, r.ID = r.Type, r.ID, ""
		r.Type = t
		if t == "*" {
			r.Type = ""
		}
		r.Interaction = SearchType
		if r.Type == "" {
			r.Interaction = SearchSystem
		}
	default:
		return Request{}, false
	}
	return r, true
}

func isOperation(s string) bool { return len(s) > 1 && s[0] == '$' }

// IsResourceType reports whether s has the shape of a resource type name:
// an upper-case ASCII letter, then letters.
func IsResourceType(s string) bool {
	if s == "" || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i] | 0x20; c < 'a' || c > 'z' {
			return false
		}
	}
	return true
}

// IsID reports whether s is a valid FHIR id: 1 to 64 of [A-Za-z0-9-.].
func IsID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
