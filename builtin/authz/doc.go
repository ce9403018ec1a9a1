// Package authz is the access control plugin, type "authz": it decides every
// FHIR interaction from the caller's identity, deny by default, and goes
// after the session plugin in a route's chain.
//
// # Policies
//
// An identity's role (Config.Roles) gives it SMART resource scopes; scopes
// the identity carries itself (users file, JWT) narrow the role's, never
// widen them (access.Narrow). A role with patient_context confines every
// scope to the identity's own Patient compartment. The result is an
// access.Policy, built once per identity and cached. An unknown role, or
// an identity left with no resource scope, may do nothing.
//
// # Decisions
//
// Each request is classified (sdk/wasm/fhirreq): read, vread, searches
// (type, system, compartment, POST _search), histories, create, update,
// patch, delete, their conditional forms (which need search too),
// $operations (Config.Operations) and the entries of batch and
// transaction Bundles, each decided like a request of its own.
// GET [base]/metadata and [base]/.well-known/smart-configuration are
// public. A missing identity gets 401, a refusal 403, both as
// OperationOutcome with the reason in diagnostics. Every decision is
// written to the access.Record an audit plugin earlier in the chain puts
// on the context, entries of Bundles included.
//
// # Enforcement
//
// On routes whose terminal is the embedded FHIR server the plugin decides
// the interaction's type-level permission, answers refusals itself, and
// puts the policy on the context (access.WithPolicy): the server enforces
// compartments, constraints, includes and bundle entries in its queries,
// so counts and paging stay exact. In front of an upstream FHIR server
// (and on embedded routes with enforcement.embedded: gateway) the plugin
// enforces the same policy itself, as Google's FHIR Info Gateway does:
// searches are narrowed to the compartment and the scopes' constraints,
// every answer is checked (resources outside the policy are removed from
// Bundles, included ones too, reads outside it answer 404), writes are
// checked before they are sent (the current version is fetched, a patch
// is applied locally) and pinned with If-Match, histories that cannot be
// confined are refused, and batches are split: refused entries are
// answered 403 in place, the rest forwarded and the answers spliced back
// in order.
//
// # Break-glass
//
// Roles listed under break_glass may exceed their scopes when a request
// carries a reason (X-Break-Glass-Reason): the policy is widened by the
// break-glass scopes for that request, and the access is counted, logged,
// recorded and listed on GET /admin/authz/break-glass.
//
// See docs/AUTHZ.md.
package authz
