package postgres

import (
	"context"
	"fmt"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store/storetest"
	"github.com/omnigate/omnigate/internal/pgtest"
)

// Migration 0003 adds the rows of composite parameters to the resources a
// database held before it.
func TestCompositeRowsMigration(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	s, err := Open(ctx, Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	const bp = `{"resourceType":"Observation","id":"%s","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},
		"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":%d}},
		{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueQuantity":{"value":%d}}]}`
	w := &storetest.Writer{S: s}
	w.Put(t, "Observation", "a", fmt.Sprintf(bp, "a", 120, 80))
	w.Put(t, "Observation", "b", fmt.Sprintf(bp, "b", 140, 95))
	w.Put(t, "Observation", "b", "")
	s.Close()
	// What the database held before 0003.
	exec(t, url, `DELETE FROM sp_quantity WHERE strpos(p, chr(31)) > 0`)
	exec(t, url, `DELETE FROM schema_migrations WHERE version = 3`)
	if names, err := Migrate(ctx, Options{URL: url}, false); err != nil || len(names) != 1 {
		t.Fatalf("migrate: %v %v", names, err)
	}
	if s, err = Open(ctx, Options{URL: url, NoMigrate: true}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, c := range []struct{ value, want string }{
		{"8480-6$gt100", "a"}, // b is deleted
		{"8462-4$lt90", "a"},
		{"8462-4$gt100", ""},
	} {
		q := storetest.SearchQuery(t, "Observation", "component-code-value-quantity="+c.value)
		if got := storetest.Found(t, s, q); got != c.want {
			t.Errorf("%s: %q, want %q", c.value, got, c.want)
		}
	}
}
