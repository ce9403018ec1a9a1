package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// putJSON writes version of a resource given as JSON, indexed as the
// server indexes it (so compartments follow from its references), or a
// deletion when body is "".
func putJSON(t *testing.T, s *Store, typ, id string, version int64, body string) {
	t.Helper()
	err := s.Update(context.Background(), func(tx store.Tx) error {
		v := &store.Version{Type: typ, ID: id, Version: version, Updated: time.Unix(1700000000+version, 0), Method: "PUT"}
		if body == "" {
			v.Deleted, v.Method = true, "DELETE"
			return tx.Put(context.Background(), v, nil)
		}
		var tree any
		if err := json.Unmarshal([]byte(body), &tree); err != nil {
			return err
		}
		v.Body = []byte(body)
		return tx.Put(context.Background(), v, search.Index(typ, id, tree))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func obs(id, patient, category string) string {
	return fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"final","category":[{"coding":[{"code":%q}]}],"code":{"coding":[{"system":"http://loinc.org","code":"1-1"}]},"subject":{"reference":"Patient/%s"}}`,
		id, category, patient)
}

// A search confined to a compartment is driven by an index, never by a
// scan of every resource of the type.
func TestConfinedSearchPlan(t *testing.T) {
	s, err := Open(context.Background(), ":memory:", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, c := range []struct {
		typ, params string
	}{
		{"Observation", "code=http://loinc.org|1-1"},
		{"Observation", ""},
		{"Observation", "_id=x&category=laboratory"},
		{"Patient", ""},
		{"Encounter", "date=ge2020"},
	} {
		v, _ := url.ParseQuery(c.params)
		q, err := search.Parse(c.typ, v, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		q.Compartment = "a"
		plan := explain(t, s, q)
		for _, step := range plan {
			// A scan of a table, or of every resource of the type.
			if strings.HasPrefix(step, "SCAN ") || strings.HasSuffix(step, "(type=?)") {
				t.Errorf("%s?%s in a compartment scans: %s", c.typ, c.params, strings.Join(plan, "; "))
			}
		}
	}
}

// explain returns the steps of the plan of the search q.
func explain(t *testing.T, s *Store, q *search.Query) []string {
	t.Helper()
	b := buildSearch(q)
	rows, err := s.read.Query(`EXPLAIN QUERY PLAN SELECT r.rid, r.version FROM resources r WHERE `+b.where.String()+b.orderBy()+` LIMIT 10`, b.args...)
	if err != nil {
		t.Fatalf("%s: %v", b.where.String(), err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	return plan
}

func historyIDs(t *testing.T, s *Store, q store.HistoryQuery) (string, int) {
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

// A store written by schema 1 (without history_compartment) is migrated
// so that histories confined to a compartment show the versions that were
// in it when written, deletions included (storetest checks the same on a
// new store).
func TestConfinedHistory(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "h.db")
	s, err := Open(ctx, path, Options{Sync: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	putJSON(t, s, "Patient", "a", 1, `{"resourceType":"Patient","id":"a"}`)
	putJSON(t, s, "Observation", "m", 1, obs("m", "c", "laboratory")) // filed under c by mistake
	putJSON(t, s, "Observation", "m", 2, obs("m", "a", "laboratory")) // moved to a
	putJSON(t, s, "Observation", "x", 1, obs("x", "a", "survey"))
	putJSON(t, s, "Observation", "x", 2, "")
	putJSON(t, s, "AuditEvent", "e", 1, `{"resourceType":"AuditEvent","id":"e","type":{"code":"rest"},"recorded":"2024-01-01T00:00:00Z","agent":[{"requestor":true}],"source":{"observer":{"display":"gw"}},"entity":[{"what":{"reference":"Patient/a"}}]}`)
	// A store written by schema 1 had no history_compartment.
	if _, err := s.write.Exec(`DROP TABLE history_compartment`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.write.Exec(`PRAGMA user_version = 1`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(ctx, path, Options{Sync: "normal"}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
		{"unconfined", store.HistoryQuery{ExcludeTypes: []string{"AuditEvent", "Patient"}}, "x/2,x/1,m/2,m/1", 4},
	} {
		got, total := historyIDs(t, s, tc.q)
		if got != tc.want || total != tc.total {
			t.Errorf("%s: %s (total %d), want %s (total %d)", tc.name, got, total, tc.want, tc.total)
		}
	}
	var v int
	if err := s.write.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil || v != schemaVersion {
		t.Errorf("schema version %d %v", v, err)
	}
}

// TestAbsoluteReferencesStayOutside: a store indexed before schema 3, where
// a reference to another server's Patient/a matched this server's
// Patient/a and joined its compartment, is mended when opened (storetest
// checks a new store).
func TestAbsoluteReferencesStayOutside(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := Open(ctx, path, Options{Sync: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	putJSON(t, s, "Patient", "a", 1, `{"resourceType":"Patient","id":"a"}`)
	putJSON(t, s, "Observation", "own", 1, obs("own", "a", "laboratory"))
	elsewhere := strings.Replace(obs("far", "a", "laboratory"), `"Patient/a"`, `"http://other.example/fhir/Patient/a"`, 1)
	putJSON(t, s, "Observation", "far", 1, elsewhere)
	putJSON(t, s, "Observation", "far", 2, elsewhere)
	// What an earlier schema filed: the URL's type and id,
	// and the compartment they made.
	for _, q := range []string{
		`UPDATE sp_ref SET ttype = 'Patient', tid = 'a' WHERE url = 'http://other.example/fhir/Patient/a'`,
		`INSERT INTO compartment (rid, patient) SELECT rid, 'a' FROM resources WHERE id = 'far'`,
		`INSERT INTO history_compartment (patient, seq) SELECT 'a', h.seq FROM history h JOIN resources r ON r.rid = h.rid WHERE r.id = 'far'`,
		`PRAGMA user_version = 2`,
	} {
		if _, err := s.write.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	s.Close()
	if s, err = Open(ctx, path, Options{Sync: "normal"}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct{ params, compartment, want string }{
		{"subject=Patient/a", "", "own"},
		{"subject=http://other.example/fhir/Patient/a", "", "far"},
		{"", "a", "own"},
	} {
		v, _ := url.ParseQuery(tc.params)
		q, err := search.Parse("Observation", v, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		q.Compartment = tc.compartment
		ms, err := s.Search(ctx, q, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		vs, _ := s.Fetch(ctx, ms)
		var got []string
		for _, v := range vs {
			got = append(got, v.ID)
		}
		if strings.Join(got, ",") != tc.want {
			t.Errorf("%q in %q: %v, want %s", tc.params, tc.compartment, got, tc.want)
		}
	}
	if got, _ := historyIDs(t, s, store.HistoryQuery{Type: "Observation", Compartment: "a"}); got != "own/1" {
		t.Errorf("history of a's compartment: %s, want own/1", got)
	}
}
