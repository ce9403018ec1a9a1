package gateway

import (
	"context"
	"slices"
	"sync/atomic"
	"time"
)

// Identity is who is calling. The session plugin establishes it; rate
// limits, cache partitions and policy plugins read it. A nil *Identity means
// anonymous.
type Identity struct {
	// UserID identifies the user (or client) across sessions.
	UserID string `json:"user"`
	// Role is a configured role name: physician, nurse, admin, patient, …
	Role string `json:"role,omitempty"`
	// Scopes are granted OAuth / SMART scopes, e.g. patient/Observation.rs.
	Scopes []string `json:"scopes,omitempty"`
	// PatientID is the patient the user is (or acts for), for patient users.
	PatientID string `json:"patient,omitempty"`
	// FHIRUser is the FHIR resource of the user, as SMART's fhirUser claim
	// gives it: "Practitioner/12", "Patient/85", "RelatedPerson/3".
	FHIRUser string `json:"fhir_user,omitempty"`
	// SessionID identifies the server session (never the token itself).
	SessionID string `json:"session,omitempty"`
	// Method says how the identity was established: session, jwt, ….
	Method string `json:"method,omitempty"`
}

// HasScope reports whether the identity holds scope s exactly.
func (id *Identity) HasScope(s string) bool {
	return id != nil && slices.Contains(id.Scopes, s)
}

// reqState is the per-request state the gateway puts on the context once,
// at the entry of every route; plugins read and update it through the
// accessors below.
type reqState struct {
	route     *route
	requestID string
	start     time.Time
	identity  *Identity
	// inner is the time spent in the rest of the chain below the link that
	// ran last, so each link can record its own time.
	inner time.Duration
	sw    statusWriter
	// idHeader backs the X-Request-Id header values, so setting them
	// costs no allocation of its own.
	idHeader [2]string
	// res is what the request holds of the body budget.
	res reservation
	// streamBody is set by a terminal that streams the body on (the
	// upstream proxy): its reads are not charged.
	streamBody atomic.Bool
}

type stateKey struct{}

func stateFrom(ctx context.Context) *reqState {
	st, _ := ctx.Value(stateKey{}).(*reqState)
	return st
}

// IdentityFrom returns the caller's identity, or nil for anonymous.
func IdentityFrom(ctx context.Context) *Identity {
	if st := stateFrom(ctx); st != nil {
		return st.identity
	}
	if id, ok := ctx.Value(identityKey{}).(*Identity); ok {
		return id
	}
	return nil
}

type identityKey struct{}

// SetIdentity records the caller's identity for the rest of the chain. On a
// request context made by the gateway it updates the request in place and
// returns ctx unchanged; on any other context it returns a derived one.
//
// A request made in process with such a derived context (a cache warmer
// replaying requests as a user, a test harness) enters its route with that
// identity already established; the session plugin then lets it pass.
// Requests from the network cannot carry one.
func SetIdentity(ctx context.Context, id *Identity) context.Context {
	if st := stateFrom(ctx); st != nil {
		st.identity = id
		return ctx
	}
	return context.WithValue(ctx, identityKey{}, id)
}

// RequestID returns the request's id (from X-Request-Id), or "".
func RequestID(ctx context.Context) string {
	if st := stateFrom(ctx); st != nil {
		return st.requestID
	}
	return ""
}

// RouteInfo describes the route a request matched.
type RouteInfo struct {
	// Name is the route's name from the config.
	Name string
	// Pattern is the route's path pattern.
	Pattern string
	// FHIR is true on routes whose errors are OperationOutcomes.
	FHIR bool
}

// RouteFrom returns the matched route, or ok false outside a route.
func RouteFrom(ctx context.Context) (info RouteInfo, ok bool) {
	st := stateFrom(ctx)
	if st == nil || st.route == nil {
		return RouteInfo{}, false
	}
	return st.route.info, true
}

// NewRequestContext returns a context that carries what the gateway puts on
// a routed request: the matched route, the request id and the caller's
// identity (nil for anonymous). It is for running plugins outside a
// gateway, in test harnesses and benchmarks; on it RouteFrom, RequestID,
// IdentityFrom and SetIdentity behave as on a request the gateway routed.
func NewRequestContext(ctx context.Context, info RouteInfo, requestID string, id *Identity) context.Context {
	st := &reqState{route: &route{info: info}, requestID: requestID, start: time.Now(), identity: id}
	return context.WithValue(ctx, stateKey{}, st)
}
