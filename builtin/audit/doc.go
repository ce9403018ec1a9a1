// Package audit is the audit trail plugin (type: audit): one record of
// every FHIR interaction that passes through a route, allowed or denied,
// and one for each entry of a batch or transaction Bundle, kept durably
// and shipped to sinks (AuditEvent resources in the embedded FHIR server
// following the IHE Basic Audit Log Patterns, and JSON lines for a SIEM).
// docs/AUDIT.md is the operator's guide.
//
// Place it after session (it reads the caller's identity after the rest of
// the chain has run) and before authz: authz answers refusals itself
// without calling next, so only a plugin wrapping it sees them. The plugin
// puts an empty access.Record on the context before calling next; authz
// fills it (decision, reason, patient compartment, break-glass, per-entry
// decisions); without authz the record stays empty and the decision is
// "none".
//
// A record names the caller (user, role, fhirUser, session id, client
// address), the request (request id, route, method, path, interaction,
// resource type and id, or the search), the outcome (status, decision,
// reason, break-glass reason) and the patients concerned, gathered from
// the access record's patient compartment, the path (Patient/85,
// Patient/85/Observation), the search parameters that link the type to a
// patient (patient, subject, …), the resource written (its compartments),
// the Location of a create, and the response: the compartments of a
// resource read and of every resource of a search or history Bundle.
// Bodies are read up to inspect_bytes (request and response each), and at
// most max_patients patients are named; a record that may miss some says
// patients_incomplete. Records never hold a token or a resource body.
//
// Records are appended to an in-memory batch, off the request's I/O: every
// flush_interval the batch is written to an append-only segment file in
// spool_dir and fsynced, so a crash loses at most one interval. A shipper
// per sink reads the spool from its own cursor (saved after each batch the
// sink took), retries a failing sink with exponential backoff and jitter
// while the others go on, and segments are deleted once every sink has
// them. Delivery is at least once; the fhir sink is idempotent (PUT
// AuditEvent/<id derived from the record id>). max_spool_bytes bounds the
// spool; on_sink_failure says what happens when it is full: block (503 and
// Retry-After instead of serving unaudited) or drop (serve, count the
// records lost).
package audit
