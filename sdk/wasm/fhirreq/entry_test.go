package fhirreq

import (
	"reflect"
	"testing"
)

func TestRequestEntry(t *testing.T) {
	for _, tc := range []struct {
		name                                   string
		method, path, query, ifNoneExist, base string
		want                                   Entry
		conditional                            bool
	}{
		{name: "read", method: "GET", path: "/fhir/R4/Patient/p1", base: "/fhir/R4",
			want: Entry{Request: Request{Interaction: Read, Type: "Patient", ID: "p1"}, Method: "GET", URL: "Patient/p1"}},
		{name: "search with its query", method: "GET", path: "/fhir/R4/Observation", query: "code=a%7Cb", base: "/fhir/R4/",
			want: Entry{Request: Request{Interaction: SearchType, Type: "Observation"}, Method: "GET",
				URL: "Observation?code=a%7Cb", Query: map[string][]string{"code": {"a|b"}}}},
		{name: "conditional create", method: "POST", path: "/fhir/R4/Patient", ifNoneExist: "identifier=x", base: "/fhir/R4",
			want:        Entry{Request: Request{Interaction: Create, Type: "Patient"}, Method: "POST", URL: "Patient", IfNoneExist: "identifier=x"},
			conditional: true},
		{name: "conditional update", method: "PUT", path: "/fhir/R4/Patient", query: "identifier=x", base: "/fhir/R4",
			want: Entry{Request: Request{Interaction: Update, Type: "Patient"}, Method: "PUT", URL: "Patient?identifier=x",
				Query: map[string][]string{"identifier": {"x"}}},
			conditional: true},
		{name: "not a FHIR path", method: "GET", path: "/fhir/R4/a/b/c/d/e/f", base: "/fhir/R4",
			want: Entry{Method: "GET", URL: "a/b/c/d/e/f"}},
		{name: "the base", method: "GET", path: "/fhir/R4", query: "_type=Patient", base: "/fhir/R4",
			want: Entry{Request: Request{Interaction: SearchSystem}, Method: "GET", URL: "?_type=Patient",
				Query: map[string][]string{"_type": {"Patient"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := RequestEntry(tc.method, tc.path, tc.query, tc.ifNoneExist, tc.base)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if got.Conditional() != tc.conditional {
				t.Errorf("Conditional() = %v", got.Conditional())
			}
		})
	}
}
