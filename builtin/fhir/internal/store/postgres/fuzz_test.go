package postgres

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/sqlite"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/storetest"
)

var fuzzStores struct {
	once   sync.Once
	pg, sq store.Store
}

// FuzzSearchAgainstSQLite runs searches built from untrusted query
// strings on both stores, loaded with the same resources: they find the
// same resources in the same order, with the same counts, and neither
// fails where the other does not.
func FuzzSearchAgainstSQLite(f *testing.F) {
	for _, seed := range []struct{ typ, query string }{
		{"Patient", "name=jos&_sort=-birthdate"},
		{"Patient", "family:exact=Smith,Zed&gender:not=male"},
		{"Patient", "family:contains=%00mith"},
		{"Patient", "birthdate=ap2000&_sort=family,-_id"},
		{"Patient", "identifier=urn:nul|a%00b"},
		{"Patient", "_lastUpdated=gt2024-06-01T12:00:03Z&_sort=_lastUpdated"},
		{"Patient", "active:missing=true&name=%FF"},
		{"Observation", "code=http://loinc.org|1234-5&value-quantity=le7||mg/dL"},
		{"Observation", "subject=Patient/p1,http://other.example/fhir/Patient/p1&_sort=-date"},
		{"Observation", "date=sa2020-01-31&date=eb2022&code:text=gluc"},
		{"RiskAssessment", "probability=ap0.75,ne0.8"},
		{"ValueSet", "url:above=http://example.org/fhir/ValueSet/a/b/c&_sort=url"},
		{"ValueSet", "url:below=http://example.org/%FF"},
		{"Observation", "_id:not=o1&performer:missing=false"},
	} {
		f.Add(seed.typ, seed.query)
	}
	// The stores serve the whole run, opened by its first input.
	dir := f.TempDir()
	f.Cleanup(func() {
		if fuzzStores.pg != nil {
			fuzzStores.pg.Close()
			fuzzStores.sq.Close()
		}
	})
	f.Fuzz(func(t *testing.T, typ, query string) {
		fuzzStores.once.Do(func() {
			ctx := context.Background()
			sq, err := sqlite.Open(ctx, filepath.Join(dir, "s.db"), sqlite.Options{Sync: "normal"})
			if err != nil {
				t.Fatal(err)
			}
			srv, err := pgtestShared(ctx)
			if err != nil {
				t.Fatal(err)
			}
			name, err := srv.CreateDatabase(ctx)
			if err != nil {
				t.Fatal(err)
			}
			pg, err := Open(ctx, Options{URL: srv.URL(name)})
			if err != nil {
				t.Fatal(err)
			}
			storetest.LoadSearchData(t, sq)
			storetest.LoadSearchData(t, pg)
			fuzzStores.sq, fuzzStores.pg = sq, pg
		})
		if fuzzStores.pg == nil {
			t.Skip("stores not opened")
		}
		switch typ {
		case "Patient", "Observation", "RiskAssessment", "ValueSet", "Practitioner":
		default:
			return
		}
		v, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		q, err := search.Parse(typ, v, search.Options{Now: storetest.Now})
		if err != nil {
			return
		}
		ctx := context.Background()
		var got [2]string
		var errs [2]error
		for i, s := range []store.Store{fuzzStores.sq, fuzzStores.pg} {
			ms, err := s.Search(ctx, q, 0, 100)
			if err != nil {
				errs[i] = err
				continue
			}
			n, err := s.Count(ctx, q)
			if err != nil {
				errs[i] = err
				continue
			}
			vs, err := s.Fetch(ctx, ms)
			if err != nil {
				errs[i] = err
				continue
			}
			var ids []string
			for _, v := range vs {
				ids = append(ids, v.ID)
			}
			got[i] = strings.Join(ids, ",") + " count " + strconv.Itoa(n)
		}
		if (errs[0] == nil) != (errs[1] == nil) {
			t.Fatalf("%s?%s: SQLite error %v, PostgreSQL error %v", typ, query, errs[0], errs[1])
		}
		if errors.Is(errs[1], context.DeadlineExceeded) {
			t.Fatalf("%s?%s: %v", typ, query, errs[1])
		}
		if got[0] != got[1] {
			t.Errorf("%s?%s: SQLite found %s, PostgreSQL %s", typ, query, got[0], got[1])
		}
	})
}

// FuzzRedact: the password of a URL never shows in its redacted form.
func FuzzRedact(f *testing.F) {
	f.Add("omni", "s3cret-pw", "db.example:5432", "fhir")
	f.Add("o:mni", "p@ss/w?rd#x", "[::1]:5432", "f/h")
	f.Add("", "only-a-password", "h", "")
	f.Fuzz(func(t *testing.T, user, password, host, db string) {
		u := (&url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: host, Path: "/" + db}).String()
		out := Redact(u)
		// A password that is part of the rest of the URL cannot be told
		// apart from it.
		rest := strings.Replace(u, url.UserPassword(user, password).String(), "", 1)
		enc := url.UserPassword("", password).String()[1:]
		if len(password) >= 6 && !strings.Contains(rest, password) && !strings.Contains(rest, enc) &&
			(strings.Contains(out, password) || strings.Contains(out, enc)) {
			t.Errorf("Redact(%q) = %q shows the password", u, out)
		}
		Redact(user + password + host + db) // any string: no panic
	})
}
