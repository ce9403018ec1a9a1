package fhir

import (
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
)

func join(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// TestSystemSearch: [base]?_type=… searches several types with the
// parameters they share, pages across them, and under a policy sees what a
// search of each type would.
func TestSystemSearch(t *testing.T) {
	f := readOnlyFixture(t)
	lastUpdated := func(ref string) string {
		r := do(t, f.h, "GET", "/fhir/R4/"+ref, nil)
		mustStatus(t, r, 200)
		return r.json(t)["meta"].(map[string]any)["lastUpdated"].(string)
	}
	// The Bundles were loaded in the order 85, 355, 888, each in one
	// transaction (one lastUpdated).
	t355 := lastUpdated("Patient/355")
	for _, tc := range []struct {
		name, method, path, form string
		want                     []string
	}{
		{"two types", "GET", "/fhir/R4?_type=Patient,Observation&_count=1000", "", join(f.all("Patient"), f.all("Observation"))},
		{"_type repeated", "GET", "/fhir/R4?_type=Patient&_type=Observation&_count=1000", "", join(f.all("Patient"), f.all("Observation"))},
		{"_lastUpdated=gt", "GET", "/fhir/R4?_type=Patient,Observation&_lastUpdated=gt" + url.QueryEscape(t355) + "&_count=1000", "",
			join(f.members("888", "Patient"), f.members("888", "Observation"))},
		{"_lastUpdated=ge", "GET", "/fhir/R4?_type=Patient,Observation&_lastUpdated=ge" + url.QueryEscape(t355) + "&_count=1000", "",
			join(f.members("355", "Patient"), f.members("355", "Observation"), f.members("888", "Patient"))},
		{"POST _search", "POST", "/fhir/R4/_search", "_type=Patient,Observation&_count=1000", join(f.all("Patient"), f.all("Observation"))},
		{"a parameter both types define", "GET", "/fhir/R4?_type=Observation,Condition&patient=Patient/85&_count=1000", "",
			join(f.members("85", "Observation"), f.members("85", "Condition"))},
		{"every type, _id", "GET", "/fhir/R4?_id=85,355", "", []string{"Patient/355", "Patient/85"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body any
			var hdr []string
			if tc.form != "" {
				body, hdr = tc.form, []string{"Content-Type", "application/x-www-form-urlencoded"}
			}
			r := do(t, f.h, tc.method, tc.path, body, hdr...)
			mustStatus(t, r, 200)
			s := readSearchset(t, r)
			sameRefs(t, tc.path, s.matches, tc.want)
			if s.total != len(tc.want) {
				t.Errorf("total %d, want %d", s.total, len(tc.want))
			}
		})
	}
	t.Run("paging across types", func(t *testing.T) {
		s := pages(t, f.h, "/fhir/R4?_type=Observation,Condition&_count=40", 40)
		sameRefs(t, "pages", s.matches, join(f.all("Observation"), f.all("Condition")))
		if s.total != len(s.matches) {
			t.Errorf("total %d", s.total)
		}
	})
	t.Run("paging without snapshots", func(t *testing.T) {
		zero := 0
		h := newTestServer(t, func(c *Config) { c.PageSnapshots = &zero; c.SchemaValidation = new(bool) })
		mustStatus(t, do(t, h, "POST", "/fhir/R4", sharedExample(t, "carin_bundle_patient_888.json")), 200)
		s := pages(t, h, "/fhir/R4?_type=ExplanationOfBenefit,Coverage,Patient&_count=2", 2)
		if len(s.matches) != 7 || s.total != 7 {
			t.Errorf("%d matches, total %d; the Bundle has 7", len(s.matches), s.total)
		}
	})
	t.Run("_summary=count and _include", func(t *testing.T) {
		r := do(t, f.h, "GET", "/fhir/R4?_type=Observation,Condition&_summary=count", nil)
		mustStatus(t, r, 200)
		if s := readSearchset(t, r); s.total != len(f.all("Observation"))+len(f.all("Condition")) {
			t.Errorf("count %d", s.total)
		}
		r = do(t, f.h, "GET", "/fhir/R4?_type=Observation,Condition&patient=85&_include=Observation:subject&_count=1000", nil)
		mustStatus(t, r, 200)
		sameRefs(t, "included", readSearchset(t, r).included, []string{"Patient/85"})
	})
	t.Run("refused parameters", func(t *testing.T) {
		for _, c := range []struct{ path, want string }{
			{"/fhir/R4?_type=Patient,Observation&name=x", "not defined for Observation"},
			{"/fhir/R4?name=x", "common to all"},
			{"/fhir/R4?_type=Patient,Observation&_sort=_id", "_sort"},
			{"/fhir/R4?_type=Nothing", "Nothing"},
			{"/fhir/R4?_type=", "no resource type"},
		} {
			r := do(t, f.h, "GET", c.path, nil)
			mustStatus(t, r, 400)
			if _, d := outcomeOf(t, r); !strings.Contains(d, c.want) {
				t.Errorf("%s: %q, want it to mention %q", c.path, d, c.want)
			}
		}
	})
	t.Run("patient 85", func(t *testing.T) {
		r := do(t, as(f.h, patient85), "GET", "/fhir/R4?_type=Patient,Observation,Practitioner&_count=1000", nil)
		mustStatus(t, r, 200)
		sameRefs(t, "what 85 may search", readSearchset(t, r).matches,
			join(f.members("85", "Patient"), f.members("85", "Observation"), f.all("Practitioner")))
		f.noLeak(t, "system search", r.body)
		// Every type: the compartment and the readable types.
		s := pages(t, as(f.h, patient85), "/fhir/R4?_count=200", 200)
		var want []string
		for _, t := range readable {
			want = append(want, f.all(t)...)
		}
		sameRefs(t, "every type", s.matches, join(f.members("85", ""), want))
		mustStatus(t, do(t, as(f.h, patient85), "GET", "/fhir/R4?_type=Patient,Device", nil), 403)
		mustStatus(t, do(t, as(f.h, nobody), "GET", "/fhir/R4?_type=Patient", nil), 403)
		mustStatus(t, do(t, as(f.h, nobody), "GET", "/fhir/R4", nil), 403)
	})
}

// TestOfTypeSearch: identifier:of-type finds each patient of the example
// Bundles by each of its typed identifiers.
func TestOfTypeSearch(t *testing.T) {
	f := readOnlyFixture(t)
	type key struct{ system, code, value string }
	owners := map[key][]string{}
	for _, p := range []string{"85", "355", "888"} {
		for _, r := range f.res[p] {
			if r["resourceType"] != "Patient" {
				continue
			}
			ids, _ := r["identifier"].([]any)
			for _, raw := range ids {
				id := raw.(map[string]any)
				typ, _ := id["type"].(map[string]any)
				cs, _ := typ["coding"].([]any)
				for _, c := range cs {
					cm := c.(map[string]any)
					k := key{cm["system"].(string), cm["code"].(string), id["value"].(string)}
					owners[k] = append(owners[k], "Patient/"+p)
				}
			}
		}
	}
	if len(owners) < 6 {
		t.Fatalf("only %d typed identifiers in the data", len(owners))
	}
	for k, want := range owners {
		v := strings.ReplaceAll(k.system, "|", `\|`) + "|" + k.code + "|" + strings.ReplaceAll(k.value, "|", `\|`)
		r := do(t, f.h, "GET", "/fhir/R4/Patient?identifier:of-type="+url.QueryEscape(v), nil)
		mustStatus(t, r, 200)
		sameRefs(t, v, readSearchset(t, r).matches, want)
		// The same value under another type finds nothing.
		r = do(t, f.h, "GET", "/fhir/R4/Patient?identifier:of-type="+url.QueryEscape(k.system+"|XX|"+k.value), nil)
		sameRefs(t, "another type", readSearchset(t, r).matches, nil)
	}
	mustStatus(t, do(t, f.h, "GET", "/fhir/R4/Patient?identifier:of-type=MR", nil), 400)
	mustStatus(t, do(t, f.h, "GET", "/fhir/R4/Patient?gender:of-type=a|b|c", nil), 400)
}

// TestOwnURLReference: a reference searched by this server's absolute URL
// finds what refers to the resource; another server's URL finds only
// what was stored under it.
func TestOwnURLReference(t *testing.T) {
	f := smallFixture(t)
	want := f.members("85", "Observation")
	for _, c := range []struct {
		value string
		want  []string
	}{
		{"http://fhir.test/fhir/R4/Patient/85", want},
		{"http://fhir.test/fhir/R4/Patient/85/_history/1", want},
		{"http://other.example/fhir/R4/Patient/85", nil},
		{"http://fhir.test/fhir/R4/Patient/nobody", nil},
	} {
		r := do(t, f.h, "GET", "/fhir/R4/Observation?subject="+url.QueryEscape(c.value)+"&_count=1000", nil)
		mustStatus(t, r, 200)
		sameRefs(t, c.value, readSearchset(t, r).matches, c.want)
	}
	// Stored absolute references: each found by its own URL, the one to
	// this server also by this server's URL only.
	own := do(t, f.h, "POST", "/fhir/R4/Observation", strings.Replace(observation("85", "survey"), `"Patient/85"`, `"http://fhir.test/fhir/R4/Patient/85"`, 1))
	mustStatus(t, own, 201)
	far := do(t, f.h, "POST", "/fhir/R4/Observation", strings.Replace(observation("85", "survey"), `"Patient/85"`, `"http://other.example/fhir/R4/Patient/85"`, 1))
	mustStatus(t, far, 201)
	ownRef, farRef := "Observation/"+idOf(t, own), "Observation/"+idOf(t, far)
	r := do(t, f.h, "GET", "/fhir/R4/Observation?subject="+url.QueryEscape("http://other.example/fhir/R4/Patient/85"), nil)
	sameRefs(t, "another server's", readSearchset(t, r).matches, []string{farRef})
	r = do(t, f.h, "GET", "/fhir/R4/Observation?subject="+url.QueryEscape("http://fhir.test/fhir/R4/Patient/85")+"&_count=1000", nil)
	sameRefs(t, "this server's", readSearchset(t, r).matches, join(want, []string{ownRef}))

	// With base_url set, both it and the request's own base are this
	// server's.
	h := newTestServer(t, func(c *Config) { c.BaseURL = "https://fhir.example.org/fhir/R4" })
	mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient/p", `{"resourceType":"Patient","id":"p"}`), 201)
	id := idOf(t, do(t, h, "POST", "/fhir/R4/Observation", observation("p", "survey")))
	for _, u := range []string{"https://fhir.example.org/fhir/R4/Patient/p", "http://fhir.test/fhir/R4/Patient/p"} {
		r := do(t, h, "GET", "/fhir/R4/Observation?subject="+url.QueryEscape(u), nil)
		sameRefs(t, u, readSearchset(t, r).matches, []string{"Observation/" + id})
	}
}
