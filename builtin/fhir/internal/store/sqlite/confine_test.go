package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
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

// loadConfined writes two patients, their Observations and a Practitioner.
func loadConfined(t *testing.T, s *Store) {
	putJSON(t, s, "Patient", "a", 1, `{"resourceType":"Patient","id":"a"}`)
	putJSON(t, s, "Patient", "b", 1, `{"resourceType":"Patient","id":"b","link":[{"other":{"reference":"Patient/a"},"type":"seealso"}]}`)
	putJSON(t, s, "Patient", "c", 1, `{"resourceType":"Patient","id":"c"}`)
	putJSON(t, s, "Practitioner", "p", 1, `{"resourceType":"Practitioner","id":"p"}`)
	for i, o := range []struct{ patient, category string }{
		{"a", "laboratory"}, {"a", "laboratory"}, {"a", "vital-signs"}, {"a", "survey"},
		{"c", "laboratory"}, {"c", "vital-signs"},
	} {
		id := fmt.Sprintf("o%d", i)
		putJSON(t, s, "Observation", id, 1, obs(id, o.patient, o.category))
	}
	// An Observation of a that a performer links to c as well.
	putJSON(t, s, "Observation", "shared", 1, `{"resourceType":"Observation","id":"shared","status":"final","code":{},"subject":{"reference":"Patient/a"},"performer":[{"reference":"Patient/c"}]}`)
}

func ids(t *testing.T, s *Store, q *search.Query) []string {
	t.Helper()
	ms, err := s.Search(context.Background(), q, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := s.Fetch(context.Background(), ms)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range vs {
		out = append(out, v.ID)
	}
	slices.Sort(out)
	n, err := s.Count(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(out) {
		t.Errorf("Count %d, Search found %d", n, len(out))
	}
	return out
}

// Searches confined to a compartment and to alternative groups of
// constraints find exactly the members that match one group, counts
// included.
func TestConfinedSearch(t *testing.T) {
	s, err := Open(context.Background(), ":memory:", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	loadConfined(t, s)
	groups := func(typ string, qs ...string) [][]search.Clause {
		var out [][]search.Clause
		for _, q := range qs {
			v, _ := url.ParseQuery(q)
			cs, err := search.ParseConstraint(typ, v, time.Now())
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
		{"compartment and _id", "Observation", "_id=o0,o4", "a", nil, "o0"},
		{"a patient's compartment holds the patients linking to it", "Patient", "", "a", nil, "a,b"},
		{"a patient alone", "Patient", "", "c", nil, "c"},
		{"no Practitioner is in a compartment", "Practitioner", "", "a", nil, ""},
		{"one group", "Observation", "", "", groups("Observation", "category=laboratory"), "o0,o1,o4"},
		{"groups are alternatives", "Observation", "", "a", groups("Observation", "category=laboratory", "category=vital-signs"), "o0,o1,o2"},
		{"clauses of a group are ANDed", "Observation", "", "", groups("Observation", "category=laboratory&subject=Patient/c"), "o4"},
		{"groups and parameters are ANDed", "Observation", "_id=o0,o2,o5", "", groups("Observation", "category=laboratory", "category=vital-signs&subject=Patient/c"), "o0,o5"},
		{"an empty group matches", "Observation", "category=survey", "", [][]search.Clause{{}}, "o3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, _ := url.ParseQuery(tc.params)
			q, err := search.Parse(tc.typ, v, search.Options{})
			if err != nil {
				t.Fatal(err)
			}
			q.Compartment, q.Alternatives = tc.compartment, tc.alternatives
			if got := strings.Join(ids(t, s, q), ","); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
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
		b := buildSearch(q)
		rows, err := s.read.Query(`EXPLAIN QUERY PLAN SELECT r.rid, r.version FROM resources r WHERE `+b.where.String()+b.orderBy()+` LIMIT 10`, b.args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		for _, step := range plan {
			// A scan of a table, or of every resource of the type.
			if strings.HasPrefix(step, "SCAN ") || strings.HasSuffix(step, "(type=?)") {
				t.Errorf("%s?%s in a compartment scans: %s", c.typ, c.params, strings.Join(plan, "; "))
			}
		}
	}
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

// Histories confined to a compartment show the versions that were in it
// when written, deletions included; a whole-store history can leave types
// out.
func TestConfinedHistory(t *testing.T) {
	for _, migrated := range []bool{false, true} {
		t.Run(fmt.Sprintf("migrated=%v", migrated), func(t *testing.T) {
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
			if migrated {
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
		})
	}
}

// loadSynthea writes the Synthea test Bundles' resources, their
// transaction references ("urn:uuid:…") rewritten to the ids they get.
func loadSynthea(t *testing.T, s *Store) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "..", "testdata", "synthea", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("test data: %v", err)
	}
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
		for _, e := range b.Entry {
			body := string(e.Resource)
			for from, to := range refs {
				body = strings.ReplaceAll(body, `"`+from+`"`, `"`+to+`"`)
			}
			typ, id, _ := strings.Cut(e.Request.URL, "/")
			putJSON(t, s, typ, id, 1, body)
		}
	}
}

// The members a compartment search finds through references are exactly
// the compartment table's, for every patient and type of the test data.
func TestCompartmentMembership(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, ":memory:", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	loadSynthea(t, s)
	loadConfined(t, s)
	patients := map[string]bool{}
	rows, err := s.read.Query(`SELECT DISTINCT patient FROM compartment`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var p string
		rows.Scan(&p)
		patients[p] = true
	}
	rows.Close()
	if len(patients) < 5 {
		t.Fatalf("only %d patients", len(patients))
	}
	checked := 0
	for p := range patients {
		for _, typ := range append(slices.Collect(maps.Keys(spec.PatientCompartment)), "Patient", "Practitioner") {
			var want int
			if err := s.read.QueryRow(`SELECT count(*) FROM compartment c JOIN resources r ON r.rid = c.rid
				WHERE c.patient = ? AND r.type = ? AND r.deleted = 0`, p, typ).Scan(&want); err != nil {
				t.Fatal(err)
			}
			q, err := search.Parse(typ, nil, search.Options{})
			if err != nil {
				t.Fatal(err)
			}
			q.Compartment = p
			got, err := s.Count(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("Patient/%s/%s: %d, the compartment table holds %d", p, typ, got, want)
			}
			checked += want
		}
	}
	if checked < 700 {
		t.Errorf("only %d members checked", checked)
	}
}

// TestAbsoluteReferencesStayOutside: a reference to another server's
// Patient/a matches neither a search for this server's Patient/a nor its
// compartment; a store indexed before schema 3 is mended when opened.
func TestAbsoluteReferencesStayOutside(t *testing.T) {
	ctx := context.Background()
	for _, migrated := range []bool{false, true} {
		t.Run(fmt.Sprintf("migrated=%v", migrated), func(t *testing.T) {
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
			if migrated {
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
		})
	}
}
