package fhir

import (
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/access"
)

// outsideRefs returns, as the Bundle files say, the "Type/id" of the
// resources outside every compartment that patient's compartment members
// of the types keep accepts refer to, whose own type keep (or target, when
// given) accepts; sorted.
func (f *accessFixture) outsideRefs(t *testing.T, patient string, keep func(string) bool, target ...func(string) bool) []string {
	t.Helper()
	var b struct {
		Entry []struct {
			FullURL string `json:"fullUrl"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(sharedExample(t, syntheaFiles[patient]), &b); err != nil {
		t.Fatal(err)
	}
	targets := keep
	if len(target) > 0 {
		targets = target[0]
	}
	byURL := map[string]string{}
	for i, e := range b.Entry {
		byURL[e.FullURL] = f.refs[patient][i]
	}
	set := map[string]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && k == "reference" {
					ref := byURL[s]
					if ref == "" && strings.Count(s, "/") == 1 {
						ref = s
					}
					if typ, _, ok := strings.Cut(ref, "/"); ok && !access.InCompartment(typ) && targets(typ) {
						set[ref] = true
					}
					continue
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	for _, r := range f.res[patient] {
		if typ := r["resourceType"].(string); !outsideCompartment[typ] && keep(typ) {
			walk(r)
		}
	}
	var out []string
	for ref := range set {
		out = append(out, ref)
	}
	sort.Strings(out)
	return out
}

func anyType(string) bool { return true }

func typesOf(ts ...string) func(string) bool {
	return func(t string) bool { return slices.Contains(ts, t) }
}

// pages follows a searchset's next links and returns what all pages hold,
// failing on a page over count entries or an entry seen twice.
func pages(t *testing.T, h http.Handler, path string, count int) searchset {
	t.Helper()
	var all searchset
	seen := map[string]bool{}
	for n := 0; path != ""; n++ {
		if n > 1000 {
			t.Fatal("too many pages")
		}
		r := do(t, h, "GET", path, nil)
		mustStatus(t, r, 200)
		s := readSearchset(t, r)
		if len(s.matches)+len(s.included) > count {
			t.Fatalf("%s: %d entries on a page of %d", path, len(s.matches)+len(s.included), count)
		}
		for _, ref := range append(slices.Clone(s.matches), s.included...) {
			if seen[ref] {
				t.Fatalf("%s: %s on two pages", path, ref)
			}
			seen[ref] = true
		}
		all.matches = append(all.matches, s.matches...)
		all.included = append(all.included, s.included...)
		all.total = s.total
		path = ""
		if s.next != "" {
			path = linkPath(s.next)
		}
	}
	sort.Strings(all.matches)
	sort.Strings(all.included)
	return all
}

func sameRefs(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: got %d %v\nwant %d %v", what, len(got), got, len(want), want)
	}
}

// TestEverything: Patient/[id]/$everything answers the patient, its
// compartment and what those reference outside every compartment, as the
// example Bundles say; _type, _count and paging, POST; the type-level
// form; and under access policies, never another patient's data.
func TestEverything(t *testing.T) {
	f := readOnlyFixture(t)
	readableTypes := typesOf(readable...)
	for _, p := range []string{"85", "355", "888"} {
		t.Run("Patient/"+p, func(t *testing.T) {
			r := do(t, f.h, "GET", "/fhir/R4/Patient/"+p+"/$everything?_count=1000", nil)
			mustStatus(t, r, 200)
			b := r.json(t)
			if b["type"] != "searchset" {
				t.Errorf("Bundle type %v", b["type"])
			}
			first := entries(t, b)[0]
			if first["resourceType"] != "Patient" || first["id"] != p {
				t.Errorf("first entry %v/%v, want the patient", first["resourceType"], first["id"])
			}
			s := readSearchset(t, r)
			sameRefs(t, "compartment", s.matches, f.members(p, ""))
			sameRefs(t, "referenced", s.included, f.outsideRefs(t, p, anyType))
			if s.total != len(s.matches)+len(s.included) {
				t.Errorf("total %d for %d entries", s.total, len(s.matches)+len(s.included))
			}
		})
	}
	t.Run("paging", func(t *testing.T) {
		s := pages(t, f.h, "/fhir/R4/Patient/355/$everything?_count=50", 50)
		sameRefs(t, "compartment", s.matches, f.members("355", ""))
		sameRefs(t, "referenced", s.included, f.outsideRefs(t, "355", anyType))
		if s.total != len(s.matches)+len(s.included) {
			t.Errorf("total %d", s.total)
		}
	})
	t.Run("_type", func(t *testing.T) {
		r := do(t, f.h, "GET", "/fhir/R4/Patient/85/$everything?_type=Encounter,Location,Practitioner&_count=1000", nil)
		mustStatus(t, r, 200)
		s := readSearchset(t, r)
		sameRefs(t, "compartment", s.matches, f.members("85", "Encounter"))
		want := f.outsideRefs(t, "85", typesOf("Encounter", "Location", "Practitioner"))
		if len(want) == 0 {
			t.Fatal("the data has no Location or Practitioner an Encounter refers to")
		}
		sameRefs(t, "referenced", s.included, want)
	})
	t.Run("POST", func(t *testing.T) {
		body := `{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Condition"},{"name":"_count","valueInteger":1000}]}`
		r := do(t, f.h, "POST", "/fhir/R4/Patient/85/$everything", body)
		mustStatus(t, r, 200)
		s := readSearchset(t, r)
		sameRefs(t, "conditions", s.matches, f.members("85", "Condition"))
		if len(s.included) != 0 {
			t.Errorf("included %v", s.included)
		}
	})
	t.Run("type level", func(t *testing.T) {
		s := pages(t, f.h, "/fhir/R4/Patient/$everything?_count=200", 200)
		var want, inc []string
		for _, p := range []string{"85", "355", "888"} {
			want = append(want, f.members(p, "")...)
			inc = append(inc, f.outsideRefs(t, p, anyType)...)
		}
		sort.Strings(want)
		sort.Strings(inc)
		sameRefs(t, "compartments", s.matches, want)
		sameRefs(t, "referenced", s.included, slices.Compact(inc))
	})
	t.Run("errors", func(t *testing.T) {
		mustStatus(t, do(t, f.h, "GET", "/fhir/R4/Patient/nobody/$everything", nil), 404)
		mustStatus(t, do(t, f.h, "GET", "/fhir/R4/Patient/85/$everything?start=2020", nil), 400)
		mustStatus(t, do(t, f.h, "GET", "/fhir/R4/Patient/85/$everything?_type=Nothing", nil), 400)
		mustStatus(t, do(t, f.h, "GET", "/fhir/R4/Patient/85/$everything?_count=x", nil), 400)
		mustStatus(t, do(t, f.h, "GET", "/fhir/R4/Patient/85/$everything?bogus=1", nil, "Prefer", "handling=strict"), 400)
		mustStatus(t, do(t, f.h, "PUT", "/fhir/R4/Patient/85/$everything", nil), 405)
		mustStatus(t, do(t, f.h, "GET", "/fhir/R4/Observation/x/$everything", nil), 404)
	})

	t.Run("patient 85's own record", func(t *testing.T) {
		r := do(t, as(f.h, patient85), "GET", "/fhir/R4/Patient/85/$everything?_count=1000", nil)
		mustStatus(t, r, 200)
		s := readSearchset(t, r)
		sameRefs(t, "compartment", s.matches, f.members("85", ""))
		sameRefs(t, "referenced, readable types only", s.included, f.outsideRefs(t, "85", anyType, readableTypes))
		f.noLeak(t, "$everything", r.body)
	})
	t.Run("patient 85 asks for 355", func(t *testing.T) {
		r := do(t, as(f.h, patient85), "GET", "/fhir/R4/Patient/355/$everything", nil)
		sameAsMissing(t, as(f.h, patient85), r, "Patient/355", "/$everything")
		f.noLeak(t, "$everything of another", r.body, "355")
	})
	t.Run("patient 85, type level", func(t *testing.T) {
		s := pages(t, as(f.h, patient85), "/fhir/R4/Patient/$everything?_count=100", 100)
		sameRefs(t, "compartment", s.matches, f.members("85", ""))
		sameRefs(t, "referenced", s.included, f.outsideRefs(t, "85", anyType, readableTypes))
	})
	t.Run("a page link made for another policy", func(t *testing.T) {
		r := do(t, as(f.h, physician), "GET", "/fhir/R4/Patient/$everything?_count=300", nil)
		mustStatus(t, r, 200)
		next := readSearchset(t, r).next
		if next == "" {
			t.Fatal("no next link")
		}
		r = do(t, as(f.h, patient85), "GET", linkPath(next), nil)
		mustStatus(t, r, 200)
		f.noLeak(t, "a page of another's snapshot", r.body)
	})
	t.Run("refused", func(t *testing.T) {
		mustStatus(t, do(t, as(f.h, nobody), "GET", "/fhir/R4/Patient/85/$everything", nil), 403)
		mustStatus(t, do(t, as(f.h, lab85), "GET", "/fhir/R4/Patient/85/$everything", nil), 403)
	})
}

// TestEverythingSince: _since keeps what was updated since.
func TestEverythingSince(t *testing.T) {
	f := smallFixture(t)
	// An update after the load: only it is new since.
	obs := f.members("85", "Observation")[0]
	r := do(t, f.h, "GET", "/fhir/R4/"+obs, nil)
	mustStatus(t, r, 200)
	r = do(t, f.h, "PUT", "/fhir/R4/"+obs, r.body)
	mustStatus(t, r, 200)
	since := r.json(t)["meta"].(map[string]any)["lastUpdated"].(string)
	r = do(t, f.h, "GET", "/fhir/R4/Patient/85/$everything?_since="+since, nil)
	mustStatus(t, r, 200)
	s := readSearchset(t, r)
	sameRefs(t, "updated since", s.matches, []string{obs})
	if len(s.included) != 0 {
		t.Errorf("included %v, none was updated since", s.included)
	}
}

// FuzzEachReference: on any JSON document, the reference scanner finds
// exactly the string values of the members named "reference" that a full
// decode finds, in order.
func FuzzEachReference(f *testing.F) {
	for _, s := range []string{
		`{"subject":{"reference":"Patient/85"},"performer":[{"reference":"Practitioner/1"},{"display":"x"}]}`,
		`{"text":{"div":"<p>\"reference\":\"Patient/1\"</p>"},"a":"\\","reference":"X/1"}`,
		`{"reference" : "a\u002fb", "b":{"reference":7}, "c":["reference"]}`,
		`{"x\\":{"reference":"Y/2"}}`, `[]`, `"reference"`,
		`{"reference":"a","b":{"c":1},"reference":"b"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var tree any
		if json.Unmarshal(body, &tree) != nil {
			eachReference(body, func(string) {}) // must not panic
			return
		}
		var want []string
		root, err := decodeOrdered(body)
		if err != nil || hasDuplicateKeys(body) {
			return // a decoder keeps one of duplicate members; the scanner sees both
		}
		var ordered func(v any)
		ordered = func(v any) {
			switch v := v.(type) {
			case *jobject:
				for _, k := range v.keys {
					if s, ok := v.vals[k].(string); ok && k == "reference" {
						want = append(want, s)
						continue
					}
					ordered(v.vals[k])
				}
			case []any:
				for _, x := range v {
					ordered(x)
				}
			}
		}
		ordered(root)
		var got []string
		eachReference(body, func(s string) { got = append(got, s) })
		if !slices.Equal(got, want) {
			t.Fatalf("scanner found %q, the document holds %q", got, want)
		}
	})
}
