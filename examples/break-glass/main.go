// Command break-glass lets a physician claim emergency access: a request
// with the break-glass header, whose value is the reason, is allowed and
// marked for the policies after it (X-Break-Glass-Granted, which the
// smart-scopes example honours), and an audit record is written to the
// gateway log and to the shared KV. Clients cannot set the mark
// themselves: it is removed from every request first. For a batch or
// transaction the access covers each entry, and the record names each
// (wasm.Request.Interactions); one that cannot be named is refused.
//
// Build it with "omnigate plugin build ./examples/break-glass".
package main

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/omnigate/omnigate/sdk/wasm"
)

// Granted is the request header that tells later plugins that break-glass
// access was granted; its value is the audit record's key.
const Granted = "X-Break-Glass-Granted"

var config = struct {
	// Header carries the claim; its value is the reason. Default
	// X-Break-Glass.
	Header string `json:"header"`
	// Roles may claim emergency access. Default [physician].
	Roles []string `json:"roles"`
	// MinReason is the shortest reason accepted. Default 10.
	MinReason int `json:"min_reason"`
	// AuditDays keeps audit records in the KV this many days. Default 90.
	AuditDays int `json:"audit_days"`
}{Header: "X-Break-Glass", Roles: []string{"physician"}, MinReason: 10, AuditDays: 90}

func init() {
	wasm.OnStart(func() error {
		if err := wasm.DecodeConfig(&config); err != nil {
			return err
		}
		if config.Header == "" || len(config.Roles) == 0 || config.AuditDays <= 0 {
			return errors.New("config: header, roles and audit_days must be set")
		}
		return nil
	})
	wasm.OnRequest(onRequest)
}

func main() {}

// audit is the record kept for every granted claim. The reason is kept in
// the KV only, not in the log: free text may name a patient.
type audit struct {
	Time        string `json:"time"`
	RequestID   string `json:"request_id"`
	User        string `json:"user"`
	Role        string `json:"role"`
	Method      string `json:"method"`
	Path        string `json:"path"`
	Interaction string `json:"interaction,omitempty"`
	Type        string `json:"type,omitempty"`
	// Entries are the entries of a batch or transaction, each of which
	// the emergency access covers.
	Entries []auditEntry `json:"entries,omitempty"`
	Reason  string       `json:"reason"`
}

// auditEntry is one entry of a batch or transaction: its interaction and
// what it names, as Path names a plain request's (the url without its
// query).
type auditEntry struct {
	Interaction string `json:"interaction"`
	Type        string `json:"type,omitempty"`
	Method      string `json:"method"`
	Path        string `json:"path"`
}

func onRequest(r *wasm.Request) {
	r.Header.Del(Granted)
	reason := r.Header.Get(config.Header)
	if reason == "" {
		return // no claim: the other policies decide
	}
	r.Header.Del(config.Header)
	id := r.Identity()
	if id == nil || !slices.Contains(config.Roles, id.Role) {
		wasm.Count("refused", 1)
		r.Deny(403, "break-glass access is not available to this role")
		return
	}
	if len(reason) < config.MinReason {
		wasm.Count("refused", 1)
		r.Deny(400, "break-glass access needs a reason")
		return
	}
	rec := audit{
		Time:      wasm.Now().UTC().Format(time.RFC3339Nano),
		RequestID: r.ID(),
		User:      id.User,
		Role:      id.Role,
		Method:    r.Method(),
		Path:      r.Path(),
		Reason:    reason,
	}
	what := ""
	if f, ok := r.FHIR(); ok {
		rec.Interaction, rec.Type = f.Interaction, f.Type
		what = f.Interaction + " " + f.Type
	}
	if rec.Interaction == "batch" {
		// The access covers each entry: each is audited, or none passes.
		entries, why, status := bundleEntries(r)
		if status != 0 {
			wasm.Count("refused", 1)
			r.Deny(status, "break-glass access needs an auditable request: "+why)
			return
		}
		rec.Entries = entries
		what = summary(entries)
	}
	key := "audit:" + rec.RequestID
	b, _ := json.Marshal(rec)
	if err := wasm.KV.Set(key, b, time.Duration(config.AuditDays)*24*time.Hour); err != nil {
		// No audit record, no emergency access.
		wasm.Count("refused", 1)
		wasm.Errorf("break-glass audit record could not be stored: %v", err)
		r.Deny(503, "break-glass access is unavailable: the audit store failed")
		return
	}
	wasm.KV.Incr("count:"+id.User+":"+rec.Time[:10], 1, 48*time.Hour)
	wasm.Count("granted", 1)
	wasm.Warnf("break-glass access granted: user=%s role=%s %s audit=%s", id.User, id.Role, what, key)
	r.Header.Set(Granted, key)
}

// bundleEntries lists the entries of a batch or transaction for the audit
// record; a Bundle whose entries cannot all be named gets a refusal
// status and why.
func bundleEntries(r *wasm.Request) ([]auditEntry, string, int) {
	list, err := r.Interactions()
	switch {
	case errors.Is(err, wasm.ErrTooLarge):
		return nil, "the batch or transaction is too large to read", 413
	case err != nil:
		return nil, "the batch or transaction cannot be read", 400
	}
	out := make([]auditEntry, len(list))
	for i, e := range list {
		if e.Interaction == "" {
			return nil, "entry[" + strconv.Itoa(i) + "] is not a FHIR interaction", 400
		}
		path, _, _ := strings.Cut(e.URL, "?")
		out[i] = auditEntry{Interaction: e.Interaction, Type: e.Type, Method: e.Method, Path: path}
	}
	return out, "", 0
}

// summary names a Bundle's entries for the log, without ids: "batch of 2:
// read Patient, delete Observation".
func summary(entries []auditEntry) string {
	parts := make([]string, len(entries))
	for i, e := range entries {
		parts[i] = strings.TrimSpace(e.Interaction + " " + e.Type)
	}
	return "batch of " + strconv.Itoa(len(entries)) + ": " + strings.Join(parts, ", ")
}
