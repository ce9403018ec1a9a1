package access

import (
	"encoding/json"
	"errors"
	"net/url"
	"slices"
	"testing"
)

const labObs = `{"resourceType":"Observation","id":"o1","status":"final",
 "category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],
 "code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}],"text":"Glucose"},
 "subject":{"reference":"Patient/85"},"performer":[{"reference":"Practitioner/7"}]}`

func TestDecodeResource(t *testing.T) {
	r, err := DecodeResource([]byte(labObs))
	if err != nil || r.Type != "Observation" || r.ID != "o1" {
		t.Fatalf("%+v %v", r, err)
	}
	if !slices.Equal(r.Compartments(), []string{"85"}) || !r.InCompartmentOf("85") || r.InCompartmentOf("355") || r.InCompartmentOf("") {
		t.Errorf("compartments %v", r.Compartments())
	}
	for _, bad := range []string{`[]`, `{"resourceType":"Nope"}`, `{"id":"x"}`, `"Patient"`} {
		if _, err := DecodeResource([]byte(bad)); !errors.Is(err, ErrNotResource) {
			t.Errorf("%s: %v", bad, err)
		}
	}
	for _, bad := range []string{`{`, `{"resourceType":"Patient"} x`,
		`{"resourceType":"Observation","subject":{"reference":"Patient/85"},"subject":{"reference":"Patient/355"}}`,
		`{"resourceType":"Observation","subject":{"reference":"Patient/85","reference":"Patient/355"}}`,
		`{"resourceType":"Observation","performer":[{"reference":"a"},{"reference":"b","reference":"c"}]}`} {
		if _, err := DecodeResource([]byte(bad)); err == nil || errors.Is(err, ErrNotResource) {
			t.Errorf("%s: %v", bad, err)
		}
	}
	for _, tc := range []struct {
		doc string
		ok  bool
	}{{`{}`, true}, {` 1 `, true}, {`[1,{"a":[]}]`, true}, {`{} {}`, false}, {`{"a":1`, false}, {``, false}, {`{"a":1,"a":2}`, false}, {`{"subject":1,"Subject":2}`, false}} {
		if err := CheckJSON([]byte(tc.doc)); (err == nil) != tc.ok {
			t.Errorf("CheckJSON(%q) = %v", tc.doc, err)
		}
	}
	// The same key in sibling objects is fine.
	if _, err := DecodeResource([]byte(`{"resourceType":"Observation","performer":[{"reference":"a"},{"reference":"b"}],"code":{"text":"t"},"x":[[{"a":1}],{"a":2}]}`)); err != nil {
		t.Errorf("siblings: %v", err)
	}
}

func TestMatches(t *testing.T) {
	r, err := DecodeResource([]byte(labObs))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		filter string
		want   bool
	}{
		{"category=laboratory", true},
		{"category=vital-signs", false},
		{"category=vital-signs,laboratory", true},
		{"category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", true},
		{"category=http://other|laboratory", false},
		{"category=http://terminology.hl7.org/CodeSystem/observation-category|", true},
		{"category=|laboratory", false}, // the coding has a system
		{"category=laboratory&status=final", true},
		{"category=laboratory&status=preliminary", false},
		{"subject=Patient/85", true},
		{"subject=85", true},
		{"subject=Patient/355", false},
		{"performer=Practitioner/7", true},
		{"_id=o1", true},
		{"_id=o2,o1", true},
		{"_id=o2", false},
		{"code=http://loinc.org|2339-0", true},
	} {
		q, err := url.ParseQuery(tc.filter)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Matches(q)
		if err != nil || got != tc.want {
			t.Errorf("%s: %v %v, want %v", tc.filter, got, err, tc.want)
		}
	}
	p, _ := DecodeResource([]byte(`{"resourceType":"Patient","id":"85","name":[{"family":"Müller","given":["Ann"]}]}`))
	for _, tc := range []struct {
		filter string
		want   bool
	}{
		{"family=mul", true}, {"family=Mül", true}, {"family:exact=Müller", true}, {"family:exact=Muller", false}, {"family=schmidt", false},
	} {
		q, _ := url.ParseQuery(tc.filter)
		if got, err := p.Matches(q); err != nil || got != tc.want {
			t.Errorf("Patient %s: %v %v, want %v", tc.filter, got, err, tc.want)
		}
	}
	// What cannot be evaluated outside a store is an error, never a match.
	for _, f := range []string{"date=ge2020", "value-quantity=5", "category:not=laboratory", "nonsense=1", "_count=1", "_lastUpdated=ge2020", "subject:missing=true"} {
		q, _ := url.ParseQuery(f)
		if ok, err := r.Matches(q); err == nil || ok {
			t.Errorf("%s: %v %v, want an error", f, ok, err)
		}
		if CheckFilter("Observation", q) == nil {
			t.Errorf("CheckFilter(%s) accepted it", f)
		}
	}
	if ok, err := r.MatchesAny(nil); !ok || err != nil {
		t.Error("no filter must match")
	}
	ok, err := r.MatchesAny([]url.Values{{"category": {"vital-signs"}}, {"category": {"laboratory"}}})
	if !ok || err != nil {
		t.Errorf("alternatives: %v %v", ok, err)
	}
}

func TestAdmits(t *testing.T) {
	obs, _ := DecodeResource([]byte(labObs))
	other, _ := DecodeResource([]byte(`{"resourceType":"Observation","status":"final","code":{},"subject":{"reference":"Patient/355"}}`))
	prac, _ := DecodeResource([]byte(`{"resourceType":"Practitioner","id":"7"}`))
	patient := NewPolicy(scopes("patient/*.rs"), PolicyOptions{Patient: "85", Readable: []string{"Practitioner"}})
	lab := NewPolicy(scopes("user/Observation.rs?category=laboratory"), PolicyOptions{})
	for _, tc := range []struct {
		name string
		d    Decision
		r    *Resource
		want bool
	}{
		{"own observation", patient.Decide(Read, "Observation"), obs, true},
		{"another patient's", patient.Decide(Read, "Observation"), other, false},
		{"readable practitioner", patient.Decide(Read, "Practitioner"), prac, true},
		{"a compartment decision admits no type outside it", patient.Decide(Read, "Observation"), prac, false},
		{"constraint met", lab.Decide(Read, "Observation"), obs, true},
		{"constraint not met", lab.Decide(Read, "Observation"), other, false},
		{"refused decision", lab.Decide(Read, "Patient"), obs, false},
	} {
		ok, reason := tc.d.Admits(tc.r)
		if ok != tc.want || !ok && reason == "" {
			t.Errorf("%s: %v %q", tc.name, ok, reason)
		}
	}
}

func TestReferenceTargets(t *testing.T) {
	ts, ok := ReferenceTargets("Observation", "subject")
	if !ok || !slices.Contains(ts, "Patient") || !slices.Contains(ts, "Group") {
		t.Errorf("Observation.subject: %v %v", ts, ok)
	}
	if _, ok := ReferenceTargets("Observation", "code"); ok {
		t.Error("code is not a reference")
	}
	if !IsSearchParam("Observation", "code") || !IsSearchParam("Observation", "_id") || IsSearchParam("Observation", "nope") {
		t.Error("IsSearchParam")
	}
}

// CheckJSON accepts exactly what encoding/json accepts, less objects with
// a key twice.
func FuzzCheckJSON(f *testing.F) {
	for _, s := range []string{`{"a":{"b":[1,{"c":2}]},"d":"e"}`, `{"a":1,"a":1}`, `[]`, `{} x`, `"s"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		err := CheckJSON(doc)
		if valid := json.Valid(doc); err == nil && !valid {
			t.Fatalf("accepted invalid JSON %q", doc)
		}
	})
}

func FuzzDecodeResource(f *testing.F) {
	f.Add([]byte(labObs), "category=laboratory")
	f.Add([]byte(`{"resourceType":"Patient","id":"1","link":[{"other":{"reference":"Patient/2"}}]}`), "_id=1")
	f.Fuzz(func(t *testing.T, body []byte, filter string) {
		r, err := DecodeResource(body)
		if err != nil {
			return
		}
		for _, c := range r.Compartments() {
			if c == "" {
				t.Fatal("empty compartment id")
			}
		}
		q, err := url.ParseQuery(filter)
		if err != nil {
			return
		}
		if ok, err := r.Matches(q); err != nil && ok {
			t.Fatal("a match with an error")
		}
	})
}
