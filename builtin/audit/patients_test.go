package audit

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

func TestPatientsFromQuery(t *testing.T) {
	for _, c := range []struct {
		typ, query string
		want       []string
	}{
		{"Observation", "patient=85", []string{"85"}},
		{"Observation", "patient=Patient/85", []string{"85"}},
		{"Observation", "patient=85,86&code=x", []string{"85", "86"}},
		{"Observation", "subject=Patient/86", []string{"86"}},
		{"Observation", "subject=87", nil}, // a bare id on subject may be a Group
		{"Observation", "subject:Patient=88", []string{"88"}},
		{"Observation", "performer=Patient/9", []string{"9"}},
		{"Observation", "subject=Group/1", nil},
		{"Observation", "subject.name=Smith", nil}, // chained: the results tell
		{"Observation", "code=Patient/1", nil},     // not a parameter that links to a patient
		{"Encounter", "subject=http://other.example/fhir/Patient/77", []string{"77"}},
		{"Encounter", "patient=Patient/77/_history/2", []string{"77"}},
		{"Patient", "_id=1,2", []string{"1", "2"}},
		{"Patient", "link=Patient/3", []string{"3"}},
		{"Practitioner", "name=x", nil},
		{"", "patient=5", []string{"5"}},
		{"Observation", "patient=bad_id!", nil},
	} {
		t.Run(c.typ+"?"+c.query, func(t *testing.T) {
			q, _ := url.ParseQuery(c.query)
			s := &patientSet{max: 10}
			s.fromQuery(c.typ, q)
			if !slices.Equal(s.ids, c.want) {
				t.Errorf("patients %v, want %v", s.ids, c.want)
			}
		})
	}
}

func TestPatientsFromPath(t *testing.T) {
	for path, want := range map[string][]string{
		"/fhir/R4/Patient/85":                     {"85"},
		"/fhir/R4/Patient/85/_history/2":          {"85"},
		"/fhir/R4/Patient/85/Observation":         {"85"},
		"/fhir/R4/Patient/85/*":                   {"85"},
		"/fhir/R4/Patient/85/$everything":         {"85"},
		"/fhir/R4/Observation/1":                  nil,
		"/fhir/R4/Group/1/Patient":                nil,
		"/fhir/R4/Encounter/7/Observation":        nil,
		"/fhir/R4/Patient":                        nil,
		"/fhir/R4/Practitioner/85/_history/2/../": nil,
	} {
		r, _ := fhirreq.Parse("GET", path, "/fhir/R4")
		s := &patientSet{max: 10}
		s.fromPath(r)
		if !slices.Equal(s.ids, want) {
			t.Errorf("%s: patients %v, want %v", path, s.ids, want)
		}
	}
}

func TestPatientsFromResources(t *testing.T) {
	obs := `{"resourceType":"Observation","id":"o","subject":{"reference":"Patient/1"},"performer":[{"reference":"Practitioner/9"},{"reference":"Patient/2"}]}`
	for _, c := range []struct {
		name, body string
		want       []string
	}{
		{"observation", obs, []string{"1", "2"}},
		{"patient", `{"resourceType":"Patient","id":"85"}`, []string{"85"}},
		{"practitioner", `{"resourceType":"Practitioner","id":"9"}`, nil},
		{"outcome", `{"resourceType":"OperationOutcome","issue":[]}`, nil},
		{"search set", `{"resourceType":"Bundle","type":"searchset","entry":[{"resource":` + obs + `},
			{"resource":{"resourceType":"Condition","id":"c","subject":{"reference":"Patient/3"}}},
			{"resource":{"resourceType":"Patient","id":"4"},"search":{"mode":"include"}},
			{"resource":{"resourceType":"Organization","id":"x"}}]}`, []string{"1", "2", "3", "4"}},
		{"contained reference", `{"resourceType":"Observation","id":"o","subject":{"reference":"#p"}}`, nil},
		{"not json", `{"resourceType":`, nil},
		{"empty", ``, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &patientSet{max: 10}
			s.fromBody([]byte(c.body))
			if !slices.Equal(s.ids, c.want) || s.incomplete {
				t.Errorf("patients %v (incomplete %v), want %v", s.ids, s.incomplete, c.want)
			}
		})
	}
	s := &patientSet{max: 2}
	s.fromBody([]byte(`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"1"}},{"resource":{"resourceType":"Patient","id":"2"}},{"resource":{"resourceType":"Patient","id":"3"}}]}`))
	if !slices.Equal(s.ids, []string{"1", "2"}) || !s.incomplete {
		t.Errorf("bounded: %v incomplete %v", s.ids, s.incomplete)
	}
}

func TestParseLocation(t *testing.T) {
	for loc, want := range map[string][3]string{
		"http://h/fhir/R4/Observation/abc/_history/2": {"Observation", "abc", "2"},
		"Patient/85/_history/1":                       {"Patient", "85", "1"},
		"Patient/85":                                  {"Patient", "85", ""},
		"/fhir/R4/Patient/85?x=1":                     {"Patient", "85", ""},
		"nonsense":                                    {"", "", ""},
		"":                                            {"", "", ""},
		"http://h/fhir/R4/bad/85":                     {"", "", ""},
	} {
		typ, id, vid := parseLocation(loc)
		if [3]string{typ, id, vid} != want {
			t.Errorf("%q: %q %q %q, want %v", loc, typ, id, vid, want)
		}
	}
}

// The bounds: a response over inspect_bytes is not read, a record names at
// most max_patients; either way the record says it may miss some.
func TestPatientBounds(t *testing.T) {
	g := newGateway(t, gwOptions{audit: "inspect_bytes: 2000\nmax_patients: 3"})
	long := strings.Repeat("x", 500)
	for i := range 5 {
		g.must(201, physician, "PUT", fmt.Sprintf("/fhir/R4/Patient/p%d", i), fmt.Sprintf(`{"resourceType":"Patient","id":"p%d","gender":"female","name":[{"family":"%s"}]}`, i, long))
	}
	g.must(200, nurse, "GET", "/fhir/R4/Patient?gender=female&_elements=id", "", "X-Request-Id", "many")
	g.must(200, nurse, "GET", "/fhir/R4/Patient?_id=p1", "", "X-Request-Id", "one")
	g.must(200, nurse, "GET", "/fhir/R4/Patient?gender=female&_count=5", "", "X-Request-Id", "big")
	big := `{"resourceType":"Observation","status":"final","code":{"text":"` + strings.Repeat("x", 2100) + `"},"subject":{"reference":"Patient/p1"}}`
	g.must(201, physician, "POST", "/fhir/R4/Observation", big, "X-Request-Id", "big-write", "Prefer", "return=minimal")
	g.settle()
	recs := g.records()
	if r := byRequest(recs, "one")[0]; !slices.Equal(r.Patients, []string{"p1"}) || r.PatientsIncomplete {
		t.Errorf("one: %v %v", r.Patients, r.PatientsIncomplete)
	}
	if r := byRequest(recs, "many")[0]; len(r.Patients) != 3 || !r.PatientsIncomplete {
		t.Errorf("over max_patients: %v incomplete %v", r.Patients, r.PatientsIncomplete)
	}
	if r := byRequest(recs, "big")[0]; len(r.Patients) != 0 || !r.PatientsIncomplete {
		t.Errorf("over inspect_bytes: %v incomplete %v", r.Patients, r.PatientsIncomplete)
	}
	if r := byRequest(recs, "big-write")[0]; len(r.Patients) != 0 || !r.PatientsIncomplete {
		t.Errorf("written resource over inspect_bytes: %v incomplete %v", r.Patients, r.PatientsIncomplete)
	}
}

// The parsers of request and response bodies take anything without
// panicking.
func FuzzPatients(f *testing.F) {
	f.Add([]byte(`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/1"}}}]}`), "patient=1&subject=Patient/2", "Patient/1/_history/2")
	f.Add([]byte(`{"resourceType":"Patient","id":"x"}`), "_id=a,b", "http://x/Patient/")
	f.Fuzz(func(t *testing.T, body []byte, query, loc string) {
		s := &patientSet{max: 5}
		s.fromBody(body)
		q, _ := url.ParseQuery(query)
		s.fromQuery("Observation", q)
		s.fromQuery("Patient", q)
		s.addRef(loc)
		parseLocation(loc)
		if len(s.ids) > 5 {
			t.Fatalf("%d patients over the bound", len(s.ids))
		}
		for _, id := range s.ids {
			if !fhirreq.IsID(id) {
				t.Fatalf("invalid id %q", id)
			}
		}
	})
}
