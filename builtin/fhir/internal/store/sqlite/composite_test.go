package sqlite

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
)

// A store indexed before schema 5 gets the rows of composite parameters
// when opened.
func TestCompositeMigration(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := Open(ctx, path, Options{Sync: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	const bp = `{"resourceType":"Observation","id":"%s","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},
		"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":%d}},
		{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueQuantity":{"value":%d}}]}`
	putJSON(t, s, "Observation", "a", 1, fmt.Sprintf(bp, "a", 120, 80))
	putJSON(t, s, "Observation", "b", 1, fmt.Sprintf(bp, "b", 140, 95))
	putJSON(t, s, "Observation", "b", 2, "")
	// What schema 4 stored: no composite rows.
	for _, q := range []string{`DELETE FROM sp_quantity WHERE instr(p, char(31)) > 0`, `PRAGMA user_version = 4`} {
		if _, err := s.write.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	if got := compositeIDs(t, s, "8480-6$gt100"); got != "" {
		t.Fatalf("composite rows left: %q", got)
	}
	s.Close()
	if s, err = Open(ctx, path, Options{Sync: "normal"}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, c := range []struct{ value, want string }{
		{"8480-6$gt100", "a"}, // b is deleted
		{"8462-4$lt90", "a"},
		{"8462-4$gt100", ""},
	} {
		if got := compositeIDs(t, s, c.value); got != c.want {
			t.Errorf("%s: %q, want %q", c.value, got, c.want)
		}
	}
	var v int
	if err := s.write.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil || v != schemaVersion {
		t.Errorf("schema version %d %v", v, err)
	}
}

func compositeIDs(t *testing.T, s *Store, value string) string {
	t.Helper()
	q, err := search.Parse("Observation", url.Values{"component-code-value-quantity": {value}}, search.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := s.Search(context.Background(), q, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	vs, _ := s.Fetch(context.Background(), ms)
	var got []string
	for _, v := range vs {
		got = append(got, v.ID)
	}
	return strings.Join(got, ",")
}

// Chains, _has and composites are driven by the index tables: no step of
// their plan scans a table, nor every resource of a type.
func TestChainPlan(t *testing.T) {
	s, err := Open(context.Background(), ":memory:", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, c := range []struct{ typ, params string }{
		{"Observation", "patient.identifier=http://h|1"},
		{"Observation", "subject:Patient.name=peter&code=1-1"},
		{"Observation", "subject.name=peter"},
		{"DiagnosticReport", "subject:Patient.general-practitioner.name=who"},
		{"Patient", "_has:Observation:patient:code=1234-5"},
		{"Patient", "_has:Observation:patient:_has:AuditEvent:entity:agent=Practitioner/1"},
		{"Patient", "_has:Observation:patient:code=1234-5&gender=female"},
		{"Observation", "code-value-quantity=http://loinc.org|8480-6$gt100"},
		{"Observation", "component-code-value-quantity=8480-6$gt100&status=final"},
		{"MolecularSequence", "chromosome-variant-coordinate=1$ge2$le3&status=x"},
	} {
		v, _ := url.ParseQuery(c.params)
		q, err := search.Parse(c.typ, v, search.Options{Lenient: true})
		if err != nil {
			t.Fatal(err)
		}
		plan := explain(t, s, q)
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN ") && !strings.HasPrefix(step, "SCAN CONSTANT") || strings.HasSuffix(step, "(type=?)") {
				t.Errorf("%s?%s scans: %s", c.typ, c.params, strings.Join(plan, "; "))
				break
			}
		}
	}
}
