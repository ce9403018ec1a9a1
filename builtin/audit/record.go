package audit

import (
	"crypto/rand"
	"encoding/base32"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Record is one audited FHIR interaction: a request, or one entry of a
// batch or transaction Bundle. It is what the spool keeps, one JSON line
// each, and what every sink receives. It never holds a token, a cookie or a
// resource body; the query of a search is kept (it can name a patient), so
// the audit trail is itself protected data.
type Record struct {
	// ID is unique (a random per-process prefix and a counter) and a valid
	// FHIR id: the fhir sink derives the AuditEvents' ids from it.
	ID string `json:"id"`
	// Time is when the interaction was answered, on the plugin's clock.
	Time time.Time `json:"time"`
	// RequestID is the request's X-Request-Id; the entries of a Bundle
	// share their request's.
	RequestID string `json:"request_id,omitempty"`
	// User, Role, FHIRUser and Session are the caller's identity, empty
	// for anonymous requests. Session is the session's id, never its
	// token.
	User     string `json:"user,omitempty"`
	Role     string `json:"role,omitempty"`
	FHIRUser string `json:"fhir_user,omitempty"`
	Session  string `json:"session,omitempty"`
	// ClientIP is the client's address (gateway.ClientIP: X-Forwarded-For
	// is believed from trusted proxies only).
	ClientIP string `json:"client_ip,omitempty"`
	// Route is the gateway route's name.
	Route string `json:"route,omitempty"`
	// Method and Path are the HTTP method and path (for an entry, its
	// request.method and request.url without the query).
	Method string `json:"method"`
	Path   string `json:"path"`
	// Interaction is a FHIR restful interaction (read, vread, update,
	// patch, delete, history-instance, history-type, history-system,
	// create, search-type, search-system, batch, transaction, operation),
	// or "unknown" for a path that is not a FHIR interaction.
	Interaction string `json:"interaction"`
	// Type, ResourceID and VersionID name the resource (the id a create
	// got, from Location); Operation the operation without "$".
	Type       string `json:"type,omitempty"`
	ResourceID string `json:"resource_id,omitempty"`
	VersionID  string `json:"version_id,omitempty"`
	Operation  string `json:"operation,omitempty"`
	// Compartment is the compartment of a compartment search
	// ("Patient/85" for GET Patient/85/Observation).
	Compartment string `json:"compartment,omitempty"`
	// Query is the search's query string (or a conditional write's
	// criteria), at most 8KiB, without access_token.
	Query string `json:"query,omitempty"`
	// Bundle is "batch" or "transaction" on the record of the Bundle and on
	// the records of its entries; Entry is an entry's index (from 0);
	// Entries is the number of entries, on the Bundle's record.
	Bundle  string `json:"bundle,omitempty"`
	Entry   *int   `json:"entry,omitempty"`
	Entries int    `json:"entries,omitempty"`
	// Patients are the ids of the patients whose data the interaction
	// touched (see the package documentation), at most max_patients;
	// PatientsIncomplete says some may be missing.
	Patients           []string `json:"patients,omitempty"`
	PatientsIncomplete bool     `json:"patients_incomplete,omitempty"`
	// Status is the HTTP status answered (for an entry, its own).
	Status int `json:"status"`
	// Decision is what access control decided: "allowed", "denied", or
	// "none" when no access control looked at the request.
	Decision string `json:"decision"`
	// Reason is why access control refused, or allowed by break-glass.
	Reason string `json:"reason,omitempty"`
	// BreakGlass is the reason given for emergency access.
	BreakGlass string `json:"break_glass,omitempty"`
}

// Decisions.
const (
	DecisionAllowed = "allowed"
	DecisionDenied  = "denied"
	DecisionNone    = "none"
)

// maxQuery bounds the query string kept in a record.
const maxQuery = 8 << 10

// idGen makes record ids: a random prefix per generator and a counter.
type idGen struct {
	prefix string
	n      atomic.Uint64
}

func newIDGen() *idGen {
	var b [10]byte
	rand.Read(b[:])
	return &idGen{prefix: strings.ToLower(base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])) + "-"}
}

func (g *idGen) next() string {
	var buf [40]byte
	n := copy(buf[:], g.prefix)
	return string(strconv.AppendUint(buf[:n], g.n.Add(1), 36))
}

// cleanQuery drops access_token (some clients send the bearer token in the
// query) and bounds the length.
func cleanQuery(raw string) string {
	if strings.Contains(raw, "access_token") {
		parts := strings.Split(raw, "&")
		kept := parts[:0]
		for _, p := range parts {
			if k, _, _ := strings.Cut(p, "="); k != "access_token" {
				kept = append(kept, p)
			}
		}
		raw = strings.Join(kept, "&")
	}
	if len(raw) > maxQuery {
		raw = raw[:maxQuery]
	}
	return raw
}
