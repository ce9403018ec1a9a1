package fhir

import (
	"encoding/json"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
)

// BenchmarkChainSearch compares a chained search and a _has search with the
// two searches a client sends without them (the ids first, then the search
// by those ids), on the 751 resources of the three test Bundles; both ways
// find the same resources. Each pair is timed in turn (see interleaved);
// the one-step and two-step sub-benchmarks give allocations. With
// OMNIGATE_TEST_STORE=postgres it runs on the PostgreSQL store.
func BenchmarkChainSearch(b *testing.B) {
	off := false
	h := newTestServer(b, func(c *Config) { c.SchemaValidation = &off })
	loadSynthea(b, h)
	// The client reads what it needs of each match (type, id, subject).
	type match struct {
		ResourceType, ID string
		Subject          struct{ Reference string }
	}
	get := func(b *testing.B, path string) []match {
		r := do(b, h, "GET", "/fhir/R4/"+path, nil)
		if r.status != 200 {
			b.Fatalf("%s: status %d", path, r.status)
		}
		var bundle struct{ Entry []struct{ Resource match } }
		if err := json.Unmarshal(r.body, &bundle); err != nil {
			b.Fatal(err)
		}
		out := make([]match, len(bundle.Entry))
		for i, e := range bundle.Entry {
			out[i] = e.Resource
		}
		return out
	}
	refs := func(ms []match) []string {
		out := make([]string, len(ms))
		for i, m := range ms {
			out[i] = m.ResourceType + "/" + m.ID
		}
		sort.Strings(out)
		return out
	}
	ssn := url.QueryEscape("http://hl7.org/fhir/sid/us-ssn|999-47-5768")
	code := url.QueryEscape("http://loinc.org|72166-2")
	for _, c := range []struct {
		name     string
		one, two func(b *testing.B) []string
	}{
		{"chain",
			func(b *testing.B) []string { return refs(get(b, "Observation?patient.identifier="+ssn+"&_count=1000")) },
			func(b *testing.B) []string {
				ps := refs(get(b, "Patient?identifier="+ssn+"&_elements=id&_count=1000"))
				return refs(get(b, "Observation?patient="+strings.Join(ps, ",")+"&_count=1000"))
			}},
		{"has",
			func(b *testing.B) []string {
				return refs(get(b, "Patient?_has:Observation:patient:code="+code+"&_count=1000"))
			},
			func(b *testing.B) []string {
				var ids []string
				for _, o := range get(b, "Observation?code="+code+"&_elements=subject&_count=1000") {
					if id, ok := strings.CutPrefix(o.Subject.Reference, "Patient/"); ok && !slices.Contains(ids, id) {
						ids = append(ids, id)
					}
				}
				return refs(get(b, "Patient?_id="+strings.Join(ids, ",")+"&_count=1000"))
			}},
	} {
		one, two := c.one(b), c.two(b)
		if len(one) == 0 || !slices.Equal(one, two) {
			b.Fatalf("%s: %v, two steps %v", c.name, one, two)
		}
		b.Run(c.name+"/one-step", func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				c.one(b)
			}
		})
		b.Run(c.name+"/two-steps", func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				c.two(b)
			}
		})
		b.Run(c.name+"/interleaved", func(b *testing.B) {
			interleaved(b, [2]string{"two-steps", "one-step"}, func(b *testing.B, i int) {
				if i == 0 {
					c.two(b)
				} else {
					c.one(b)
				}
			})
		})
	}
}
