// Package store defines what the FHIR server needs from its storage: the
// versions of resources, their search index, and serialized read-write
// transactions. The embedded implementation is in store/sqlite; a shared
// PostgreSQL database for several gateway instances is in store/postgres.
// store/storetest is the conformance suite both pass.
package store

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
)

// ErrNotFound is returned when a resource or version does not exist.
var ErrNotFound = errors.New("not found")

// ErrUnavailable wraps the errors of a store that cannot be reached for
// now: its database server is down, shutting down or restarting, a
// connection broke, no connection was free in time, or a statement ran
// out of time. The request may succeed later (HTTP 503). For a write, the
// outcome of a commit that failed this way is unknown. The embedded SQLite
// store does not return it.
var ErrUnavailable = errors.New("store unavailable")

// Version is one stored version of a resource.
type Version struct {
	// Key identifies the resource (all its versions) within the store.
	Key int64
	// Type and ID name the resource.
	Type, ID string
	// Version counts from 1, one more for every write of the resource.
	Version int64
	// Updated is when the version was written (meta.lastUpdated).
	Updated time.Time
	// Deleted marks the tombstone a delete writes; Body is nil then.
	Deleted bool
	// Method is the HTTP method that wrote the version: POST, PUT, PATCH
	// or DELETE.
	Method string
	// Body is the resource JSON with the server's id and meta.
	Body []byte
	// Seq orders all versions of the store by write (history order).
	Seq int64
}

// Match is one search result: a resource key and the version that matched.
type Match struct {
	Key     int64
	Version int64
}

// HistoryQuery selects versions for a history interaction, newest first.
type HistoryQuery struct {
	// Type and ID narrow to a resource type or one resource; both empty
	// means the whole store.
	Type, ID string
	// Since keeps versions written at or after it (zero: all).
	Since time.Time
	// Before keeps versions with Seq below it (0: no bound); paging links
	// carry it so that later writes do not shift pages.
	Before int64
	// Count is the page size.
	Count int
	// Compartment, when set, keeps the versions that were in the Patient
	// compartment of that patient id when they were written (a deletion:
	// when the version it deletes was written). A resource that moved
	// between compartments shows each patient only its own versions.
	Compartment string
	// ExcludeTypes leaves out the versions of these resource types (types
	// an access policy does not grant on a whole-store history).
	ExcludeTypes []string
}

// Reader is the read side of a store. Reads outside a transaction see the
// last committed state.
type Reader interface {
	// Read returns the current version of a resource, a tombstone if it
	// was deleted, or ErrNotFound.
	Read(ctx context.Context, typ, id string) (*Version, error)
	// VRead returns one version, or ErrNotFound.
	VRead(ctx context.Context, typ, id string, version int64) (*Version, error)
	// History returns versions newest first and how many match in all.
	History(ctx context.Context, q HistoryQuery) ([]*Version, int, error)
	// Search returns up to limit matches of q from offset on, in the
	// query's sort order (without _sort: in order of creation). Deleted
	// resources never match.
	Search(ctx context.Context, q *search.Query, offset, limit int) ([]Match, error)
	// Count returns how many resources match q.
	Count(ctx context.Context, q *search.Query) (int, error)
	// Fetch returns the matched versions, in order; versions that no
	// longer exist are left out.
	Fetch(ctx context.Context, ms []Match) ([]*Version, error)
	// Include returns the current versions that inc asks for, given the
	// resources of a page: those they reference (_include) or those that
	// reference them (_revinclude). Deleted resources are left out.
	Include(ctx context.Context, page []*Version, inc search.Include) ([]*Version, error)
}

// Tx is a read-write transaction. Its reads see its own writes.
type Tx interface {
	Reader
	// Put stores v as the new current version of its resource, replacing
	// the resource's index entries with idx (nil for a tombstone). The
	// caller sets v.Version to one more than the current version (1 for a
	// new resource) and v.Updated; Put fills in Key and Seq.
	Put(ctx context.Context, v *Version, idx *search.Entries) error
}

// Snapshots is implemented by stores that several processes share (a
// database server): the search server keeps its paging snapshots there, so
// that whichever instance serves the next page finds the snapshot the first
// page made.
type Snapshots interface {
	// PutSnapshot stores data under token until expires.
	PutSnapshot(ctx context.Context, token string, data []byte, expires time.Time) error
	// GetSnapshot returns the data stored under token, or ErrNotFound when
	// there is none or it expired before now.
	GetSnapshot(ctx context.Context, token string, now time.Time) ([]byte, error)
}

// Store is a FHIR resource store.
type Store interface {
	Reader
	// Update runs fn in a serialized read-write transaction, committed
	// durably when fn returns nil and rolled back when it returns an
	// error (which Update returns).
	Update(ctx context.Context, fn func(tx Tx) error) error
	io.Closer
}

// Stats is what a store holds, for the admin listener.
type Stats struct {
	// Backend names the implementation ("sqlite").
	Backend string
	// ByType counts the live (not deleted) resources of each type.
	ByType map[string]int
	// Versions counts the versions ever written (creates, updates and
	// deletes), which history keeps.
	Versions int64
	// Bytes is the storage used, when the backend knows it.
	Bytes int64
}

// Statser is a store that can describe itself (Stats) and check that it
// answers (Check). It is optional: the admin endpoint and the health
// component exist for stores that implement it.
type Statser interface {
	Stats(ctx context.Context) (Stats, error)
	Check(ctx context.Context) error
}

// Copier is a store that can be read whole, in the order it was written,
// and emptied: what copying one store into another needs (omnigate fhir
// copy). Both stores implement it.
type Copier interface {
	// Versions returns up to limit versions whose Seq is above after, in
	// Seq order (the order they were written), deletions included.
	Versions(ctx context.Context, after int64, limit int) ([]*Version, error)
	// Clear removes every resource, version, index entry and paging
	// snapshot, in one transaction taken as a write.
	Clear(ctx context.Context) error
}
