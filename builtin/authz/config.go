package authz

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/gateway"
)

// Config configures the authz plugin (type: authz). Every field has a
// default; the zero config grants the four roles the session plugin
// creates on first run (physician, nurse, admin, patient) their default
// scopes, and nothing to anyone else.
type Config struct {
	// Roles maps role names (the identity's role, as the session plugin
	// sets it) to the resource scopes the role grants. An identity that
	// carries no scopes of its own gets its role's; one that carries
	// scopes (from the users file or a JWT) gets them narrowed by the
	// role's (access.Narrow): a token may narrow its role, never widen it.
	// An identity whose role is not listed, or that ends up with no
	// resource scope, may do nothing. Default: see DefaultRoles. Listing
	// roles replaces the defaults.
	Roles map[string]RoleConfig `yaml:"roles"`
	// ReadableTypes are the resource types outside the Patient compartment
	// that patient-context callers may read and search when their scopes
	// cover them: what a patient app needs to show a record. Default
	// Practitioner, PractitionerRole, Organization, Location, Medication.
	// Device is left out on purpose: in R4 it is not in the Patient
	// compartment although it may name a patient (an implant), so making
	// it readable would show every patient's devices. Types in the
	// compartment are refused here (their members are read through it).
	ReadableTypes []string `yaml:"readable_types"`
	// BreakGlass lets listed roles exceed their scopes in an emergency.
	// Default: off (no role listed).
	BreakGlass BreakGlassConfig `yaml:"break_glass"`
	// Operations lists the $operations that may be invoked and the
	// permission each needs; every other operation is refused. Default:
	// $everything on Patient, with rs on every type (see
	// DefaultOperations).
	Operations map[string]OperationConfig `yaml:"operations"`
	// BasePath is the FHIR base the plugin reads request paths under.
	// Default: the embedded server's (fhir.base_path, "/fhir/R4").
	BasePath string `yaml:"base_path"`
	// RouteBasePaths override BasePath per route name, for upstream routes
	// mounted elsewhere (a route at /legacy/*rest forwarding to an
	// upstream FHIR base: {legacy: /legacy}).
	RouteBasePaths map[string]string `yaml:"route_base_paths"`
	// Enforcement says who enforces what the plugin cannot decide from the
	// request alone (compartments, constraints, includes, bundle entries).
	Enforcement EnforcementConfig `yaml:"enforcement"`
	// PolicyCache bounds how many identities' policies are kept built.
	// Default 10000.
	PolicyCache int `yaml:"policy_cache"`
}

// RoleConfig is what one role may do.
type RoleConfig struct {
	// Scopes are SMART resource scopes, v1 (patient/*.read) or v2
	// (user/Observation.rs?category=laboratory). Each must parse.
	Scopes []string `yaml:"scopes"`
	// PatientContext confines every scope of the role to the identity's
	// own patient compartment (access.PolicyOptions.ConfineToPatient),
	// whatever the scopes say: the patient role. Default false.
	PatientContext bool `yaml:"patient_context"`

	parsed []access.Scope
}

// BreakGlassConfig is emergency access ("break the glass"): a listed role
// may exceed its scopes when its request carries a reason.
type BreakGlassConfig struct {
	// Roles that may claim it. Default none: break-glass is off. A role
	// with patient_context cannot be listed.
	Roles []string `yaml:"roles"`
	// Header carries the reason. Default "X-Break-Glass-Reason". It is
	// removed from every request before the next plugin, whoever sent it.
	Header string `yaml:"header"`
	// Scopes widen the policy of a request that claims it. Default
	// [user/*.rs]: read anything (AuditEvent excepted), write nothing
	// more than the role's own scopes allow.
	Scopes []string `yaml:"scopes"`
	// MaxReason is the longest reason accepted, in bytes. Default 200.
	MaxReason int `yaml:"max_reason"`
	// Recent is how many break-glass accesses GET
	// /admin/authz/break-glass lists (the newest). Default 100.
	Recent int `yaml:"recent"`

	parsed []access.Scope
}

// OperationConfig allows one $operation.
type OperationConfig struct {
	// Permission is the SMART v2 letters the operation needs ("rs", "c",
	// …). Required.
	Permission string `yaml:"permission"`
	// Types are the resource types the operation may be invoked on
	// ([type]/$op and [type]/[id]/$op); "*" allows any. Default none.
	Types []string `yaml:"types"`
	// System allows invoking it at the base ([base]/$op). Default false.
	System bool `yaml:"system"`
	// AllTypes makes the permission needed on every resource type rather
	// than on the type it is invoked on, for operations that return data
	// of every type ($everything). System-level invocations always need
	// it on every type. Default false.
	AllTypes bool `yaml:"all_types"`

	perm access.Perm
}

// EnforcementConfig says how the plugin enforces policies on each kind of
// route.
type EnforcementConfig struct {
	// Embedded is who enforces compartments, constraints, includes and
	// bundle entries on routes whose terminal is the embedded FHIR server:
	// "server" (default: the plugin decides the interaction's type-level
	// permission and puts the policy on the context, and the server
	// enforces the rest inside its queries, with exact counts and paging)
	// or "gateway" (the plugin enforces everything itself, as in front of
	// an upstream). Upstream routes are always enforced by the gateway.
	Embedded string `yaml:"embedded"`
	// Narrowing is how the gateway confines a search to a patient's
	// compartment in front of an upstream: "compartment" (default: the
	// search is sent as a compartment search, GET Patient/85/Observation?…,
	// which covers every parameter linking the type to the patient) or
	// "parameter" (one compartment parameter is added, GET
	// Observation?…&patient=Patient/85: for servers without compartment
	// searches; for types linked by several parameters it uses one —
	// patient, else subject, else the first — and so finds fewer).
	// Patient searches add _id either way; conditional creates always use
	// the parameter form (If-None-Exist takes no compartment).
	Narrowing string `yaml:"narrowing"`
	// MaxResponse is the largest upstream response the gateway buffers to
	// check; a larger one is refused (502). Default 16MiB.
	MaxResponse gateway.ByteSize `yaml:"max_response"`
	// OnViolation is what the gateway does when an upstream answers a
	// narrowed search with resources outside the policy: "filter"
	// (default: they are removed, total is corrected and the request is
	// logged) or "refuse" (502). Included resources the caller may not
	// see are always removed.
	OnViolation string `yaml:"on_violation"`
}

// Enforcement modes.
const (
	EnforceServer  = "server"
	EnforceGateway = "gateway"

	NarrowCompartment = "compartment"
	NarrowParameter   = "parameter"

	ViolationFilter = "filter"
	ViolationRefuse = "refuse"
)

// DefaultBreakGlassHeader carries a break-glass reason.
const DefaultBreakGlassHeader = "X-Break-Glass-Reason"

// DefaultRoles are the roles used when the config lists none: physician
// user/*.cruds; nurse user/*.rs and create and update (no delete) of
// clinical records; admin user/AuditEvent.rs only (the audit trail, no
// patient data); patient patient/*.rs confined to the patient's own
// compartment.
func DefaultRoles() map[string]RoleConfig {
	return map[string]RoleConfig{
		"physician": {Scopes: []string{"user/*.cruds"}},
		// Reads everything, writes clinical records, deletes nothing.
		"nurse": {Scopes: append([]string{"user/*.rs"}, clinicalWrites...)},
		// Operates the gateway: reads the audit trail, no patient data.
		"admin":   {Scopes: []string{"user/AuditEvent.rs"}},
		"patient": {Scopes: []string{"patient/*.rs"}, PatientContext: true},
	}
}

// clinicalWrites are the nurse role's default writes.
var clinicalWrites = []string{
	"user/Observation.cu", "user/Condition.cu", "user/AllergyIntolerance.cu", "user/Immunization.cu",
	"user/Procedure.cu", "user/Encounter.cu", "user/CarePlan.cu", "user/MedicationAdministration.cu",
	"user/DocumentReference.cu",
}

// DefaultReadableTypes are the default readable_types.
func DefaultReadableTypes() []string {
	return []string{"Practitioner", "PractitionerRole", "Organization", "Location", "Medication"}
}

// DefaultOperations are the operations allowed when the config lists
// none, each needing rs on every type: $everything on a Patient; bulk
// $export at the base, on Patient and on a Group, with the status and file
// endpoints of exports ($export-poll-status, $export-file), which the
// embedded server answers only to the identity that started the export.
func DefaultOperations() map[string]OperationConfig {
	return map[string]OperationConfig{
		"everything":         {Permission: "rs", Types: []string{"Patient"}, AllTypes: true},
		"export":             {Permission: "rs", Types: []string{"Patient", "Group"}, System: true, AllTypes: true},
		"export-poll-status": {Permission: "rs", System: true},
		"export-file":        {Permission: "rs", System: true},
	}
}

// Defaults returns the config with every default set (roles and
// operations are filled in by Validate when none are listed).
func Defaults() *Config {
	return &Config{
		ReadableTypes: DefaultReadableTypes(),
		BreakGlass: BreakGlassConfig{
			Header:    DefaultBreakGlassHeader,
			Scopes:    []string{"user/*.rs"},
			MaxReason: 200,
			Recent:    100,
		},
		Enforcement: EnforcementConfig{
			Embedded:    EnforceServer,
			Narrowing:   NarrowCompartment,
			MaxResponse: 16 << 20,
			OnViolation: ViolationFilter,
		},
		PolicyCache: 10000,
	}
}

// Validate checks the config, fills in the default roles and operations
// when none are listed, and parses every scope. The error joins one
// FieldError per bad key.
func (c *Config) Validate() error {
	var errs []error
	fail := func(key, format string, args ...any) { errs = append(errs, gateway.FieldErrorf(key, format, args...)) }
	if len(c.Roles) == 0 {
		c.Roles = DefaultRoles()
	}
	if c.Operations == nil {
		c.Operations = DefaultOperations()
	}
	for _, name := range sortedKeys(c.Roles) {
		rc := c.Roles[name]
		key := "roles." + name
		if name == "" {
			fail(key, "empty role name")
		}
		rc.parsed = nil
		for i, s := range rc.Scopes {
			sc, ok := access.ParseScope(s)
			if !ok {
				fail(fmt.Sprintf("%s.scopes[%d]", key, i), "%q is not a SMART resource scope (patient/Observation.rs, user/*.cruds, patient/*.read, …)", s)
				continue
			}
			for k := range sc.Query {
				if sc.Type != access.Wildcard && !access.IsSearchParam(sc.Type, strings.SplitN(k, ":", 2)[0]) {
					fail(fmt.Sprintf("%s.scopes[%d]", key, i), "%s is not a search parameter of %s", k, sc.Type)
				}
			}
			rc.parsed = append(rc.parsed, sc)
		}
		c.Roles[name] = rc
	}
	for i, t := range c.ReadableTypes {
		key := fmt.Sprintf("readable_types[%d]", i)
		switch {
		case !access.IsResourceType(t):
			fail(key, "%q is not an R4 resource type", t)
		case access.InCompartment(t):
			fail(key, "%s is in the Patient compartment: patients read their own through it", t)
		}
	}
	bg := &c.BreakGlass
	if bg.Header == "" {
		fail("break_glass.header", "required")
	} else if !validHeaderName(bg.Header) {
		fail("break_glass.header", "%q is not a header name", bg.Header)
	}
	bg.Header = http.CanonicalHeaderKey(bg.Header)
	for i, r := range bg.Roles {
		key := fmt.Sprintf("break_glass.roles[%d]", i)
		rc, ok := c.Roles[r]
		switch {
		case !ok:
			fail(key, "role %q is not listed under roles", r)
		case rc.PatientContext:
			fail(key, "role %q has patient_context: its break-glass scopes would stay confined to its own compartment", r)
		}
	}
	if len(bg.Roles) > 0 && len(bg.Scopes) == 0 {
		fail("break_glass.scopes", "at least one scope is required when roles are listed")
	}
	bg.parsed = nil
	for i, s := range bg.Scopes {
		sc, ok := access.ParseScope(s)
		if !ok {
			fail(fmt.Sprintf("break_glass.scopes[%d]", i), "%q is not a SMART resource scope", s)
			continue
		}
		if sc.Context == access.ContextPatient {
			fail(fmt.Sprintf("break_glass.scopes[%d]", i), "break-glass scopes reach beyond a compartment: use user/ or system/ scopes")
		}
		bg.parsed = append(bg.parsed, sc)
	}
	if bg.MaxReason < 1 || bg.MaxReason > 1024 {
		fail("break_glass.max_reason", "must be between 1 and 1024 bytes")
	}
	if bg.Recent < 1 {
		fail("break_glass.recent", "must be at least 1")
	}
	for _, name := range sortedKeys(c.Operations) {
		oc := c.Operations[name]
		key := "operations." + name
		if name == "" || strings.HasPrefix(name, "$") {
			fail(key, "name the operation without its $ (everything, not $everything)")
		}
		perm, ok := access.ParsePerm(oc.Permission)
		if !ok {
			fail(key+".permission", "%q: want SMART v2 letters in order (c, r, u, d, s), e.g. rs", oc.Permission)
		}
		oc.perm = perm
		if len(oc.Types) == 0 && !oc.System {
			fail(key, "allows no invocation: list types or set system: true")
		}
		for i, t := range oc.Types {
			if t != "*" && !access.IsResourceType(t) {
				fail(fmt.Sprintf("%s.types[%d]", key, i), "%q is not an R4 resource type (or *)", t)
			}
		}
		c.Operations[name] = oc
	}
	if c.BasePath != "" {
		if err := checkBase(c.BasePath); err != nil {
			fail("base_path", "%v", err)
		}
	}
	for _, name := range sortedKeys(c.RouteBasePaths) {
		if err := checkBase(c.RouteBasePaths[name]); err != nil {
			fail("route_base_paths."+name, "%v", err)
		}
	}
	e := &c.Enforcement
	if e.Embedded != EnforceServer && e.Embedded != EnforceGateway {
		fail("enforcement.embedded", "must be server or gateway, not %q", e.Embedded)
	}
	if e.Narrowing != NarrowCompartment && e.Narrowing != NarrowParameter {
		fail("enforcement.narrowing", "must be compartment or parameter, not %q", e.Narrowing)
	}
	if e.MaxResponse <= 0 {
		fail("enforcement.max_response", "must be positive")
	}
	if e.OnViolation != ViolationFilter && e.OnViolation != ViolationRefuse {
		fail("enforcement.on_violation", "must be filter or refuse, not %q", e.OnViolation)
	}
	if c.PolicyCache < 1 {
		fail("policy_cache", "must be at least 1")
	}
	return errors.Join(errs...)
}

func checkBase(p string) error {
	if !strings.HasPrefix(p, "/") {
		return errors.New("must begin with '/'")
	}
	if len(p) > 1 && strings.HasSuffix(p, "/") {
		return errors.New("must not end with '/'")
	}
	return nil
}

func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return s != ""
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// roleLabel bounds the role label of metrics to the configured roles.
func (c *Config) roleLabel(role string) string {
	if _, ok := c.Roles[role]; ok {
		return role
	}
	if role == "" {
		return "none"
	}
	return "unknown"
}
