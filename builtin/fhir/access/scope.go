// Package access is OmniGate's FHIR access model: SMART App Launch scopes
// (v1 and v2, with v2 query constraints), the policy they make for one
// identity, the decision for one interaction on one resource type, and the
// Patient compartment that confines patient-context access.
//
// The authz plugin builds a Policy from the caller's identity and puts it on
// the request context (WithPolicy); the embedded FHIR server reads it
// (FromContext) and enforces it inside its queries, and the authz plugin
// enforces the same decisions in front of an upstream FHIR server. A request
// without a Policy on its context is not access-controlled: routes without
// the authz plugin serve whatever they are asked.
package access

import (
	"net/url"
	"slices"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// Perm is a set of SMART v2 permissions on a resource type.
type Perm uint8

// The SMART v2 permissions, in the order of their letters ("cruds").
const (
	// Create: the type-level create interaction.
	Create Perm = 1 << iota
	// Read: read, vread and instance-level history.
	Read
	// Update: update and patch.
	Update
	// Delete: delete.
	Delete
	// Search: type- and system-level search and history.
	Search

	// All is every permission ("cruds").
	All = Create | Read | Update | Delete | Search
)

const permLetters = "cruds"

// String returns the v2 letters of p in order ("rs"), "" for none.
func (p Perm) String() string {
	var b [5]byte
	n := 0
	for i := range permLetters {
		if p&(1<<i) != 0 {
			b[n] = permLetters[i]
			n++
		}
	}
	return string(b[:n])
}

// ParsePerm reads v2 letters ("rs", "cruds": each at most once, in order).
func ParsePerm(s string) (Perm, bool) {
	if s == "" {
		return 0, false
	}
	var p Perm
	last := -1
	for _, c := range s {
		i := strings.IndexRune(permLetters, c)
		if i <= last {
			return 0, false
		}
		last = i
		p |= 1 << i
	}
	return p, true
}

// Scope contexts.
const (
	// ContextPatient confines a scope to the compartment of the patient in
	// context.
	ContextPatient = "patient"
	// ContextUser grants what the user may access: every resource of the
	// type, in this server's model.
	ContextUser = "user"
	// ContextSystem is a backend service's grant, unconfined like user.
	ContextSystem = "system"
)

// Wildcard is the resource type of scopes on every type ("patient/*.rs").
const Wildcard = "*"

// Scope is one parsed SMART resource scope.
type Scope struct {
	// Context is ContextPatient, ContextUser or ContextSystem.
	Context string
	// Type is a resource type, or Wildcard.
	Type string
	// Perms are the permissions granted.
	Perms Perm
	// Query is a v2 constraint (patient/Observation.rs?category=laboratory):
	// search parameters the resources must match. Nil when there is none.
	// Repeated parameters are ANDed, as in a search.
	Query url.Values
}

// ParseScope reads a SMART resource scope: v2 ("patient/Observation.rs",
// "user/*.cruds", "system/Patient.r", with an optional "?query" constraint)
// or v1 ("patient/Observation.read", "user/*.write", "patient/*.*"). Other
// scopes (openid, fhirUser, launch, offline_access, …), unknown resource
// types, malformed permissions and constraints on v1 scopes give false: they
// grant nothing.
func ParseScope(s string) (Scope, bool) {
	ctx, rest, ok := strings.Cut(s, "/")
	if !ok || ctx != ContextPatient && ctx != ContextUser && ctx != ContextSystem {
		return Scope{}, false
	}
	rest, query, constrained := strings.Cut(rest, "?")
	typ, action, ok := strings.Cut(rest, ".")
	if !ok || typ != Wildcard && !spec.IsResourceType(typ) {
		return Scope{}, false
	}
	sc := Scope{Context: ctx, Type: typ}
	switch action {
	case "read":
		sc.Perms = Read | Search
	case "write":
		sc.Perms = Create | Update | Delete
	case "*":
		sc.Perms = All
	default:
		if sc.Perms, ok = ParsePerm(action); !ok {
			return Scope{}, false
		}
		if constrained {
			q, err := url.ParseQuery(query)
			if err != nil || len(q) == 0 {
				return Scope{}, false
			}
			sc.Query = q
		}
		return sc, true
	}
	if constrained { // v1 scopes have no constraints
		return Scope{}, false
	}
	return sc, true
}

// ParseScopes parses the resource scopes among ss, skipping the others.
func ParseScopes(ss []string) []Scope {
	out := make([]Scope, 0, len(ss))
	for _, s := range ss {
		if sc, ok := ParseScope(s); ok {
			out = append(out, sc)
		}
	}
	return out
}

// String returns the scope in v2 form.
func (s Scope) String() string {
	out := s.Context + "/" + s.Type + "." + s.Perms.String()
	if len(s.Query) > 0 {
		out += "?" + s.Query.Encode()
	}
	return out
}

// Covers reports whether the scope's type covers typ. The wildcard covers
// every type but the protected ones (AuditEvent): those need a scope that
// names them.
func (s Scope) Covers(typ string) bool {
	if s.Type == typ {
		return true
	}
	return s.Type == Wildcard && !Protected(typ)
}

// Protected reports whether typ is only reachable through a scope that
// names it: AuditEvent, the audit trail, is not PHI a clinical role reads
// by default, and no scope may write it (see Policy.Decide).
func Protected(typ string) bool { return typ == "AuditEvent" }

// Narrow returns the scopes of granted that limit allows: for each pair,
// the narrower context, the more specific type, the common permissions
// and both constraints. It is how a role's scopes bound what a user or a
// token carries: the result never grants more than limit.
func Narrow(granted, limit []Scope) []Scope {
	var out []Scope
	for _, g := range granted {
		for _, l := range limit {
			n, ok := intersect(g, l)
			if ok && !slices.ContainsFunc(out, n.equal) {
				out = append(out, n)
			}
		}
	}
	return out
}

func intersect(a, b Scope) (Scope, bool) {
	var n Scope
	switch {
	case a.Type == b.Type:
		n.Type = a.Type
	case b.Type == Wildcard && !Protected(a.Type):
		n.Type = a.Type
	case a.Type == Wildcard && !Protected(b.Type):
		n.Type = b.Type
	default:
		return Scope{}, false
	}
	if n.Perms = a.Perms & b.Perms; n.Perms == 0 {
		return Scope{}, false
	}
	n.Context = ContextUser
	if a.Context == ContextPatient || b.Context == ContextPatient {
		n.Context = ContextPatient
	} else if a.Context == ContextSystem && b.Context == ContextSystem {
		n.Context = ContextSystem
	}
	if len(a.Query)+len(b.Query) > 0 {
		n.Query = url.Values{}
		for _, q := range []url.Values{a.Query, b.Query} {
			for k, vs := range q {
				for _, v := range vs {
					if !slices.Contains(n.Query[k], v) {
						n.Query[k] = append(n.Query[k], v)
					}
				}
			}
		}
	}
	return n, true
}

func (s Scope) equal(o Scope) bool { return s.String() == o.String() }
