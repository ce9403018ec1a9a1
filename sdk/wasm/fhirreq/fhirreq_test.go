package fhirreq

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	const base = "/fhir/R4"
	tests := []struct {
		method, path string
		want         Request
		ok           bool
	}{
		{"GET", "/fhir/R4/metadata", Request{Interaction: Capabilities}, true},
		{"GET", "/fhir/R4", Request{Interaction: SearchSystem}, true},
		{"POST", "/fhir/R4/", Request{Interaction: Batch}, true},
		{"GET", "/fhir/R4/_history", Request{Interaction: HistorySystem}, true},
		{"POST", "/fhir/R4/_search", Request{Interaction: SearchSystem}, true},
		{"POST", "/fhir/R4/$convert", Request{Interaction: Operation, Operation: "convert"}, true},
		{"GET", "/fhir/R4/Observation", Request{Interaction: SearchType, Type: "Observation"}, true},
		{"HEAD", "/fhir/R4/Observation", Request{Interaction: SearchType, Type: "Observation"}, true},
		{"POST", "/fhir/R4/Observation", Request{Interaction: Create, Type: "Observation"}, true},
		{"PUT", "/fhir/R4/Observation", Request{Interaction: Update, Type: "Observation"}, true},
		{"DELETE", "/fhir/R4/Observation", Request{Interaction: Delete, Type: "Observation"}, true},
		{"POST", "/fhir/R4/Observation/_search", Request{Interaction: SearchType, Type: "Observation"}, true},
		{"GET", "/fhir/R4/Observation/_history", Request{Interaction: HistoryType, Type: "Observation"}, true},
		{"GET", "/fhir/R4/Patient/$match", Request{Interaction: Operation, Type: "Patient", Operation: "match"}, true},
		{"GET", "/fhir/R4/Patient/p1", Request{Interaction: Read, Type: "Patient", ID: "p1"}, true},
		{"PUT", "/fhir/R4/Patient/p1", Request{Interaction: Update, Type: "Patient", ID: "p1"}, true},
		{"PATCH", "/fhir/R4/Patient/p1", Request{Interaction: Patch, Type: "Patient", ID: "p1"}, true},
		{"DELETE", "/fhir/R4/Patient/p1", Request{Interaction: Delete, Type: "Patient", ID: "p1"}, true},
		{"GET", "/fhir/R4/Patient/p1/_history", Request{Interaction: HistoryInstance, Type: "Patient", ID: "p1"}, true},
		{"GET", "/fhir/R4/Patient/p1/_history/3", Request{Interaction: VRead, Type: "Patient", ID: "p1", VersionID: "3"}, true},
		{"GET", "/fhir/R4/Patient/p1/$everything", Request{Interaction: Operation, Type: "Patient", ID: "p1", Operation: "everything"}, true},
		{"GET", "/fhir/R4/Patient/p1/Observation", Request{Interaction: SearchType, Type: "Observation", CompartmentType: "Patient", CompartmentID: "p1"}, true},
		{"POST", "/fhir/R4/Patient/p1/Observation/_search", Request{Interaction: SearchType, Type: "Observation", CompartmentType: "Patient", CompartmentID: "p1"}, true},
		{"GET", "/fhir/R4/Patient/p1/*", Request{Interaction: SearchSystem, CompartmentType: "Patient", CompartmentID: "p1"}, true},
		{"GET", "/other/Patient", Request{}, false},
		{"GET", "/fhir/R4x/Patient", Request{}, false},
		{"GET", "/fhir/R4/patient", Request{}, false},
		{"GET", "/fhir/R4/Patient/bad_id", Request{}, false},
		{"POST", "/fhir/R4/Patient/p1", Request{}, false},
		{"GET", "/fhir/R4/Patient//p1", Request{}, false},
		{"GET", "/fhir/R4/Patient/p1/_history/3/x", Request{}, false},
		{"GET", "/fhir/R4/Patient/" + strings.Repeat("a", 65), Request{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			got, ok := Parse(tt.method, tt.path, base)
			if ok != tt.ok || got != tt.want {
				t.Errorf("Parse = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"/fhir/R4/Patient/1/_history/2", "/fhir/R4/Patient/1/Observation", "/fhir/R4/$op", "/fhir/R4//"} {
		f.Add("GET", s)
	}
	f.Fuzz(func(t *testing.T, method, path string) {
		r, ok := Parse(method, path, "/fhir/R4")
		if !ok {
			if r != (Request{}) {
				t.Fatalf("not ok but %+v", r)
			}
			return
		}
		if r.Interaction == "" {
			t.Fatalf("ok without interaction: %+v", r)
		}
		if r.ID != "" && !IsID(r.ID) || r.Type != "" && !IsResourceType(r.Type) {
			t.Fatalf("invalid type or id accepted: %+v", r)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	for b.Loop() {
		Parse("GET", "/fhir/R4/Patient/p1/Observation", "/fhir/R4")
	}
}

func TestParseBundle(t *testing.T) {
	body := `{"resourceType":"Bundle","type":"batch","entry":[
	 {"request":{"method":"GET","url":"Patient/85"}},
	 {"request":{"method":"GET","url":"Observation?patient=85&code=1"}},
	 {"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=x|1"}},
	 {"resource":{"resourceType":"Patient"},"request":{"method":"PUT","url":"Patient?identifier=x|2"}},
	 {"request":{"method":"DELETE","url":"http://fhir.example/fhir/R4/Patient/9"}},
	 {"request":{"method":"delete","url":"Patient?name=x"}},
	 {"request":{"method":"GET","url":"Patient/85/_history/2"}},
	 {"request":{"method":"POST","url":"Patient/$validate"}},
	 {"request":{"method":"GET","url":"not a url"}},
	 {"request":{"method":"DELETE","url":"%4Fbservation/o1"}},
	 {"resource":{"resourceType":"Patient"}}
	]}`
	b, err := ParseBundle([]byte(body), "/fhir/R4")
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		interaction, typ, id string
		conditional          bool
	}
	wants := []want{
		{Read, "Patient", "85", false},
		{SearchType, "Observation", "", false},
		{Create, "Patient", "", true},
		{Update, "Patient", "", true},
		{Delete, "Patient", "9", false},
		{Delete, "Patient", "", true},
		{VRead, "Patient", "85", false},
		{Operation, "Patient", "", false},
		{"", "", "", false},
		{Delete, "Observation", "o1", false}, // percent-decoded, as a server reads it
		{"", "", "", false},
	}
	if b.Type != "batch" || len(b.Entries) != len(wants) {
		t.Fatalf("type %q, %d entries", b.Type, len(b.Entries))
	}
	for i, w := range wants {
		e := &b.Entries[i]
		got := want{e.Interaction, e.Type, e.ID, e.Conditional()}
		if got != w || e.Index != i {
			t.Errorf("entry %d (%s %s): %+v, want %+v", i, e.Method, e.URL, got, w)
		}
	}
	if q := b.Entries[1].Query; q.Get("patient") != "85" || q.Get("code") != "1" {
		t.Errorf("query %v", q)
	}
	if string(b.Entries[2].Resource) != `{"resourceType":"Patient"}` {
		t.Errorf("resource %s", b.Entries[2].Resource)
	}
	for _, bad := range []string{`{"resourceType":"Bundle","type":"searchset"}`, `{"resourceType":"Patient"}`, `[]`} {
		if _, err := ParseBundle([]byte(bad), ""); !errors.Is(err, ErrNotBundle) && err == nil {
			t.Errorf("%s: %v", bad, err)
		}
	}
	if _, err := ParseBundle([]byte(`{`), ""); err == nil || errors.Is(err, ErrNotBundle) {
		t.Errorf("malformed JSON: %v", err)
	}
}

func FuzzParseBundle(f *testing.F) {
	f.Add([]byte(`{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"PUT","url":"Patient?identifier=a|b"}}]}`))
	f.Add([]byte(`{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"http://x/fhir/Patient/1"}}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		b, err := ParseBundle(body, "/fhir")
		if err != nil {
			return
		}
		for i, e := range b.Entries {
			if e.Index != i {
				t.Fatalf("entry %d has index %d", i, e.Index)
			}
			if e.Interaction != "" && e.Type != "" && !IsResourceType(e.Type) {
				t.Fatalf("entry %d: type %q", i, e.Type)
			}
		}
	})
}
