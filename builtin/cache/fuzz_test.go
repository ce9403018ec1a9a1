package cache

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// FuzzKey checks the key normalization on arbitrary paths, queries and
// Accept headers: it never panics, is deterministic, does not depend on
// the order of query parameters, separates partitions, and never puts the
// raw query into the key.
func FuzzKey(f *testing.F) {
	for _, s := range [][3]string{
		{"/fhir/R4/Observation", "patient=85&code=a&code=b", "application/fhir+json"},
		{"/fhir/R4/Patient/", "_format=json&name=Smith", ""},
		{"/fhir/R4", "_type=Observation&_include=Observation:patient", "*/*"},
		{"/", "%zz=1&a", "text/html, application/json;q=0.9"},
		{"/fhir/R4/Patient/85/Observation", "date=ge2015&date=le2020", "application/xml"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, path, rawQuery, accept string) {
		r := &http.Request{URL: &url.URL{Path: path, RawQuery: rawQuery}, Header: http.Header{}}
		if accept != "" {
			r.Header.Set("Accept", accept)
		}
		vals, qerr := url.ParseQuery(rawQuery)
		key := func(r *http.Request, part string) string {
			v, err := url.ParseQuery(r.URL.RawQuery)
			return keyOf(r, v, err, part, nil, "")
		}
		k1 := key(r, "user:a")
		if k1 != key(r, "user:a") {
			t.Fatal("key not deterministic")
		}
		if len(k1) != 64 || strings.Contains(k1, rawQuery) && len(rawQuery) > 3 {
			t.Fatalf("key %q is not a plain hash", k1)
		}
		if k1 == key(r, "user:b") {
			t.Fatal("two partitions share a key")
		}
		// Reordering parsable parameters does not change the key.
		if qerr == nil && len(vals) > 1 {
			parts := strings.Split(rawQuery, "&")
			slices.Reverse(parts)
			r2 := &http.Request{URL: &url.URL{Path: path, RawQuery: strings.Join(parts, "&")}, Header: r.Header}
			if v2, err := url.ParseQuery(r2.URL.RawQuery); err == nil && sameValues(vals, v2) && key(r2, "user:a") != k1 {
				t.Fatalf("reordered query %q changed the key", r2.URL.RawQuery)
			}
		}
		tags, _, _ := readTags(path, vals, "/fhir/R4")
		if len(tags) == 0 || tags[0] != tagAll {
			t.Fatalf("tags %v lack %q", tags, tagAll)
		}
	})
}

func sameValues(a, b url.Values) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		x, y := slices.Clone(v), slices.Clone(b[k])
		slices.Sort(x)
		slices.Sort(y)
		if !slices.Equal(x, y) {
			return false
		}
	}
	return true
}

func TestWriteTags(t *testing.T) {
	tests := []struct {
		name, method, path, body, loc string
		want                          []string
		not                           []string
	}{
		{"create with a subject", "POST", "/fhir/R4/Observation", `{"subject":{"reference":"Patient/85"}}`, "Observation/9/_history/1",
			[]string{"t:Observation", "r:Observation/9", "c:Patient/85"}, []string{"c:?"}},
		{"absolute reference", "PUT", "/fhir/R4/Encounter/e1", `{"subject":{"reference":"https://x.org/fhir/Patient/7/_history/2"}}`, "",
			[]string{"r:Encounter/e1", "c:Patient/7"}, []string{"c:?"}},
		{"delete: compartment unknown", "DELETE", "/fhir/R4/Observation/9", "", "",
			[]string{"r:Observation/9", "c:?"}, nil},
		{"patient update", "PUT", "/fhir/R4/Patient/85", `{"resourceType":"Patient"}`, "",
			[]string{"r:Patient/85", "c:Patient/85"}, []string{"c:?"}},
		{"conditional update: id from the response", "PUT", "/fhir/R4/Patient", `{}`, "https://h/fhir/R4/Patient/12/_history/3",
			[]string{"r:Patient/12", "c:Patient/12"}, []string{"rt:Patient"}},
		{"conditional update without an id", "PUT", "/fhir/R4/Patient", `{}`, "",
			[]string{"rt:Patient", "t:Patient"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, ok := parseFHIR(tt.method, tt.path)
			if !ok {
				t.Fatal("not a FHIR request")
			}
			got := writeTags(req, []byte(tt.body), nil, tt.loc)
			for _, w := range tt.want {
				if !slices.Contains(got, w) {
					t.Errorf("tags %v lack %s", got, w)
				}
			}
			for _, n := range tt.not {
				if slices.Contains(got, n) {
					t.Errorf("tags %v hold %s", got, n)
				}
			}
		})
	}
}
