package fhir

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// FindingKind classifies what Check found.
type FindingKind string

const (
	// RewrittenString is an element that is not a link (not a reference,
	// nor of type uri, url, oid or uuid) whose value is "Type/id" of a
	// resource written in the same transaction: what a transaction of an
	// earlier release made of a string equal to the fullUrl of another
	// entry (an Identifier.value "urn:uuid:…"). The value the client sent
	// is not kept in the store: the data must be loaded again from its
	// source to repair it.
	RewrittenString FindingKind = "rewritten-string"
	// DanglingReference is a reference "Type/id" to a resource that does
	// not exist or was deleted.
	DanglingReference FindingKind = "dangling-reference"
	// UnresolvedReference is a conditional reference ("Type?criteria") or
	// a urn:uuid/urn:oid placeholder stored as it was sent: an earlier
	// release wrote conditional references of transactions verbatim.
	UnresolvedReference FindingKind = "unresolved-reference"
)

// Finding is one problem Check found in a version of a resource.
type Finding struct {
	Kind FindingKind
	// Type, ID and Version name the version of the resource.
	Type, ID string
	Version  int64
	// Element locates the value ("DocumentReference.identifier[0].value").
	Element string
	// Value is the value found, its search criteria left out for an
	// unresolved conditional reference (they may name a person:
	// "Patient?identifier=…").
	Value string
}

func (f Finding) String() string {
	var what string
	switch f.Kind {
	case RewrittenString:
		what = "a string equal to a resource written in the same transaction: a transaction of an earlier release replaced another entry's fullUrl in it; the value sent is not in the store (load the resource again from its source)"
	case DanglingReference:
		what = "the referenced resource does not exist"
	case UnresolvedReference:
		what = "a reference stored unresolved (a conditional reference or a urn: placeholder)"
	}
	return fmt.Sprintf("%s/%s (version %d): %s = %q: %s", f.Type, f.ID, f.Version, f.Element, f.Value, what)
}

// CheckSummary counts what Check read and found.
type CheckSummary struct {
	// Resources counts the resources (current and not deleted) and
	// Versions all versions read.
	Resources, Versions int
	// Findings counts the findings by kind.
	Findings map[FindingKind]int
}

// checkPage is how many versions Check reads at a time.
const checkPage = 500

// Check reads the whole store and reports, in the order of history
// (newest first), the problems of its resources: strings that a
// transaction of an earlier release rewrote (in every version), and
// references of current versions that lead nowhere or were stored
// unresolved. It reads the store twice and keeps in memory the name and
// write times of every resource; it writes nothing. Run it on a store no
// server is writing to.
func (h *Handler) Check(ctx context.Context, report func(Finding)) (CheckSummary, error) {
	sum := CheckSummary{Findings: map[FindingKind]int{}}
	// First: what exists, and when each resource was written.
	type state struct {
		deleted bool
		written []time.Time
	}
	states := map[string]*state{}
	err := h.eachVersion(ctx, func(v *store.Version) error {
		sum.Versions++
		k := v.Type + "/" + v.ID
		s := states[k]
		if s == nil {
			s = &state{deleted: v.Deleted}
			states[k] = s
			if !v.Deleted {
				sum.Resources++
			}
		}
		s.written = append(s.written, v.Updated)
		return nil
	})
	if err != nil {
		return sum, err
	}
	writtenAt := func(ref string, t time.Time) bool {
		if s := states[ref]; s != nil {
			for _, w := range s.written {
				if w.Equal(t) {
					return true
				}
			}
		}
		return false
	}
	exists := func(ref string) bool {
		s := states[ref]
		return s != nil && !s.deleted
	}
	// Then each version.
	seen := map[string]bool{}
	err = h.eachVersion(ctx, func(v *store.Version) error {
		k := v.Type + "/" + v.ID
		current := !seen[k]
		seen[k] = true
		if v.Deleted {
			return nil
		}
		var fs []Finding
		walkLinks(v.Body, v.Type, true, func(w *linkWalker, kind linkKind, start, end int) {
			val := decodeString(v.Body[start:end])
			add := func(kind FindingKind, shown string) {
				fs = append(fs, Finding{Kind: kind, Type: v.Type, ID: v.ID, Version: v.Version,
					Element: formatPath(v.Body, v.Type, w.path), Value: shown})
			}
			switch kind {
			case kindOther:
				if looksLikeRef(val) && writtenAt(val, v.Updated) {
					add(RewrittenString, val)
				}
			case kindRef:
				if !current {
					return
				}
				switch {
				case isConditionalRef(val):
					add(UnresolvedReference, conditionShape(val))
				case strings.HasPrefix(val, "urn:uuid:") || strings.HasPrefix(val, "urn:oid:"):
					add(UnresolvedReference, val)
				default:
					if ref, ok := localRef(val); ok && !exists(ref) {
						add(DanglingReference, val)
					}
				}
			}
		})
		for _, f := range fs {
			sum.Findings[f.Kind]++
			report(f)
		}
		return nil
	})
	return sum, err
}

// eachVersion calls f with every version of the store, newest first.
func (h *Handler) eachVersion(ctx context.Context, f func(v *store.Version) error) error {
	q := store.HistoryQuery{Count: checkPage}
	for {
		vs, _, err := h.store.History(ctx, q)
		if err != nil {
			return fmt.Errorf("read history: %w", err)
		}
		for _, v := range vs {
			if err := f(v); err != nil {
				return err
			}
		}
		if len(vs) < q.Count {
			return nil
		}
		q.Before = vs[len(vs)-1].Seq
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// looksLikeRef reports whether s has the form "Type/id".
func looksLikeRef(s string) bool {
	t, id, ok := strings.Cut(s, "/")
	return ok && spec.IsResourceType(t) && search.ValidID(id)
}

// localRef returns the "Type/id" a relative reference leads to
// ("Patient/85", "Patient/85/_history/2"); false for other references
// (absolute URLs, contained "#x").
func localRef(s string) (string, bool) {
	if i := strings.Index(s, "/_history/"); i >= 0 {
		s = s[:i]
	}
	if !looksLikeRef(s) {
		return "", false
	}
	return s, true
}

// conditionShape is a conditional reference with its values left out:
// "Patient?identifier=…".
func conditionShape(ref string) string {
	typ, query, _ := strings.Cut(ref, "?")
	crit, err := url.ParseQuery(query)
	if err != nil {
		return typ + "?…"
	}
	names := make([]string, 0, len(crit))
	for k := range crit {
		names = append(names, k+"=…")
	}
	sort.Strings(names)
	return typ + "?" + strings.Join(names, "&")
}
