package access

import (
	"context"
	"sync"
)

// Record is what access control decided for one request, kept for the
// plugins earlier in the chain (audit) to read once the rest of the chain
// has returned: the authz plugin may answer a refusal itself, so they
// cannot learn it from the context it passes on. An audit plugin puts an
// empty Record on the context (WithRecord) before calling next; the authz
// plugin fills it (RecordFrom). Safe for concurrent use.
type Record struct {
	mu sync.Mutex
	d  RecordData
}

// RecordData is the content of a Record.
type RecordData struct {
	// Decided is true once access control looked at the request.
	Decided bool
	// Allowed says whether the request (its outer interaction) may run.
	Allowed bool
	// Reason says why it is refused, or why it is allowed by break-glass.
	Reason string
	// Interaction and Type are the interaction decided (a sdk/wasm/fhirreq
	// constant) and its resource type.
	Interaction, Type string
	// Patient is the patient compartment the request was confined to, ""
	// when it was not.
	Patient string
	// BreakGlass is the reason given for emergency access, "" when none
	// was used.
	BreakGlass string
	// Entries are the decisions on the entries of a batch or transaction,
	// in order (empty for other requests).
	Entries []EntryDecision
}

// EntryDecision is the decision on one entry of a batch or transaction.
type EntryDecision struct {
	Index             int
	Interaction, Type string
	Allowed           bool
	Reason            string
}

// Set replaces the record's content.
func (r *Record) Set(d RecordData) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.d = d
	r.mu.Unlock()
}

// Get returns a copy of the record's content.
func (r *Record) Get() RecordData {
	if r == nil {
		return RecordData{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.d
	d.Entries = append([]EntryDecision(nil), d.Entries...)
	return d
}

type recordKey struct{}

// WithRecord returns ctx carrying a new, empty Record, and the Record.
func WithRecord(ctx context.Context) (context.Context, *Record) {
	r := &Record{}
	return context.WithValue(ctx, recordKey{}, r), r
}

// RecordFrom returns the Record on ctx, nil when no plugin asked for one
// (Record's methods accept nil).
func RecordFrom(ctx context.Context) *Record {
	r, _ := ctx.Value(recordKey{}).(*Record)
	return r
}
