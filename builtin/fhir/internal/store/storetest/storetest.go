// Package storetest is the conformance suite of FHIR stores: what every
// implementation of store.Store must do, checked the same way on each.
// A store package runs it from its tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { … a new, empty store closed at t's cleanup … })
//	}
//
// It covers every Reader and Tx method, every search parameter type with
// its modifiers and prefixes, _id, _lastUpdated, _sort, :missing, paging,
// compartments and alternative constraint groups, histories (Since,
// Before, Compartment, ExcludeTypes), includes and reverse includes,
// deleted resources, Fetch of versions that are gone, transactions (their
// own writes visible inside, nothing left by one that fails) and
// concurrent updates through one store.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// Epoch is the Updated time of the suite's first write; each write is one
// second later than the one before (see Writer).
var Epoch = time.Date(2024, 6, 1, 12, 0, 0, 123456000, time.UTC)

// Now is the instant the suite's searches run at (for the "ap" prefix).
var Now = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

// Run runs the suite. open returns a new, empty store for one subtest and
// arranges for it to be closed when that subtest ends.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	for _, c := range []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Versions", testVersions},
		{"Rollback", testRollback},
		{"TxSeesOwnWrites", testTxSeesOwnWrites},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"Search", testSearch},
		{"Chains", testChains},
		{"Composites", testComposites},
		{"SearchPaging", testSearchPaging},
		{"Fetch", testFetch},
		{"Include", testInclude},
		{"History", testHistory},
		{"ConfinedSearch", testConfinedSearch},
		{"ConfinedHistory", testConfinedHistory},
		{"AbsoluteReferencesStayOutside", testAbsoluteReferences},
		{"CompartmentMembership", testCompartmentMembership},
		{"Copier", testCopier},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, open(t)) })
	}
}

// testCopier: Versions pages through every version in the order written,
// deletions included; Clear leaves an empty store that numbers its history
// from the start again and takes new writes.
func testCopier(t *testing.T, s store.Store) {
	c, ok := s.(store.Copier)
	if !ok {
		t.Skip("the store is not a store.Copier")
	}
	ctx := context.Background()
	w := &Writer{S: s}
	var want []*store.Version
	for i := range 5 {
		id := fmt.Sprintf("p%d", i%3)
		body := fmt.Sprintf(`{"resourceType":"Patient","id":%q,"birthDate":"20%02d"}`, id, i)
		if i == 3 {
			body = ""
		}
		want = append(want, w.Put(t, "Patient", id, body))
	}
	var got []*store.Version
	for after := int64(0); ; {
		vs, err := c.Versions(ctx, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) == 0 {
			break
		}
		if len(vs) > 2 {
			t.Fatalf("%d versions, limit 2", len(vs))
		}
		got = append(got, vs...)
		after = vs[len(vs)-1].Seq
	}
	if len(got) != len(want) {
		t.Fatalf("%d versions, want %d", len(got), len(want))
	}
	for i := range want {
		g, x := got[i], want[i]
		if g.Seq != x.Seq || g.Key != x.Key || g.Type != x.Type || g.ID != x.ID || g.Version != x.Version ||
			!g.Updated.Equal(x.Updated) || g.Deleted != x.Deleted || g.Method != x.Method || string(g.Body) != string(x.Body) {
			t.Errorf("version %d: %+v, want %+v", i, g, x)
		}
	}
	if err := c.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	if vs, _ := c.Versions(ctx, 0, 10); len(vs) != 0 {
		t.Errorf("%d versions after Clear", len(vs))
	}
	if _, err := s.Read(ctx, "Patient", "p0"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("read after Clear: %v", err)
	}
	q, err := search.Parse("Patient", url.Values{"birthdate": {"ge2000"}}, search.Options{Now: Now})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.Count(ctx, q); err != nil || n != 0 {
		t.Errorf("search after Clear: %d %v", n, err)
	}
	v := w.Put(t, "Patient", "p0", `{"resourceType":"Patient","id":"p0"}`)
	if v.Version != 1 || v.Seq != 1 {
		t.Errorf("first write after Clear: version %d, seq %d; want 1 and 1", v.Version, v.Seq)
	}
}

// Writer writes resources the way the FHIR server does: inside an Update
// it reads the current version, puts the next one with the index entries
// of the JSON body, and stamps Updated from a clock that starts at Epoch
// and moves one second per write.
type Writer struct {
	S store.Store
	n int
}

func (w *Writer) next() time.Time {
	w.n++
	return Epoch.Add(time.Duration(w.n-1) * time.Second)
}

// Version builds the next version of typ/id on tx: body "" is a deletion.
func (w *Writer) Version(ctx context.Context, tx store.Tx, typ, id, body string) (*store.Version, *search.Entries, error) {
	version := int64(1)
	cur, err := tx.Read(ctx, typ, id)
	switch {
	case err == nil:
		version = cur.Version + 1
	case !errors.Is(err, store.ErrNotFound):
		return nil, nil, err
	}
	v := &store.Version{Type: typ, ID: id, Version: version, Updated: w.next(), Method: "PUT"}
	if body == "" {
		v.Deleted, v.Method = true, "DELETE"
		return v, nil, nil
	}
	idx, err := Index(typ, id, body)
	if err != nil {
		return nil, nil, err
	}
	v.Body = []byte(body)
	return v, idx, nil
}

// Index returns the index entries of a JSON resource.
func Index(typ, id, body string) (*search.Entries, error) {
	d := json.NewDecoder(strings.NewReader(body))
	d.UseNumber()
	var tree any
	if err := d.Decode(&tree); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", typ, id, err)
	}
	return search.Index(typ, id, tree), nil
}

// Put writes the next version of typ/id in its own Update: body "" deletes.
func (w *Writer) Put(t testing.TB, typ, id, body string) *store.Version {
	t.Helper()
	ctx := context.Background()
	var out *store.Version
	err := w.S.Update(ctx, func(tx store.Tx) error {
		v, idx, err := w.Version(ctx, tx, typ, id, body)
		if err != nil {
			return err
		}
		out = v
		return tx.Put(ctx, v, idx)
	})
	if err != nil {
		t.Fatalf("put %s/%s: %v", typ, id, err)
	}
	return out
}

// Resource is a resource to write: Body "" deletes it.
type Resource struct{ Type, ID, Body string }

// PutAll writes rs in one Update.
func (w *Writer) PutAll(t testing.TB, rs []Resource) {
	t.Helper()
	ctx := context.Background()
	err := w.S.Update(ctx, func(tx store.Tx) error {
		for _, r := range rs {
			v, idx, err := w.Version(ctx, tx, r.Type, r.ID, r.Body)
			if err != nil {
				return err
			}
			if err := tx.Put(ctx, v, idx); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("put all: %v", err)
	}
}

func query(t testing.TB, typ, params string) *search.Query {
	t.Helper()
	v, err := url.ParseQuery(params)
	if err != nil {
		t.Fatal(err)
	}
	q, err := search.Parse(typ, v, search.Options{Now: Now})
	if err != nil {
		t.Fatalf("%s?%s: %v", typ, params, err)
	}
	return q
}

// found runs q on r and returns the ids found, in order, checking that
// Count agrees.
func found(t testing.TB, r store.Reader, q *search.Query) string {
	t.Helper()
	ctx := context.Background()
	ms, err := r.Search(ctx, q, 0, 1000)
	if err != nil {
		t.Fatalf("search: %v", err)
	}
	vs, err := r.Fetch(ctx, ms)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if len(vs) != len(ms) {
		t.Errorf("fetched %d of %d matches", len(vs), len(ms))
	}
	var out []string
	for i, v := range vs {
		if v.Deleted {
			t.Errorf("search found the deleted %s/%s", v.Type, v.ID)
		}
		if i < len(ms) && (v.Key != ms[i].Key || v.Version != ms[i].Version) {
			t.Errorf("fetch %d: %d/%d, want %d/%d", i, v.Key, v.Version, ms[i].Key, ms[i].Version)
		}
		out = append(out, v.ID)
	}
	n, err := r.Count(ctx, q)
	if err != nil {
		t.Fatalf("count: %v", err)
	}
	if n != len(out) {
		t.Errorf("Count %d, Search found %d", n, len(out))
	}
	return strings.Join(out, ",")
}

func sorted(s string) string {
	if s == "" {
		return ""
	}
	parts := strings.Split(s, ",")
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// testVersions: versions, tombstones, a resource made again after its
// deletion, reads of what does not exist.
func testVersions(t *testing.T, s store.Store) {
	ctx := context.Background()
	w := &Writer{S: s}
	// The body is kept byte for byte, white space included.
	body1 := "{\"resourceType\":\"Patient\", \"id\":\"a\",\n  \"gender\":\"male\"}"
	v1 := w.Put(t, "Patient", "a", body1)
	other := w.Put(t, "Patient", "b", `{"resourceType":"Patient","id":"b"}`)
	v2 := w.Put(t, "Patient", "a", `{"resourceType":"Patient","id":"a","gender":"female"}`)
	v3 := w.Put(t, "Patient", "a", "")
	v4 := w.Put(t, "Patient", "a", `{"resourceType":"Patient","id":"a","gender":"other"}`)
	if v1.Key == 0 || v1.Key != v2.Key || v2.Key != v3.Key || v3.Key != v4.Key || other.Key == v1.Key {
		t.Errorf("keys: %d %d %d %d, other %d", v1.Key, v2.Key, v3.Key, v4.Key, other.Key)
	}
	if !(v1.Seq > 0 && other.Seq > v1.Seq && v2.Seq > other.Seq && v3.Seq > v2.Seq && v4.Seq > v3.Seq) {
		t.Errorf("seqs do not follow the writes: %d %d %d %d %d", v1.Seq, other.Seq, v2.Seq, v3.Seq, v4.Seq)
	}
	check := func(name string, got *store.Version, err error, want *store.Version, body string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.Key != want.Key || got.Type != want.Type || got.ID != want.ID || got.Version != want.Version ||
			!got.Updated.Equal(want.Updated) || got.Updated.Location() != time.UTC || got.Deleted != want.Deleted ||
			got.Method != want.Method || got.Seq != want.Seq || string(got.Body) != body {
			t.Errorf("%s: got %+v (body %q), want %+v (body %q)", name, got, got.Body, want, body)
		}
	}
	got, err := s.Read(ctx, "Patient", "a")
	check("read", got, err, v4, `{"resourceType":"Patient","id":"a","gender":"other"}`)
	got, err = s.VRead(ctx, "Patient", "a", 1)
	check("vread 1", got, err, v1, body1)
	got, err = s.VRead(ctx, "Patient", "a", 3)
	check("vread of the deletion", got, err, v3, "")
	if got.Body != nil {
		t.Errorf("a deletion has the body %q, want nil", got.Body)
	}
	if v := w.Put(t, "Patient", "b", ""); v.Version != 2 {
		t.Fatalf("deletion of b: version %d", v.Version)
	}
	got, err = s.Read(ctx, "Patient", "b")
	if err != nil || !got.Deleted || got.Version != 2 || got.Method != "DELETE" || got.Body != nil {
		t.Errorf("read of a deleted resource: %+v %v, want its tombstone", got, err)
	}
	for _, c := range []struct {
		name string
		err  error
	}{
		{"read of an unknown id", func() error { _, err := s.Read(ctx, "Patient", "zz"); return err }()},
		{"read of an unknown type", func() error { _, err := s.Read(ctx, "Observation", "a"); return err }()},
		{"vread of an unknown version", func() error { _, err := s.VRead(ctx, "Patient", "a", 9); return err }()},
		{"vread of version 0", func() error { _, err := s.VRead(ctx, "Patient", "a", 0); return err }()},
		{"vread of an unknown id", func() error { _, err := s.VRead(ctx, "Patient", "zz", 1); return err }()},
	} {
		if !errors.Is(c.err, store.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", c.name, c.err)
		}
	}
	// The index follows the current version only.
	if got := found(t, s, query(t, "Patient", "gender=female")); got != "" {
		t.Errorf("gender=female finds %q: the index kept a replaced version", got)
	}
	if got := found(t, s, query(t, "Patient", "gender=other")); got != "a" {
		t.Errorf("gender=other finds %q, want a", got)
	}
	if got := found(t, s, query(t, "Patient", "")); got != "a" {
		t.Errorf("all patients: %q, want a (b is deleted)", got)
	}
}

// testRollback: an Update whose fn fails returns its error and leaves
// nothing, index and history included.
func testRollback(t *testing.T, s store.Store) {
	ctx := context.Background()
	w := &Writer{S: s}
	w.Put(t, "Patient", "kept", `{"resourceType":"Patient","id":"kept","gender":"male"}`)
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		for _, r := range []Resource{
			{"Patient", "new", `{"resourceType":"Patient","id":"new","gender":"male"}`},
			{"Patient", "kept", `{"resourceType":"Patient","id":"kept","gender":"female"}`},
			{"Observation", "o", `{"resourceType":"Observation","id":"o","status":"final","code":{},"subject":{"reference":"Patient/kept"}}`},
		} {
			v, idx, err := w.Version(ctx, tx, r.Type, r.ID, r.Body)
			if err != nil {
				return err
			}
			if err := tx.Put(ctx, v, idx); err != nil {
				return err
			}
		}
		// Midway: the transaction saw its writes, then fails.
		if got := found(t, tx, query(t, "Patient", "gender=male")); got != "new" {
			t.Errorf("inside: %q", got)
		}
		return fmt.Errorf("wrapped: %w", boom)
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update returned %v, want the error of fn", err)
	}
	if _, err := s.Read(ctx, "Patient", "new"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a rolled back create is visible: %v", err)
	}
	if v, err := s.Read(ctx, "Patient", "kept"); err != nil || v.Version != 1 {
		t.Errorf("a rolled back update is visible: %+v %v", v, err)
	}
	if got := found(t, s, query(t, "Patient", "gender=male")); got != "kept" {
		t.Errorf("index after rollback: %q", got)
	}
	if got := found(t, s, query(t, "Observation", "")); got != "" {
		t.Errorf("observations after rollback: %q", got)
	}
	if _, total, err := s.History(ctx, store.HistoryQuery{Count: 10}); err != nil || total != 1 {
		t.Errorf("history after rollback: %d versions, %v", total, err)
	}
	if _, total, _ := s.History(ctx, store.HistoryQuery{Count: 10, Compartment: "kept"}); total != 1 {
		t.Errorf("compartment history after rollback: %d versions", total)
	}
	// The store still writes.
	if v := w.Put(t, "Patient", "kept", `{"resourceType":"Patient","id":"kept"}`); v.Version != 2 {
		t.Errorf("next version %d", v.Version)
	}
}

// testTxSeesOwnWrites: reads inside a transaction see its writes, the
// index included, before the commit.
func testTxSeesOwnWrites(t *testing.T, s store.Store) {
	ctx := context.Background()
	w := &Writer{S: s}
	w.Put(t, "Patient", "p", `{"resourceType":"Patient","id":"p","gender":"male"}`)
	err := s.Update(ctx, func(tx store.Tx) error {
		for _, r := range []Resource{
			{"Patient", "p", `{"resourceType":"Patient","id":"p","gender":"female"}`},
			{"Observation", "o1", `{"resourceType":"Observation","id":"o1","status":"final","code":{},"subject":{"reference":"Patient/p"}}`},
			{"Observation", "o1", `{"resourceType":"Observation","id":"o1","status":"amended","code":{},"subject":{"reference":"Patient/p"}}`},
			{"Observation", "o2", `{"resourceType":"Observation","id":"o2","status":"final","code":{},"subject":{"reference":"Patient/p"}}`},
			{"Observation", "o2", ""},
		} {
			v, idx, err := w.Version(ctx, tx, r.Type, r.ID, r.Body)
			if err != nil {
				return err
			}
			if err := tx.Put(ctx, v, idx); err != nil {
				return err
			}
		}
		if v, err := tx.Read(ctx, "Patient", "p"); err != nil || v.Version != 2 {
			t.Errorf("read inside: %+v %v", v, err)
		}
		if v, err := tx.VRead(ctx, "Observation", "o1", 2); err != nil || !strings.Contains(string(v.Body), "amended") {
			t.Errorf("vread inside: %+v %v", v, err)
		}
		if v, err := tx.Read(ctx, "Observation", "o2"); err != nil || !v.Deleted {
			t.Errorf("read of a deletion inside: %+v %v", v, err)
		}
		for _, c := range []struct{ typ, params, want string }{
			{"Patient", "gender=female", "p"},
			{"Patient", "gender=male", ""},
			{"Observation", "subject=Patient/p", "o1"},
			{"Observation", "status=final", ""},
			{"Observation", "status=amended", "o1"},
		} {
			if got := found(t, tx, query(t, c.typ, c.params)); got != c.want {
				t.Errorf("inside, %s?%s: %q, want %q", c.typ, c.params, got, c.want)
			}
		}
		page, err := tx.Fetch(ctx, []store.Match{{Key: mustRead(t, tx, "Observation", "o1").Key, Version: 2}})
		if err != nil || len(page) != 1 {
			t.Fatalf("fetch inside: %v %v", page, err)
		}
		inc, err := tx.Include(ctx, page, search.Include{Source: "Observation", Param: param(t, "Observation", "subject")})
		if err != nil || len(inc) != 1 || inc[0].ID != "p" || inc[0].Version != 2 {
			t.Errorf("include inside: %v %v", inc, err)
		}
		vs, total, err := tx.History(ctx, store.HistoryQuery{Type: "Observation", Count: 10})
		if err != nil || total != 4 || len(vs) != 4 || vs[0].ID != "o2" || !vs[0].Deleted {
			t.Errorf("history inside: %d %v", total, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := found(t, s, query(t, "Observation", "subject=Patient/p")); got != "o1" {
		t.Errorf("after commit: %q", got)
	}
}

func mustRead(t testing.TB, r store.Reader, typ, id string) *store.Version {
	t.Helper()
	v, err := r.Read(context.Background(), typ, id)
	if err != nil {
		t.Fatalf("read %s/%s: %v", typ, id, err)
	}
	return v
}

func param(t testing.TB, typ, code string) *search.Param {
	t.Helper()
	p, ok := search.Lookup(typ, code)
	if !ok {
		t.Fatalf("no parameter %s.%s", typ, code)
	}
	return p
}

// testConcurrentUpdates: Updates racing through one store are serialized:
// each reads the current version and writes the next, none is lost, and
// a conditional create decided inside Update happens once.
func testConcurrentUpdates(t *testing.T, s store.Store) {
	ctx := context.Background()
	const workers, each = 4, 8
	var mu sync.Mutex
	w := &Writer{S: s}
	once := query(t, "Patient", "identifier=urn:x|once")
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*2)
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < each; j++ {
				errs <- s.Update(ctx, func(tx store.Tx) error {
					mu.Lock()
					v, idx, err := w.Version(ctx, tx, "Patient", "counter", `{"resourceType":"Patient","id":"counter"}`)
					mu.Unlock()
					if err != nil {
						return err
					}
					return tx.Put(ctx, v, idx)
				})
				// A conditional create: made only if no Patient has the
				// identifier.
				errs <- s.Update(ctx, func(tx store.Tx) error {
					n, err := tx.Count(ctx, once)
					if err != nil || n > 0 {
						return err
					}
					mu.Lock()
					v, idx, err := w.Version(ctx, tx, "Patient", fmt.Sprintf("once-%d-%d", i, j), `{"resourceType":"Patient","identifier":[{"system":"urn:x","value":"once"}]}`)
					mu.Unlock()
					if err != nil {
						return err
					}
					return tx.Put(ctx, v, idx)
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if v := mustRead(t, s, "Patient", "counter"); v.Version != workers*each {
		t.Errorf("version %d after %d updates: updates were lost", v.Version, workers*each)
	}
	vs, total, err := s.History(ctx, store.HistoryQuery{Type: "Patient", ID: "counter", Count: 100})
	if err != nil || total != workers*each {
		t.Fatalf("history: %d %v", total, err)
	}
	for i, v := range vs {
		if v.Version != int64(workers*each-i) {
			t.Errorf("history %d: version %d", i, v.Version)
		}
	}
	if n, _ := s.Count(ctx, once); n != 1 {
		t.Errorf("%d conditional creates succeeded, want 1", n)
	}
}

// SearchData are the resources of the search tests, written in this
// order, one Update each (so _lastUpdated and _sort=_lastUpdated follow
// it); a Body "" deletes. LoadSearchData writes them.
func SearchData() []Resource {
	long := strings.Repeat("0123456789", 300) // 3,000 bytes
	return []Resource{
		{"Practitioner", "dr1", `{"resourceType":"Practitioner","id":"dr1","name":[{"family":"Who","given":["Doctor"]}]}`},
		{"Organization", "org1", `{"resourceType":"Organization","id":"org1","name":"Acme Health"}`},
		{"Patient", "p1", `{"resourceType":"Patient","id":"p1","meta":{"profile":["http://example.org/fhir/StructureDefinition/vip"]},
			"identifier":[{"system":"http://hosp.example/mrn","value":"MRN-1"}],"active":true,
			"name":[{"family":"García","given":["José"]}],"gender":"male","birthDate":"1970-05-20",
			"telecom":[{"system":"email","value":"jose@example.org"}],"address":[{"city":"Springfield"}],
			"generalPractitioner":[{"reference":"Practitioner/dr1"}]}`},
		{"Patient", "p2", `{"resourceType":"Patient","id":"p2","identifier":[{"system":"http://hosp.example/mrn","value":"MRN-2"},{"system":"http://other.example","value":"X-9"}],
			"active":false,"name":[{"family":"Smith","given":["Anna","Maria"]}],"gender":"female","birthDate":"1985",
			"managingOrganization":{"reference":"Organization/org1"}}`},
		{"Patient", "p3", `{"resourceType":"Patient","id":"p3","identifier":[{"system":"urn:long","value":"` + long + `"},{"system":"urn:nul","value":"a\u0000b"}],
			"name":[{"family":"Smithson","text":"Ünïcode Smithson"}],"gender":"female","birthDate":"1985-03-01"}`},
		{"Patient", "p4", `{"resourceType":"Patient","id":"p4","name":[{"family":"Smith"}],"gender":"male","birthDate":"1985-03-01"}`},
		{"Patient", "p4", ""},
		{"Patient", "p5", `{"resourceType":"Patient","id":"p5","name":[{"family":"Old"}],"gender":"male"}`},
		{"Patient", "p5", ""},
		{"Patient", "p5", `{"resourceType":"Patient","id":"p5","name":[{"family":"Zed"}],"gender":"other","birthDate":"2001-01-01"}`},
		{"Observation", "o1", `{"resourceType":"Observation","id":"o1","status":"final",
			"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],
			"code":{"coding":[{"system":"http://loinc.org","code":"1234-5","display":"Glucose [Mass/volume]"}]},
			"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2020-01-15T10:00:00Z",
			"valueQuantity":{"value":5.4,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}}`},
		{"Observation", "o2", `{"resourceType":"Observation","id":"o2","status":"amended",
			"code":{"coding":[{"system":"http://loinc.org","code":"1234-5"}]},"subject":{"reference":"Patient/p1"},
			"performer":[{"reference":"Practitioner/dr1"}],"effectivePeriod":{"start":"2020-02-01","end":"2020-02-03"},
			"valueQuantity":{"value":7,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}}`},
		{"Observation", "o3", `{"resourceType":"Observation","id":"o3","status":"final",
			"code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}],"text":"Heart rate"},"subject":{"reference":"Patient/p2"},
			"effectiveDateTime":"2021","valueQuantity":{"value":72,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}}`},
		{"Observation", "o4", `{"resourceType":"Observation","id":"o4","status":"final",
			"code":{"coding":[{"system":"http://snomed.info/sct","code":"111"}]},"subject":{"reference":"http://other.example/fhir/Patient/p1"},
			"effectiveDateTime":"2019-12-31T23:59:59Z","valueString":"Positive Result"}`},
		{"Observation", "o5", `{"resourceType":"Observation","id":"o5","status":"final",
			"code":{"coding":[{"system":"http://loinc.org","code":"1234-5"}]},"subject":{"reference":"Patient/p3"},
			"valueQuantity":{"value":5.4,"unit":"mg/dL"}}`},
		{"Observation", "o6", `{"resourceType":"Observation","id":"o6","status":"final","code":{"text":"about a deleted patient"},"subject":{"reference":"Patient/p4"}}`},
		{"RiskAssessment", "ra1", `{"resourceType":"RiskAssessment","id":"ra1","status":"final","subject":{"reference":"Patient/p1"},"prediction":[{"probabilityDecimal":0.25}]}`},
		{"RiskAssessment", "ra2", `{"resourceType":"RiskAssessment","id":"ra2","status":"final","subject":{"reference":"Patient/p2"},"prediction":[{"probabilityDecimal":0.8}]}`},
		{"RiskAssessment", "ra3", `{"resourceType":"RiskAssessment","id":"ra3","status":"final","subject":{"reference":"Patient/p2"}}`},
		{"ValueSet", "vs1", `{"resourceType":"ValueSet","id":"vs1","status":"active","url":"http://example.org/fhir/ValueSet/a","name":"A"}`},
		{"ValueSet", "vs2", `{"resourceType":"ValueSet","id":"vs2","status":"active","url":"http://example.org/fhir/ValueSet/a/b","name":"AB"}`},
		{"ValueSet", "vs3", `{"resourceType":"ValueSet","id":"vs3","status":"draft","url":"http://other.example/vs","name":"Other"}`},
	}
}

// LoadSearchData writes SearchData to s.
func LoadSearchData(t testing.TB, s store.Store) {
	w := &Writer{S: s}
	for _, r := range SearchData() {
		w.Put(t, r.Type, r.ID, r.Body)
	}
}

// SearchQuery parses a search of typ at Now.
func SearchQuery(t testing.TB, typ, params string) *search.Query { return query(t, typ, params) }

// Found runs q on r and returns the ids found, in order, checking that
// Count and Fetch agree with Search.
func Found(t testing.TB, r store.Reader, q *search.Query) string { return found(t, r, q) }

// at is the Updated time of the n-th write of searchData (from 1), in the
// form of a search value.
func at(n int, layout string) string {
	return Epoch.Add(time.Duration(n-1) * time.Second).Format(layout)
}

// searchCase is a search of typ and the ids it finds, in order.
type searchCase struct{ name, typ, params, want string }

// checkSearches runs each case as a subtest.
func checkSearches(t *testing.T, s store.Reader, cases []searchCase) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := found(t, s, query(t, c.typ, c.params)); got != c.want {
				t.Errorf("%s?%s: %q, want %q", c.typ, c.params, got, c.want)
			}
		})
	}
}

// testSearch: every parameter type with its modifiers and prefixes.
// Without _sort, results come in the order the resources were created.
func testSearch(t *testing.T, s store.Store) {
	LoadSearchData(t, s)
	long := strings.Repeat("0123456789", 300)
	checkSearches(t, s, []searchCase{
		{"all of a type", "Patient", "", "p1,p2,p3,p5"},
		{"a type with none", "Encounter", "", ""},
		// string
		{"string prefix, accents and case folded", "Patient", "name=jos", "p1"},
		{"string prefix of a family", "Patient", "family=smith", "p2,p3"},
		{"string with accents in the value", "Patient", "family=GARCÍA", "p1"},
		{"string of a text element", "Patient", "name=unicode", "p3"},
		{"string values are ORed", "Patient", "family=garcia,zed", "p1,p5"},
		{"string clauses are ANDed", "Patient", "family=smith&given=anna", "p2"},
		{"string :exact", "Patient", "family:exact=Smith", "p2"},
		{"string :exact is case sensitive", "Patient", "family:exact=smith", ""},
		{"string :contains", "Patient", "family:contains=mith", "p2,p3"},
		{"string :contains in the middle", "Patient", "name:contains=arc", "p1"},
		{"string of an address", "Patient", "address-city=springfield", "p1"},
		{"string of another type", "Observation", "value-string=positive", "o4"},
		{"string invalid UTF-8", "Patient", "name=%FF", ""},
		{"string :exact invalid UTF-8", "Patient", "family:exact=%FF", ""},
		// token
		{"token code", "Patient", "gender=female", "p2,p3"},
		{"token codes ORed", "Patient", "gender=male,other", "p1,p5"},
		{"token system and code", "Observation", "code=http://loinc.org|1234-5", "o1,o2,o5"},
		{"token code of any system", "Observation", "code=111", "o4"},
		{"token of another system", "Observation", "code=http://snomed.info/sct|1234-5", ""},
		{"token system only", "Observation", "code=http://snomed.info/sct|", "o4"},
		{"token without a system", "Observation", "code=|1234-5", ""},
		{"token :not", "Patient", "gender:not=female", "p1,p5"},
		{"token :text of a display", "Observation", "code:text=glucose", "o1"},
		{"token :text of a text", "Observation", "code:text=heart", "o3"},
		{"token boolean", "Patient", "active=true", "p1"},
		{"token boolean false", "Patient", "active=false", "p2"},
		{"token identifier", "Patient", "identifier=http://hosp.example/mrn|MRN-2", "p2"},
		{"token identifier value only", "Patient", "identifier=X-9", "p2"},
		{"token identifier of 3,000 bytes", "Patient", "identifier=urn:long|" + long, "p3"},
		{"token identifier with a NUL", "Patient", "identifier=urn:nul|a%00b", "p3"},
		{"token email", "Patient", "email=jose@example.org", "p1"},
		{"token invalid UTF-8", "Patient", "identifier=%FF|%FE", ""},
		{"_id invalid UTF-8", "Patient", "_id=%FF", ""},
		{"token category", "Observation", "category=laboratory", "o1"},
		{"token status", "Observation", "status=final", "o1,o3,o4,o5,o6"},
		// reference
		{"reference type/id", "Observation", "subject=Patient/p1", "o1,o2"},
		{"reference id", "Observation", "subject=p2", "o3"},
		{"reference :type", "Observation", "subject:Patient=p1", "o1,o2"},
		{"reference patient parameter", "Observation", "patient=p3", "o5"},
		{"reference absolute URL", "Observation", "subject=http://other.example/fhir/Patient/p1", "o4"},
		{"reference to a deleted resource", "Observation", "subject=Patient/p4", "o6"},
		{"reference performer", "Observation", "performer=Practitioner/dr1", "o2"},
		{"reference values ORed", "Observation", "subject=Patient/p2,Patient/p3", "o3,o5"},
		{"reference of a Patient", "Patient", "general-practitioner=Practitioner/dr1", "p1"},
		{"reference organization", "Patient", "organization=org1", "p2"},
		// date
		{"date day", "Patient", "birthdate=1970-05-20", "p1"},
		{"date year", "Patient", "birthdate=1985", "p2,p3"},
		{"date eq a day within a year", "Patient", "birthdate=1985-03-01", "p3"},
		{"date ne", "Patient", "birthdate=ne1985", "p1,p5"},
		{"date gt", "Patient", "birthdate=gt1985-06-01", "p2,p5"},
		{"date lt", "Patient", "birthdate=lt1985-02-01", "p1,p2"},
		{"date ge", "Patient", "birthdate=ge1985-03-01", "p2,p3,p5"},
		{"date le", "Patient", "birthdate=le1985-03-01", "p1,p2,p3"},
		{"date sa", "Patient", "birthdate=sa1985", "p5"},
		{"date eb", "Patient", "birthdate=eb1985", "p1"},
		{"date ap", "Patient", "birthdate=ap2000-06-01", "p5"},
		{"date range ANDed", "Patient", "birthdate=ge1980&birthdate=lt1990", "p2,p3"},
		{"date values ORed", "Patient", "birthdate=1970,2001", "p1,p5"},
		{"date of a dateTime", "Observation", "date=2020-01-15", "o1"},
		{"date of a Period", "Observation", "date=2020-02-02", ""},
		{"date ge within a Period", "Observation", "date=ge2020-02-02", "o2,o3"},
		{"date sa a Period", "Observation", "date=sa2020-01-31", "o2,o3"},
		{"date eb a Period", "Observation", "date=eb2020-02-04", "o1,o2,o4"},
		{"date with a time", "Observation", "date=lt2020-01-01T00:00:00Z", "o4"},
		{"date of a year", "Observation", "date=2021", "o3"},
		{"date with a time zone", "Observation", "date=2020-01-15T11:00:00+01:00", "o1"},
		// number
		{"number eq with precision", "RiskAssessment", "probability=0.25", "ra1"},
		{"number eq of a coarser value", "RiskAssessment", "probability=0.3", "ra1"},
		{"number gt", "RiskAssessment", "probability=gt0.5", "ra2"},
		{"number lt", "RiskAssessment", "probability=lt0.5", "ra1"},
		{"number ge", "RiskAssessment", "probability=ge0.25", "ra1,ra2"},
		{"number le", "RiskAssessment", "probability=le0.8", "ra1,ra2"},
		{"number ne", "RiskAssessment", "probability=ne0.8", "ra1"},
		{"number ap", "RiskAssessment", "probability=ap0.75", "ra2"},
		{"number sa", "RiskAssessment", "probability=sa0.5", "ra2"},
		{"number eb", "RiskAssessment", "probability=eb0.5", "ra1"},
		// quantity
		{"quantity value", "Observation", "value-quantity=5.4", "o1,o5"},
		{"quantity with system and code", "Observation", "value-quantity=5.4|http://unitsofmeasure.org|mg/dL", "o1"},
		{"quantity with a unit only", "Observation", "value-quantity=5.4||mg/dL", "o1,o5"},
		{"quantity gt", "Observation", "value-quantity=gt6", "o2,o3"},
		{"quantity lt with a code", "Observation", "value-quantity=lt100||/min", "o3"},
		{"quantity ge", "Observation", "value-quantity=ge7", "o2,o3"},
		{"quantity le", "Observation", "value-quantity=le7", "o1,o2,o5"},
		{"quantity ne", "Observation", "value-quantity=ne5.4", "o2,o3"},
		{"quantity ap", "Observation", "value-quantity=ap70", "o3"},
		{"quantity by the unit's text", "Observation", "value-quantity=72||beats/minute", "o3"},
		// uri
		{"uri", "ValueSet", "url=http://example.org/fhir/ValueSet/a", "vs1"},
		{"uri :below", "ValueSet", "url:below=http://example.org/fhir", "vs1,vs2"},
		{"uri :above", "ValueSet", "url:above=http://example.org/fhir/ValueSet/a/b/c", "vs1,vs2"},
		{"uri _profile", "Patient", "_profile=http://example.org/fhir/StructureDefinition/vip", "p1"},
		{"uri invalid UTF-8", "ValueSet", "url:below=http://example.org/%FF", ""},
		// :missing
		{"string :missing=true", "Observation", "value-string:missing=true", "o1,o2,o3,o5,o6"},
		{"string :missing=false", "Observation", "value-string:missing=false", "o4"},
		{"token :missing=true", "Patient", "active:missing=true", "p3,p5"},
		{"reference :missing=true", "Observation", "performer:missing=true", "o1,o3,o4,o5,o6"},
		{"date :missing=true", "Patient", "birthdate:missing=true", ""},
		{"date :missing=true of another type", "Observation", "date:missing=true", "o5,o6"},
		{"number :missing=true", "RiskAssessment", "probability:missing=true", "ra3"},
		{"quantity :missing=false", "Observation", "value-quantity:missing=false", "o1,o2,o3,o5"},
		{"uri :missing=false", "Patient", "_profile:missing=false", "p1"},
		{"_id :missing=false", "Patient", "_id:missing=false", "p1,p2,p3,p5"},
		{"_id :missing=true", "Patient", "_id:missing=true", ""},
		{"_lastUpdated :missing=true", "Patient", "_lastUpdated:missing=true", ""},
		// _id and _lastUpdated
		{"_id", "Patient", "_id=p2", "p2"},
		{"_id ORed", "Patient", "_id=p3,p1,p9", "p1,p3"},
		{"_id of a deleted resource", "Patient", "_id=p4", ""},
		{"_id :not", "Patient", "_id:not=p1,p2", "p3,p5"},
		{"_id and another clause", "Patient", "_id=p1,p2&gender=female", "p2"},
		{"_lastUpdated eq a second", "Patient", "_lastUpdated=" + at(3, "2006-01-02T15:04:05Z"), "p1"},
		{"_lastUpdated gt", "Patient", "_lastUpdated=gt" + at(5, "2006-01-02T15:04:05.000Z"), "p5"},
		{"_lastUpdated le", "Patient", "_lastUpdated=le" + at(4, "2006-01-02T15:04:05.000Z"), "p1,p2"},
		{"_lastUpdated ge a day", "Observation", "_lastUpdated=ge" + at(1, "2006-01-02"), "o1,o2,o3,o4,o5,o6"},
		{"_lastUpdated sa", "Patient", "_lastUpdated=sa" + at(4, "2006-01-02T15:04:05Z"), "p3,p5"},
		{"_lastUpdated eb", "Patient", "_lastUpdated=eb" + at(4, "2006-01-02T15:04:05Z"), "p1"},
		// _sort
		{"_sort string", "Patient", "_sort=family", "p1,p2,p3,p5"},
		{"_sort string descending", "Patient", "_sort=-family", "p5,p3,p2,p1"},
		{"_sort token", "Patient", "_sort=gender", "p2,p3,p1,p5"},
		{"_sort token descending then _id", "Patient", "_sort=-gender,-_id", "p5,p1,p3,p2"},
		{"_sort date", "Patient", "_sort=birthdate", "p1,p2,p3,p5"},
		{"_sort date descending", "Patient", "_sort=-birthdate", "p5,p2,p3,p1"},
		{"_sort missing values last", "Observation", "_sort=date", "o4,o1,o2,o3,o5,o6"},
		{"_sort missing values last descending", "Observation", "_sort=-date", "o3,o2,o1,o4,o5,o6"},
		{"_sort number", "RiskAssessment", "_sort=-probability", "ra2,ra1,ra3"},
		{"_sort quantity", "Observation", "_sort=value-quantity&value-quantity:missing=false", "o1,o5,o2,o3"},
		{"_sort uri", "ValueSet", "_sort=-url", "vs3,vs2,vs1"},
		{"_sort _id descending", "Patient", "_sort=-_id", "p5,p3,p2,p1"},
		{"_sort _lastUpdated descending", "Patient", "_sort=-_lastUpdated", "p5,p3,p2,p1"},
		{"_sort _lastUpdated", "Observation", "_sort=_lastUpdated&status=final", "o1,o3,o4,o5,o6"},
	})
}

// testSearchPaging: offset and limit over a sorted result.
func testSearchPaging(t *testing.T, s store.Store) {
	ctx := context.Background()
	w := &Writer{S: s}
	var rs []Resource
	for i := 0; i < 25; i++ {
		rs = append(rs, Resource{"Patient", fmt.Sprintf("x%02d", i), fmt.Sprintf(`{"resourceType":"Patient","id":"x%02d","birthDate":"19%02d-01-01"}`, i, 99-i)})
	}
	w.PutAll(t, rs)
	q := query(t, "Patient", "_sort=birthdate")
	var got []string
	for off := 0; ; off += 10 {
		ms, err := s.Search(ctx, q, off, 10)
		if err != nil {
			t.Fatal(err)
		}
		vs, err := s.Fetch(ctx, ms)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			got = append(got, v.ID)
		}
		if len(ms) < 10 {
			break
		}
	}
	var want []string
	for i := 24; i >= 0; i-- {
		want = append(want, fmt.Sprintf("x%02d", i))
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("pages: %v, want %v", got, want)
	}
	if ms, err := s.Search(ctx, q, 30, 10); err != nil || len(ms) != 0 {
		t.Errorf("past the end: %v %v", ms, err)
	}
	// A negative limit is none, a negative offset the first.
	if ms, err := s.Search(ctx, q, -3, -1); err != nil || len(ms) != 25 {
		t.Errorf("negative offset and limit: %d matches, %v; want 25", len(ms), err)
	}
}

// testFetch: matches come back in the order asked; versions that do not
// exist are left out; older versions can be fetched.
func testFetch(t *testing.T, s store.Store) {
	ctx := context.Background()
	w := &Writer{S: s}
	a1 := w.Put(t, "Patient", "a", `{"resourceType":"Patient","id":"a","gender":"male"}`)
	b1 := w.Put(t, "Patient", "b", `{"resourceType":"Patient","id":"b"}`)
	a2 := w.Put(t, "Patient", "a", `{"resourceType":"Patient","id":"a","gender":"female"}`)
	vs, err := s.Fetch(ctx, []store.Match{{Key: a2.Key, Version: 2}, {Key: b1.Key, Version: 7}, {Key: 9999, Version: 1}, {Key: b1.Key, Version: 1}, {Key: a1.Key, Version: 1}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vs {
		got = append(got, fmt.Sprintf("%s/%d", v.ID, v.Version))
	}
	if strings.Join(got, ",") != "a/2,b/1,a/1" {
		t.Errorf("fetch: %v, want a/2,b/1,a/1", got)
	}
	if vs[2].Seq != a1.Seq || string(vs[2].Body) != `{"resourceType":"Patient","id":"a","gender":"male"}` {
		t.Errorf("old version: %+v", vs[2])
	}
	if vs, err := s.Fetch(ctx, nil); err != nil || len(vs) != 0 {
		t.Errorf("fetch of nothing: %v %v", vs, err)
	}
	// Many at once.
	var rs []Resource
	for i := 0; i < 450; i++ {
		rs = append(rs, Resource{"Basic", fmt.Sprintf("m%d", i), `{"resourceType":"Basic","code":{}}`})
	}
	w.PutAll(t, rs)
	ms, err := s.Search(ctx, query(t, "Basic", "_sort=-_id"), 0, 1000)
	if err != nil || len(ms) != 450 {
		t.Fatalf("search: %d %v", len(ms), err)
	}
	vs, err = s.Fetch(ctx, ms)
	if err != nil || len(vs) != 450 {
		t.Fatalf("fetch of 450: %d %v", len(vs), err)
	}
	for i := range vs {
		if vs[i].Key != ms[i].Key {
			t.Fatalf("fetch %d out of order", i)
		}
	}
}

// testInclude: _include and _revinclude, by parameter, by "*", with a
// target type; deleted resources are left out.
func testInclude(t *testing.T, s store.Store) {
	ctx := context.Background()
	LoadSearchData(t, s)
	page := func(typ string, ids ...string) []*store.Version {
		var out []*store.Version
		for _, id := range ids {
			out = append(out, mustRead(t, s, typ, id))
		}
		return out
	}
	for _, c := range []struct {
		name string
		page []*store.Version
		inc  search.Include
		want string
	}{
		{"include by parameter", page("Observation", "o1", "o2", "o3"), search.Include{Source: "Observation", Param: param(t, "Observation", "subject")}, "Patient/p1,Patient/p2"},
		{"include every reference", page("Observation", "o2"), search.Include{Source: "Observation"}, "Practitioner/dr1,Patient/p1"},
		{"include with a target type", page("Observation", "o2"), search.Include{Source: "Observation", Target: "Practitioner"}, "Practitioner/dr1"},
		{"include with another target type", page("Observation", "o2"), search.Include{Source: "Observation", Param: param(t, "Observation", "subject"), Target: "Group"}, ""},
		{"include of a deleted resource", page("Observation", "o6"), search.Include{Source: "Observation", Param: param(t, "Observation", "subject")}, ""},
		{"include of an absolute reference", page("Observation", "o4"), search.Include{Source: "Observation"}, ""},
		{"include from another type", page("Observation", "o1"), search.Include{Source: "Patient", Param: param(t, "Patient", "general-practitioner")}, ""},
		{"include from a mixed page", append(page("Patient", "p1", "p2"), page("Observation", "o1")...), search.Include{Source: "Patient"}, "Practitioner/dr1,Organization/org1"},
		{"revinclude by parameter", page("Patient", "p1", "p2"), search.Include{Rev: true, Source: "Observation", Param: param(t, "Observation", "subject")}, "Observation/o1,Observation/o2,Observation/o3"},
		{"revinclude every reference", page("Patient", "p1"), search.Include{Rev: true, Source: "RiskAssessment"}, "RiskAssessment/ra1"},
		{"revinclude of a practitioner", page("Practitioner", "dr1"), search.Include{Rev: true, Source: "Patient", Param: param(t, "Patient", "general-practitioner")}, "Patient/p1"},
		{"revinclude with a target type", page("Practitioner", "dr1"), search.Include{Rev: true, Source: "Observation", Target: "Practitioner"}, "Observation/o2"},
		{"revinclude finds no deleted resource", page("Patient", "p3"), search.Include{Rev: true, Source: "Observation"}, "Observation/o5"},
		{"revinclude of nothing", page("Organization", "org1"), search.Include{Rev: true, Source: "Observation"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			vs, err := s.Include(ctx, c.page, c.inc)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, v := range vs {
				if v.Deleted {
					t.Errorf("included the deletion of %s/%s", v.Type, v.ID)
				}
				cur := mustRead(t, s, v.Type, v.ID)
				if cur.Version != v.Version {
					t.Errorf("included version %d of %s/%s, current is %d", v.Version, v.Type, v.ID, cur.Version)
				}
				got = append(got, v.Type+"/"+v.ID)
			}
			if strings.Join(got, ",") != c.want {
				t.Errorf("got %q, want %q", strings.Join(got, ","), c.want)
			}
		})
	}
	if vs, err := s.Include(ctx, nil, search.Include{Source: "Observation"}); err != nil || len(vs) != 0 {
		t.Errorf("include of an empty page: %v %v", vs, err)
	}
	// Deleting a resource removes it from what includes it.
	w := &Writer{S: s, n: len(SearchData())}
	w.Put(t, "Observation", "o2", "")
	vs, err := s.Include(ctx, page("Practitioner", "dr1"), search.Include{Rev: true, Source: "Observation"})
	if err != nil || len(vs) != 0 {
		t.Errorf("revinclude after the deletion: %v %v", vs, err)
	}
}

func historyOf(t testing.TB, s store.Reader, q store.HistoryQuery) (string, int) {
	t.Helper()
	if q.Count == 0 {
		q.Count = 100
	}
	vs, total, err := s.History(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range vs {
		out = append(out, fmt.Sprintf("%s/%d", v.ID, v.Version))
	}
	return strings.Join(out, ","), total
}

// testHistory: whole store, type and instance histories, newest first,
// with Since, Before (paging) and ExcludeTypes; deletions included.
func testHistory(t *testing.T, s store.Store) {
	w := &Writer{S: s}
	var seqs []int64
	for _, r := range []Resource{
		{"Patient", "a", `{"resourceType":"Patient","id":"a"}`},  // 1
		{"Patient", "b", `{"resourceType":"Patient","id":"b"}`},  // 2
		{"Patient", "a", `{"resourceType":"Patient","id":"a"}`},  // 3
		{"Organization", "o", `{"resourceType":"Organization"}`}, // 4
		{"Patient", "b", ""}, // 5
		{"Patient", "a", `{"resourceType":"Patient","id":"a"}`},       // 6
		{"Organization", "o", `{"resourceType":"Organization"}`},      // 7
		{"Basic", "x", `{"resourceType":"Basic","id":"x","code":{}}`}, // 8
	} {
		seqs = append(seqs, w.Put(t, r.Type, r.ID, r.Body).Seq)
	}
	for _, c := range []struct {
		name  string
		q     store.HistoryQuery
		want  string
		total int
	}{
		{"system", store.HistoryQuery{}, "x/1,o/2,a/3,b/2,o/1,a/2,b/1,a/1", 8},
		{"system, a page", store.HistoryQuery{Count: 3}, "x/1,o/2,a/3", 8},
		{"system, the next page", store.HistoryQuery{Count: 3, Before: seqs[5]}, "b/2,o/1,a/2", 8},
		{"system, the last page", store.HistoryQuery{Count: 3, Before: seqs[1]}, "a/1", 8},
		{"type", store.HistoryQuery{Type: "Patient"}, "a/3,b/2,a/2,b/1,a/1", 5},
		{"type, paged", store.HistoryQuery{Type: "Patient", Count: 2, Before: seqs[4]}, "a/2,b/1", 5},
		{"instance", store.HistoryQuery{Type: "Patient", ID: "a"}, "a/3,a/2,a/1", 3},
		{"instance with its deletion", store.HistoryQuery{Type: "Patient", ID: "b"}, "b/2,b/1", 2},
		{"instance of another type with the same id", store.HistoryQuery{Type: "Organization", ID: "a"}, "", 0},
		{"unknown instance", store.HistoryQuery{Type: "Patient", ID: "zz"}, "", 0},
		{"since", store.HistoryQuery{Since: Epoch.Add(5 * time.Second)}, "x/1,o/2,a/3", 3},
		{"since, to the microsecond", store.HistoryQuery{Since: Epoch.Add(5*time.Second + time.Microsecond)}, "x/1,o/2", 2},
		{"since, type", store.HistoryQuery{Type: "Patient", Since: Epoch.Add(3 * time.Second)}, "a/3,b/2", 2},
		{"excluded types", store.HistoryQuery{ExcludeTypes: []string{"Organization", "Basic"}}, "a/3,b/2,a/2,b/1,a/1", 5},
		{"excluded types, paged", store.HistoryQuery{ExcludeTypes: []string{"Patient"}, Count: 1}, "x/1", 3},
		{"a negative count is no limit", store.HistoryQuery{Type: "Organization", Count: -1}, "o/2,o/1", 2},
	} {
		got, total := historyOf(t, s, c.q)
		if got != c.want || total != c.total {
			t.Errorf("%s: %s (total %d), want %s (total %d)", c.name, got, total, c.want, c.total)
		}
	}
	vs, _, err := s.History(context.Background(), store.HistoryQuery{Type: "Patient", ID: "b", Count: 10})
	if err != nil || len(vs) != 2 || !vs[0].Deleted || vs[0].Body != nil || vs[0].Method != "DELETE" || vs[1].Deleted ||
		!vs[1].Updated.Equal(Epoch.Add(time.Second)) || vs[1].Seq != seqs[1] {
		t.Errorf("versions of b: %+v %v", vs, err)
	}
}

func observation(id, patient, category string) string {
	return fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"final","category":[{"coding":[{"code":%q}]}],"code":{"coding":[{"system":"http://loinc.org","code":"1-1"}]},"subject":{"reference":"Patient/%s"}}`,
		id, category, patient)
}

// loadConfined writes two patients, their Observations and a Practitioner.
func loadConfined(t *testing.T, w *Writer) {
	w.Put(t, "Patient", "a", `{"resourceType":"Patient","id":"a"}`)
	w.Put(t, "Patient", "b", `{"resourceType":"Patient","id":"b","link":[{"other":{"reference":"Patient/a"},"type":"seealso"}]}`)
	w.Put(t, "Patient", "c", `{"resourceType":"Patient","id":"c"}`)
	w.Put(t, "Practitioner", "p", `{"resourceType":"Practitioner","id":"p"}`)
	for i, o := range []struct{ patient, category string }{
		{"a", "laboratory"}, {"a", "laboratory"}, {"a", "vital-signs"}, {"a", "survey"},
		{"c", "laboratory"}, {"c", "vital-signs"},
	} {
		id := fmt.Sprintf("o%d", i)
		w.Put(t, "Observation", id, observation(id, o.patient, o.category))
	}
	// An Observation of a that a performer links to c as well.
	w.Put(t, "Observation", "shared", `{"resourceType":"Observation","id":"shared","status":"final","code":{},"subject":{"reference":"Patient/a"},"performer":[{"reference":"Patient/c"}]}`)
	// One of a's, deleted: in no compartment any more.
	w.Put(t, "Observation", "gone", observation("gone", "a", "laboratory"))
	w.Put(t, "Observation", "gone", "")
}

// testConfinedSearch: searches confined to a compartment and to
// alternative groups of constraints find exactly the members that match
// one group, counts included.
func testConfinedSearch(t *testing.T, s store.Store) {
	loadConfined(t, &Writer{S: s})
	groups := func(typ string, qs ...string) [][]search.Clause {
		var out [][]search.Clause
		for _, q := range qs {
			v, _ := url.ParseQuery(q)
			cs, err := search.ParseConstraint(typ, v, Now)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, cs)
		}
		return out
	}
	for _, tc := range []struct {
		name, typ, params, compartment string
		alternatives                   [][]search.Clause
		want                           string
	}{
		{"compartment", "Observation", "", "a", nil, "o0,o1,o2,o3,shared"},
		{"compartment through a performer", "Observation", "", "c", nil, "o4,o5,shared"},
		{"compartment and a parameter", "Observation", "category=laboratory", "a", nil, "o0,o1"},
		{"compartment and _id", "Observation", "_id=o0,o4,gone", "a", nil, "o0"},
		{"compartment and _sort", "Observation", "_sort=-category", "a", nil, "o2,o3,o0,o1,shared"},
		{"a patient's compartment holds the patients linking to it", "Patient", "", "a", nil, "a,b"},
		{"a patient alone", "Patient", "", "c", nil, "c"},
		{"a patient by _id", "Patient", "_id=a,c", "a", nil, "a"},
		{"no Practitioner is in a compartment", "Practitioner", "", "a", nil, ""},
		{"an unknown patient", "Observation", "", "zz", nil, ""},
		{"one group", "Observation", "", "", groups("Observation", "category=laboratory"), "o0,o1,o4"},
		{"groups are alternatives", "Observation", "", "a", groups("Observation", "category=laboratory", "category=vital-signs"), "o0,o1,o2"},
		{"clauses of a group are ANDed", "Observation", "", "", groups("Observation", "category=laboratory&subject=Patient/c"), "o4"},
		{"groups and parameters are ANDed", "Observation", "_id=o0,o2,o5", "", groups("Observation", "category=laboratory", "category=vital-signs&subject=Patient/c"), "o0,o5"},
		{"an empty group matches", "Observation", "category=survey", "", [][]search.Clause{{}}, "o3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := query(t, tc.typ, tc.params)
			q.Compartment, q.Alternatives = tc.compartment, tc.alternatives
			got := found(t, s, q)
			if !strings.Contains(tc.params, "_sort") {
				got = sorted(got)
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// testConfinedHistory: histories confined to a compartment show the
// versions that were in it when written, deletions included.
func testConfinedHistory(t *testing.T, s store.Store) {
	w := &Writer{S: s}
	w.Put(t, "Patient", "a", `{"resourceType":"Patient","id":"a"}`)
	w.Put(t, "Observation", "m", observation("m", "c", "laboratory")) // filed under c by mistake
	w.Put(t, "Observation", "m", observation("m", "a", "laboratory")) // moved to a
	w.Put(t, "Observation", "x", observation("x", "a", "survey"))
	w.Put(t, "Observation", "x", "")
	w.Put(t, "AuditEvent", "e", `{"resourceType":"AuditEvent","id":"e","type":{"code":"rest"},"recorded":"2024-01-01T00:00:00Z","agent":[{"requestor":true}],"source":{"observer":{"display":"gw"}},"entity":[{"what":{"reference":"Patient/a"}}]}`)
	for _, tc := range []struct {
		name  string
		q     store.HistoryQuery
		want  string
		total int
	}{
		{"instance, only a's version", store.HistoryQuery{Type: "Observation", ID: "m", Compartment: "a"}, "m/2", 1},
		{"instance, only c's version", store.HistoryQuery{Type: "Observation", ID: "m", Compartment: "c"}, "m/1", 1},
		{"instance of another's resource", store.HistoryQuery{Type: "Patient", ID: "a", Compartment: "c"}, "", 0},
		{"type, the deletion included", store.HistoryQuery{Type: "Observation", Compartment: "a"}, "x/2,x/1,m/2", 3},
		{"type, paged", store.HistoryQuery{Type: "Observation", Compartment: "a", Count: 1}, "x/2", 3},
		{"system", store.HistoryQuery{Compartment: "a"}, "e/1,x/2,x/1,m/2,a/1", 5},
		{"system without AuditEvent", store.HistoryQuery{Compartment: "a", ExcludeTypes: []string{"AuditEvent"}}, "x/2,x/1,m/2,a/1", 4},
		{"system for c", store.HistoryQuery{Compartment: "c"}, "m/1", 1},
		{"since, confined", store.HistoryQuery{Compartment: "a", Since: Epoch.Add(3 * time.Second)}, "e/1,x/2,x/1", 3},
		{"unconfined", store.HistoryQuery{ExcludeTypes: []string{"AuditEvent", "Patient"}}, "x/2,x/1,m/2,m/1", 4},
	} {
		got, total := historyOf(t, s, tc.q)
		if got != tc.want || total != tc.total {
			t.Errorf("%s: %s (total %d), want %s (total %d)", tc.name, got, total, tc.want, tc.total)
		}
	}
}

// testAbsoluteReferences: a reference to another server's Patient/a
// matches neither a search for this server's Patient/a nor its
// compartment.
func testAbsoluteReferences(t *testing.T, s store.Store) {
	w := &Writer{S: s}
	w.Put(t, "Patient", "a", `{"resourceType":"Patient","id":"a"}`)
	w.Put(t, "Observation", "own", observation("own", "a", "laboratory"))
	elsewhere := strings.Replace(observation("far", "a", "laboratory"), `"Patient/a"`, `"http://other.example/fhir/Patient/a"`, 1)
	w.Put(t, "Observation", "far", elsewhere)
	w.Put(t, "Observation", "far", elsewhere)
	for _, tc := range []struct{ params, compartment, want string }{
		{"subject=Patient/a", "", "own"},
		{"subject=http://other.example/fhir/Patient/a", "", "far"},
		{"", "a", "own"},
	} {
		q := query(t, "Observation", tc.params)
		q.Compartment = tc.compartment
		if got := found(t, s, q); got != tc.want {
			t.Errorf("%q in %q: %v, want %s", tc.params, tc.compartment, got, tc.want)
		}
	}
	if got, _ := historyOf(t, s, store.HistoryQuery{Type: "Observation", Compartment: "a"}); got != "own/1" {
		t.Errorf("history of a's compartment: %s, want own/1", got)
	}
}

// Synthea returns the resources of the Synthea test Bundles
// (builtin/fhir/testdata/synthea), their transaction references
// ("urn:uuid:…") rewritten to the ids they get.
func Synthea(t testing.TB) []Resource {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "..", "testdata", "synthea")
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("test data in %s: %v", dir, err)
	}
	var out []Resource
	n := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var b struct {
			Entry []struct {
				FullURL  string          `json:"fullUrl"`
				Resource json.RawMessage `json:"resource"`
				Request  struct{ URL string }
			} `json:"entry"`
		}
		if err := json.Unmarshal(data, &b); err != nil {
			t.Fatal(err)
		}
		refs := map[string]string{}
		for i, e := range b.Entry {
			ref := e.Request.URL
			if !strings.Contains(ref, "/") {
				n++
				ref = fmt.Sprintf("%s/s%d", ref, n)
			}
			b.Entry[i].Request.URL = ref
			if e.FullURL != "" {
				refs[e.FullURL] = ref
			}
		}
		var pairs []string
		for from, to := range refs {
			pairs = append(pairs, `"`+from+`"`, `"`+to+`"`)
		}
		r := strings.NewReplacer(pairs...)
		for _, e := range b.Entry {
			typ, id, _ := strings.Cut(e.Request.URL, "/")
			out = append(out, Resource{typ, id, r.Replace(string(e.Resource))})
		}
	}
	return out
}

// testCompartmentMembership: for every patient of the Synthea test data
// and every type, a compartment search finds exactly the resources whose
// index entries name the patient (search.Index's Compartments).
func testCompartmentMembership(t *testing.T, s store.Store) {
	rs := Synthea(t)
	w := &Writer{S: s}
	w.PutAll(t, rs)
	loadConfined(t, w)
	want := map[string]map[string][]string{} // patient -> type -> ids
	current := map[string]Resource{}
	for _, r := range append(rs, confinedCurrent()...) {
		current[r.Type+"/"+r.ID] = r
	}
	delete(current, "Observation/gone")
	for _, r := range current {
		idx, err := Index(r.Type, r.ID, r.Body)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range idx.Compartments {
			if want[p] == nil {
				want[p] = map[string][]string{}
			}
			want[p][r.Type] = append(want[p][r.Type], r.ID)
		}
	}
	if len(want) < 5 {
		t.Fatalf("only %d patients", len(want))
	}
	checked := 0
	for p := range want {
		for _, typ := range append(slices.Collect(maps.Keys(spec.PatientCompartment)), "Patient", "Practitioner") {
			q := query(t, typ, "")
			q.Compartment = p
			got := sorted(found(t, s, q))
			ids := slices.Clone(want[p][typ])
			slices.Sort(ids)
			if got != strings.Join(ids, ",") {
				t.Errorf("Patient/%s/%s: %d found, %d in the compartment", p, typ, len(strings.Split(got, ",")), len(ids))
			}
			checked += len(ids)
		}
	}
	if checked < 700 {
		t.Errorf("only %d members checked", checked)
	}
}

// confinedCurrent are the current resources loadConfined writes.
func confinedCurrent() []Resource {
	out := []Resource{
		{"Patient", "a", `{"resourceType":"Patient","id":"a"}`},
		{"Patient", "b", `{"resourceType":"Patient","id":"b","link":[{"other":{"reference":"Patient/a"},"type":"seealso"}]}`},
		{"Patient", "c", `{"resourceType":"Patient","id":"c"}`},
		{"Practitioner", "p", `{"resourceType":"Practitioner","id":"p"}`},
		{"Observation", "shared", `{"resourceType":"Observation","id":"shared","status":"final","code":{},"subject":{"reference":"Patient/a"},"performer":[{"reference":"Patient/c"}]}`},
	}
	for i, o := range []struct{ patient, category string }{
		{"a", "laboratory"}, {"a", "laboratory"}, {"a", "vital-signs"}, {"a", "survey"},
		{"c", "laboratory"}, {"c", "vital-signs"},
	} {
		id := fmt.Sprintf("o%d", i)
		out = append(out, Resource{"Observation", id, observation(id, o.patient, o.category)})
	}
	return out
}
