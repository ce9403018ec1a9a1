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

// identifier:of-type finds identifiers by type and value; a store indexed
// before schema 4 gets the rows it needs when opened.
func TestOfTypeSearch(t *testing.T) {
	ctx := context.Background()
	const mr = `{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]},"system":"http://h","value":"%s"}`
	for _, migrated := range []bool{false, true} {
		t.Run(fmt.Sprintf("migrated=%v", migrated), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.db")
			s, err := Open(ctx, path, Options{Sync: "normal"})
			if err != nil {
				t.Fatal(err)
			}
			putJSON(t, s, "Patient", "a", 1, `{"resourceType":"Patient","id":"a","identifier":[`+fmt.Sprintf(mr, "123")+`]}`)
			putJSON(t, s, "Patient", "b", 1, `{"resourceType":"Patient","id":"b","identifier":[{"system":"http://h","value":"123"}]}`)
			putJSON(t, s, "Patient", "c", 1, `{"resourceType":"Patient","id":"c","identifier":[`+fmt.Sprintf(mr, "456")+`]}`)
			putJSON(t, s, "Patient", "c", 2, "")
			if migrated {
				// What schema 3 stored: no of-type rows.
				for _, q := range []string{`DELETE FROM sp_token WHERE p LIKE '%:of-type'`, `PRAGMA user_version = 3`} {
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
			for _, tc := range []struct{ value, want string }{
				{"http://terminology.hl7.org/CodeSystem/v2-0203|MR|123", "a"},
				{"|MR|123", "a"}, // any system
				{"http://other|MR|123", ""},
				{"http://terminology.hl7.org/CodeSystem/v2-0203|SS|123", ""},
				{"http://terminology.hl7.org/CodeSystem/v2-0203|MR|456", ""}, // deleted
			} {
				q, err := search.Parse("Patient", url.Values{"identifier:of-type": {tc.value}}, search.Options{})
				if err != nil {
					t.Fatal(err)
				}
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
					t.Errorf("%s: %v, want %q", tc.value, got, tc.want)
				}
			}
			var v int
			if err := s.write.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil || v != schemaVersion {
				t.Errorf("schema version %d %v", v, err)
			}
		})
	}
}
