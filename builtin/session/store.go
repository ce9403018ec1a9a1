package session

import (
	"context"
	"errors"
	"time"
)

// Record is one session as stored. It never holds the token, only ID, the
// token's SHA-256.
type Record struct {
	ID        string   `json:"id"`
	UserID    string   `json:"user"`
	Role      string   `json:"role"`
	Scopes    []string `json:"scopes,omitempty"`
	PatientID string   `json:"patient,omitempty"`
	// FHIRUser is the FHIR resource of the user (Practitioner/12), from
	// the user directory or the JWT's fhirUser claim.
	FHIRUser string    `json:"fhir_user,omitempty"`
	Method   string    `json:"method"` // password or jwt
	Created  time.Time `json:"created"`
	LastSeen time.Time `json:"last_seen"`
	// Expires is the absolute expiry; the session also ends IdleTimeout
	// after LastSeen.
	Expires     time.Time     `json:"expires"`
	IdleTimeout time.Duration `json:"-"`
	UserAgent   string        `json:"user_agent,omitempty"`
	ClientIP    string        `json:"client_ip,omitempty"`
}

// IdleExpires is when the session ends without activity.
func (r *Record) IdleExpires() time.Time { return r.LastSeen.Add(r.IdleTimeout) }

// Ends is the earlier of the idle and absolute expiry.
func (r *Record) Ends() time.Time {
	if e := r.IdleExpires(); e.Before(r.Expires) {
		return e
	}
	return r.Expires
}

// Live reports whether the session is valid at now.
func (r *Record) Live(now time.Time) bool { return now.Before(r.Ends()) }

// ErrNotFound means no live session has that id.
var ErrNotFound = errors.New("session not found")

// Store keeps sessions. The Redis and the memory implementations pass the
// same contract tests. Times come from the store's clock (Redis TIME for
// Redis), never from the caller.
type Store interface {
	// Create stores rec (ID, user, role, timeouts set by the caller;
	// Created, LastSeen and Expires are set from absolute) and indexes it
	// under its user. When the user then has more than maxSessions live
	// sessions (0: no limit), the oldest are deleted; their ids are
	// returned.
	Create(ctx context.Context, rec *Record, absolute time.Duration, maxSessions int) (evicted []string, err error)
	// Get returns the live session id, or ErrNotFound. When its last
	// activity is older than touchAfter, the activity time is refreshed
	// and the expiry pushed back, in the same call.
	Get(ctx context.Context, id string, touchAfter time.Duration) (*Record, error)
	// Delete removes a session. Deleting a missing one is not an error.
	Delete(ctx context.Context, id string) error
	// List returns the user's live sessions, oldest first, and drops the
	// ids of ended ones from the user's index.
	List(ctx context.Context, user string) ([]*Record, error)
	// DeleteUser removes all of the user's sessions except keep (which
	// may be ""), and returns the removed ids.
	DeleteUser(ctx context.Context, user, keep string) ([]string, error)
	// Count returns the number of live sessions by role.
	Count(ctx context.Context) (map[string]int, error)
}
