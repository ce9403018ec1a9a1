package access

import (
	"context"
	"net/url"

	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// PolicyOptions are what a Policy takes besides the scopes.
type PolicyOptions struct {
	// Patient is the id of the patient in context (a patient user, or the
	// patient a SMART app was launched for). Patient scopes grant nothing
	// without it.
	Patient string
	// ConfineToPatient reads every scope as a patient scope: the policy of
	// a role whose users only ever see their own record (the patient role),
	// whatever their scopes say. Default false.
	ConfineToPatient bool
	// Readable lists the resource types outside the Patient compartment
	// that patient-context callers may read and search when their scopes
	// cover them: what a patient app needs to show a record (Practitioner,
	// Organization, Location, Medication, …). Default none.
	Readable []string
	// BreakGlass is the reason given for emergency access when the policy
	// was widened by break-glass; audit records it. Default "".
	BreakGlass string
}

// Policy is what one identity may do: its resource scopes, read in the
// patient context they carry. It is immutable and safe for concurrent use.
type Policy struct {
	patient    string
	scopes     []Scope
	readable   map[string]bool
	breakGlass string
}

// NewPolicy returns the policy of scopes (see ParseScopes) under opts.
func NewPolicy(scopes []Scope, opts PolicyOptions) *Policy {
	p := &Policy{patient: opts.Patient, breakGlass: opts.BreakGlass, readable: map[string]bool{}}
	for _, s := range scopes {
		if opts.ConfineToPatient {
			s.Context = ContextPatient
		}
		p.scopes = append(p.scopes, s)
	}
	for _, t := range opts.Readable {
		p.readable[t] = true
	}
	return p
}

// Patient returns the patient in context, "" for none.
func (p *Policy) Patient() string { return p.patient }

// Scopes returns the scopes the policy grants.
func (p *Policy) Scopes() []Scope { return p.scopes }

// BreakGlass returns the reason given for emergency access, "" when the
// policy is the identity's own.
func (p *Policy) BreakGlass() string { return p.breakGlass }

// Decision is the answer for one interaction on one resource type.
type Decision struct {
	// Allowed says whether the interaction may run at all.
	Allowed bool
	// Compartment, when set, confines the interaction to the Patient
	// compartment of that patient id: searches and histories see only its
	// members, reads of other resources answer 404, and writes must leave
	// the resource inside it.
	Compartment string
	// Filters are the v2 scope constraints the resources must match: any
	// one of them (each a set of search parameters, ANDed). Nil when the
	// grant has no constraint.
	Filters []url.Values
	// Reason says why the interaction is refused, for the OperationOutcome
	// and the audit trail.
	Reason string
}

// Decide returns the decision for an interaction that needs every
// permission in perm on resource type typ ("" for system-level
// interactions on every type, which only wildcard scopes cover).
//
// The scopes that cover typ combine: user/*.rs and user/Observation.u
// together allow a conditional update (Update|Search) of an Observation. A
// v2 constraint applies when its scope is needed to complete perm. User
// and system scopes are unconfined; patient scopes confine to the
// compartment of the patient in context, and reach types outside the
// compartment only when they are Readable, and only to read and search.
// When unconfined scopes cover the interaction, patient scopes are not
// consulted. No scope writes AuditEvent: the gateway alone writes the
// audit trail.
func (p *Policy) Decide(perm Perm, typ string) Decision {
	if p == nil || perm == 0 {
		return Decision{Reason: "no permission asked"}
	}
	if Protected(typ) && perm&(Create|Update|Delete) != 0 {
		return Decision{Reason: "the audit trail is written by the gateway only"}
	}
	var free, confined []Scope
	for _, s := range p.scopes {
		if s.Perms&perm == 0 || !(typ == "" && s.Type == Wildcard || typ != "" && s.Covers(typ)) {
			continue
		}
		if s.Context == ContextPatient {
			confined = append(confined, s)
		} else {
			free = append(free, s)
		}
	}
	if fs, ok := grant(free, perm); ok {
		return Decision{Allowed: true, Filters: fs}
	}
	fs, ok := grant(confined, perm)
	if !ok {
		what := typ
		if what == "" {
			what = "every resource type"
		}
		return Decision{Reason: "no scope grants " + perm.String() + " on " + what}
	}
	if p.patient == "" {
		return Decision{Reason: "patient scopes need a patient in context"}
	}
	switch {
	case typ == "" || InCompartment(typ):
		return Decision{Allowed: true, Compartment: p.patient, Filters: fs}
	case p.readable[typ] && perm&^(Read|Search) == 0:
		return Decision{Allowed: true, Filters: fs}
	}
	return Decision{Reason: typ + " is outside the patient's compartment"}
}

// DecideInteraction is Decide for a FHIR interaction (a sdk/wasm/fhirreq
// constant) on typ. Capabilities are always allowed; batches and
// operations are decided by their parts, so they are refused here.
func (p *Policy) DecideInteraction(interaction, typ string) Decision {
	if interaction == fhirreq.Capabilities {
		return Decision{Allowed: true}
	}
	perm, ok := PermOf(interaction)
	if !ok {
		return Decision{Reason: "interaction " + interaction + " is decided by its parts"}
	}
	return p.Decide(perm, typ)
}

// PermOf returns the permission a FHIR interaction (a sdk/wasm/fhirreq
// constant) needs: read, vread and history-instance need Read; searches
// and type and system history need Search; create Create; update and
// patch Update; delete Delete. Conditional forms need Search as well,
// which callers add. Batches, operations and capabilities give false.
func PermOf(interaction string) (Perm, bool) {
	switch interaction {
	case fhirreq.Read, fhirreq.VRead, fhirreq.HistoryInstance:
		return Read, true
	case fhirreq.SearchType, fhirreq.SearchSystem, fhirreq.HistoryType, fhirreq.HistorySystem:
		return Search, true
	case fhirreq.Create:
		return Create, true
	case fhirreq.Update, fhirreq.Patch:
		return Update, true
	case fhirreq.Delete:
		return Delete, true
	}
	return 0, false
}

// grant reports whether scopes (all covering the type) together hold
// every permission in perm, and with which constraints: none when the
// unconstrained scopes hold them all, else one alternative per
// constrained scope that completes them.
func grant(scopes []Scope, perm Perm) ([]url.Values, bool) {
	var free Perm
	for _, s := range scopes {
		if len(s.Query) == 0 {
			free |= s.Perms
		}
	}
	if free&perm == perm {
		return nil, true
	}
	var alts []url.Values
	for _, s := range scopes {
		if len(s.Query) > 0 && (free|s.Perms)&perm == perm {
			alts = append(alts, s.Query)
		}
	}
	return alts, len(alts) > 0
}

type policyKey struct{}

// WithPolicy returns ctx carrying p.
func WithPolicy(ctx context.Context, p *Policy) context.Context {
	return context.WithValue(ctx, policyKey{}, p)
}

// FromContext returns the policy on ctx, nil when the request is not
// access-controlled.
func FromContext(ctx context.Context) *Policy {
	p, _ := ctx.Value(policyKey{}).(*Policy)
	return p
}
