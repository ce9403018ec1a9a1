package fhir

import (
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// put stores a resource with a chosen id.
func put(t testing.TB, h *Handler, typ, id, body string) {
	t.Helper()
	body = `{"resourceType":"` + typ + `","id":"` + id + `",` + body + `}`
	r := do(t, h, "PUT", "/fhir/R4/"+typ+"/"+id, body)
	if r.status != 201 && r.status != 200 {
		t.Fatalf("PUT %s/%s: %d %s", typ, id, r.status, r.body)
	}
}

// ids runs a search and returns the ids of the matches, sorted unless the
// query sorts.
func ids(t testing.TB, h *Handler, query string) []string {
	t.Helper()
	r := do(t, h, "GET", "/fhir/R4/"+query, nil)
	mustStatus(t, r, 200)
	b := r.json(t)
	var out []string
	es, _ := b["entry"].([]any)
	for _, e := range es {
		m := e.(map[string]any)
		if m["search"].(map[string]any)["mode"] == "match" {
			out = append(out, m["resource"].(map[string]any)["id"].(string))
		}
	}
	if !strings.Contains(query, "_sort") {
		sort.Strings(out)
	}
	return out
}

func searchFixture(t testing.TB) *Handler {
	h := newTestServer(t)
	put(t, h, "Patient", "p1", `"name":[{"family":"Chalmers","given":["Peter"]}],"gender":"male","birthDate":"1974-12-25","identifier":[{"system":"urn:mrn","value":"A1"}],"telecom":[{"system":"email","value":"peter@example.org"}],"active":true`)
	put(t, h, "Patient", "p2", `"name":[{"family":"Chalmers","given":["Ellen"]}],"gender":"female","birthDate":"1980-03","identifier":[{"system":"urn:other","value":"A1"}]`)
	put(t, h, "Patient", "p3", `"name":[{"family":"Müller","given":["José"]}],"gender":"male","birthDate":"2001","meta":{"tag":[{"system":"urn:t","code":"vip"}]}`)
	put(t, h, "Patient", "p4", `"name":[{"text":"Nameless Jones"}]`)
	put(t, h, "Practitioner", "d1", `"name":[{"family":"Who"}]`)
	put(t, h, "Encounter", "e1", `"status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p1"},"period":{"start":"2015-01-01T10:00:00Z","end":"2015-01-01T11:00:00Z"}`)
	obs := func(id, patient, code, date, value string) {
		put(t, h, "Observation", id, `"status":"final","code":{"coding":[{"system":"http://loinc.org","code":"`+code+`","display":"Body weight"}],"text":"Weight"},"subject":{"reference":"Patient/`+patient+`"},"encounter":{"reference":"Encounter/e1"},"effectiveDateTime":"`+date+`","valueQuantity":{"value":`+value+`,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}`)
	}
	obs("o1", "p1", "29463-7", "2015-01-01T10:30:00Z", "70")
	obs("o2", "p1", "29463-7", "2016-06-15", "72.5")
	obs("o3", "p2", "29463-7", "2017", "55")
	obs("o4", "p2", "8302-2", "2017-05-01T00:00:00+02:00", "170")
	put(t, h, "Observation", "o5", `"status":"preliminary","code":{"coding":[{"system":"http://snomed.info/sct","code":"123"}]},"subject":{"reference":"http://other.example/fhir/Patient/p9"}`)
	put(t, h, "RiskAssessment", "r1", `"status":"final","subject":{"reference":"Patient/p1"},"prediction":[{"probabilityDecimal":0.25}]`)
	put(t, h, "RiskAssessment", "r2", `"status":"final","subject":{"reference":"Patient/p2"},"prediction":[{"probabilityDecimal":0.8}]`)
	put(t, h, "ValueSet", "v1", `"status":"active","url":"http://example.org/fhir/ValueSet/a"`)
	put(t, h, "ValueSet", "v2", `"status":"active","url":"http://example.org/fhir/ValueSet/a/b"`)
	put(t, h, "ValueSet", "v3", `"status":"active","url":"http://other.org/vs"`)
	return h
}

// TestSearchApproxDateFollowsClock checks that "ap" on a date widens by
// 10% of the distance from the server's clock, not from the wall clock.
func TestSearchApproxDateFollowsClock(t *testing.T) {
	for _, tc := range []struct {
		now  time.Time
		want string
	}{
		// 49.5 years away: ±4.95 years reaches 1979-12, not 1980-03.
		{time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC), "p1"},
		// 125 years away: ±12.5 years reaches p2 (1980-03) too.
		{time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), "p1,p2"},
		// Near the date, the widening is at least a day.
		{time.Date(1974, 12, 21, 0, 0, 0, 0, time.UTC), ""},
	} {
		h := newTestServerAt(t, newTestClock(tc.now))
		put(t, h, "Patient", "p1", `"birthDate":"1974-12-25"`)
		put(t, h, "Patient", "p2", `"birthDate":"1980-03"`)
		if got := strings.Join(ids(t, h, "Patient?birthdate=ap1974-12-20"), ","); got != tc.want {
			t.Errorf("now %s: got [%s], want [%s]", tc.now.Format("2006-01-02"), got, tc.want)
		}
	}
}

func TestSearchParameterTypes(t *testing.T) {
	h := searchFixture(t)
	cases := []struct {
		query string
		want  string
	}{
		// string: prefix, case and accent insensitive by default
		{"Patient?name=chal", "p1,p2"},
		{"Patient?family=CHALMERS", "p1,p2"},
		{"Patient?name=muller", "p3"},
		{"Patient?given=jose", "p3"},
		{"Patient?name=jones", ""},
		{"Patient?name:contains=jones", "p4"},
		{"Patient?name:contains=ALM", "p1,p2"},
		{"Patient?name:exact=Chalmers", "p1,p2"},
		{"Patient?name:exact=chalmers", ""},
		{"Patient?name=peter,ellen", "p1,p2"},
		{"Patient?name=chalmers&given=ellen", "p2"},
		// token
		{"Patient?gender=male", "p1,p3"},
		{"Patient?gender:not=male", "p2,p4"},
		{"Patient?identifier=A1", "p1,p2"},
		{"Patient?identifier=urn:mrn|A1", "p1"},
		{"Patient?identifier=urn:mrn|", "p1"},
		{"Patient?identifier=|A1", ""},
		{"Patient?email=peter@example.org", "p1"},
		{"Patient?active=true", "p1"},
		{"Observation?code=http://loinc.org|29463-7", "o1,o2,o3"},
		{"Observation?code=29463-7,8302-2", "o1,o2,o3,o4"},
		{"Observation?code:text=weight", "o1,o2,o3,o4"},
		{"Observation?code:text=body", "o1,o2,o3,o4"},
		{"Patient?_tag=urn:t|vip", "p3"},
		{"Patient?_id=p1,p3", "p1,p3"},
		// reference
		{"Observation?subject=Patient/p1", "o1,o2"},
		{"Observation?patient=p1", "o1,o2"},
		{"Observation?subject:Patient=p2", "o3,o4"},
		{"Observation?subject=http://other.example/fhir/Patient/p9", "o5"},
		{"Observation?encounter=e1", "o1,o2,o3,o4"},
		// date, with precision ranges
		{"Patient?birthdate=1974", "p1"},
		{"Patient?birthdate=1974-12-25", "p1"},
		{"Patient?birthdate=eq1980", "p2"},
		{"Patient?birthdate=ne1980", "p1,p3"},
		{"Patient?birthdate=gt1980-03-15", "p2,p3"}, // 1980-03 reaches past the 15th
		{"Patient?birthdate=gt1980-03", "p3"},
		{"Patient?birthdate=ge1980-03", "p2,p3"},
		{"Patient?birthdate=lt1980", "p1"},
		{"Patient?birthdate=le1980-03-31", "p1,p2"},
		{"Patient?birthdate=sa1980", "p3"},
		{"Patient?birthdate=eb1980", "p1"},
		{"Patient?birthdate=ap1974-12-20", "p1"},
		{"Patient?birthdate=ge1975&birthdate=le2000", "p2"},
		{"Observation?date=2015", "o1"},
		{"Observation?date=2015-01-01T10:30:00Z", "o1"},
		{"Observation?date=2015-01-01T10:30Z", "o1"},
		{"Observation?date=2017-04-30T22:00:00Z", "o4"},
		{"Observation?date=ge2016-06-15", "o2,o3,o4"},
		{"Observation?date=2017", "o3,o4"},
		{"Encounter?date=2015-01-01", "e1"},
		{"Encounter?date=gt2015-01-02", ""},
		// number
		{"RiskAssessment?probability=0.25", "r1"},
		{"RiskAssessment?probability=gt0.5", "r2"},
		{"RiskAssessment?probability=le0.25", "r1"},
		{"RiskAssessment?probability=ne0.25", "r2"},
		{"RiskAssessment?probability=ap0.79", "r2"},
		// quantity
		{"Observation?value-quantity=70", "o1"},
		{"Observation?value-quantity=gt60", "o1,o2,o4"},
		{"Observation?value-quantity=lt70|http://unitsofmeasure.org|kg", "o3"},
		{"Observation?value-quantity=72.5||kg", "o2"},
		{"Observation?value-quantity=ge170|http://unitsofmeasure.org|cm", ""},
		{"Observation?value-quantity=ap72", "o1,o2"},
		// uri
		{"ValueSet?url=http://example.org/fhir/ValueSet/a", "v1"},
		{"ValueSet?url:below=http://example.org/fhir", "v1,v2"},
		{"ValueSet?url:above=http://example.org/fhir/ValueSet/a/b/c", "v1,v2"},
		// :missing
		{"Patient?birthdate:missing=true", "p4"},
		{"Patient?birthdate:missing=false", "p1,p2,p3"},
		{"Observation?value-quantity:missing=true", "o5"},
		// compartment
		{"Patient/p1/Observation", "o1,o2"},
		{"Patient/p2/Observation?code=8302-2", "o4"},
		{"Patient/p1/Encounter", "e1"},
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			got := strings.Join(ids(t, h, c.query), ",")
			if got != c.want {
				t.Errorf("got [%s], want [%s]", got, c.want)
			}
		})
	}
}

func TestSearchResultParameters(t *testing.T) {
	h := searchFixture(t)
	t.Run("_sort", func(t *testing.T) {
		for q, want := range map[string]string{
			"Patient?_sort=birthdate":          "p1,p2,p3,p4",
			"Patient?_sort=-birthdate":         "p3,p2,p1,p4",
			"Patient?_sort=family,-given":      "p1,p2,p3,p4",
			"Patient?_sort=gender,_id":         "p2,p1,p3,p4",
			"Patient?_sort=-_id":               "p4,p3,p2,p1",
			"Observation?_sort=-date&_count=2": "o3,o4", // 2017 ends after 2017-05-01
			"Observation?_sort=value-quantity": "o3,o1,o2,o4,o5",
			"Patient?_sort=_lastUpdated":       "p1,p2,p3,p4",
			"Patient?_sort=-_lastUpdated":      "p4,p3,p2,p1",
		} {
			if got := strings.Join(ids(t, h, q), ","); got != want {
				t.Errorf("%s: got %s, want %s", q, got, want)
			}
		}
	})
	t.Run("_count and _total", func(t *testing.T) {
		r := do(t, h, "GET", "/fhir/R4/Observation?_count=2", nil)
		b := r.json(t)
		if len(entries(t, b)) != 2 || b["total"].(float64) != 5 || nextLink(b) == "" {
			t.Errorf("page: %s", r.body)
		}
		b = do(t, h, "GET", "/fhir/R4/Observation?_count=2&_total=none", nil).json(t)
		if _, ok := b["total"]; ok {
			t.Error("_total=none still gives a total")
		}
		b = do(t, h, "GET", "/fhir/R4/Observation?_count=0", nil).json(t)
		if len(entries(t, b)) != 0 || b["total"].(float64) != 5 {
			t.Errorf("_count=0: %v", b)
		}
		b = do(t, h, "GET", "/fhir/R4/Observation?_count=100000", nil).json(t)
		if len(entries(t, b)) != 5 {
			t.Error("capped _count lost matches")
		}
	})
	t.Run("_summary=count", func(t *testing.T) {
		b := do(t, h, "GET", "/fhir/R4/Observation?patient=p1&_summary=count", nil).json(t)
		if b["total"].(float64) != 2 || b["entry"] != nil {
			t.Errorf("%v", b)
		}
	})
	t.Run("_elements", func(t *testing.T) {
		b := do(t, h, "GET", "/fhir/R4/Patient?_id=p1&_elements=gender,name", nil).json(t)
		p := entries(t, b)[0]
		if p["gender"] != "male" || p["name"] == nil || p["birthDate"] != nil || p["id"] != "p1" {
			t.Errorf("_elements: %v", p)
		}
		tags := p["meta"].(map[string]any)["tag"].([]any)
		if tags[len(tags)-1].(map[string]any)["code"] != "SUBSETTED" {
			t.Error("no SUBSETTED tag")
		}
	})
	t.Run("_summary", func(t *testing.T) {
		p := do(t, h, "GET", "/fhir/R4/Observation/o1?_summary=true", nil).json(t)
		if p["code"] == nil || p["status"] == nil || p["valueQuantity"] == nil {
			t.Errorf("_summary=true dropped summary elements: %v", p)
		}
		p = entries(t, do(t, h, "GET", "/fhir/R4/Patient?_id=p1&_summary=data", nil).json(t))[0]
		if p["text"] != nil || p["name"] == nil {
			t.Errorf("_summary=data: %v", p)
		}
	})
	t.Run("self link drops unknown parameters", func(t *testing.T) {
		b := do(t, h, "GET", "/fhir/R4/Patient?gender=male&bogus=1", nil, "Prefer", "handling=lenient").json(t)
		self := b["link"].([]any)[0].(map[string]any)["url"].(string)
		if strings.Contains(self, "bogus") || !strings.Contains(self, "gender=male") {
			t.Errorf("self link %s", self)
		}
	})
	t.Run("POST _search", func(t *testing.T) {
		r := do(t, h, "POST", "/fhir/R4/Patient/_search", "gender=female", "Content-Type", "application/x-www-form-urlencoded")
		mustStatus(t, r, 200)
		if got := entries(t, r.json(t)); len(got) != 1 || got[0]["id"] != "p2" {
			t.Errorf("POST _search: %s", r.body)
		}
	})
}

func TestIncludes(t *testing.T) {
	h := searchFixture(t)
	types := func(query string) []string {
		r := do(t, h, "GET", "/fhir/R4/"+query, nil)
		mustStatus(t, r, 200)
		var out []string
		es, _ := r.json(t)["entry"].([]any)
		for _, e := range es {
			m := e.(map[string]any)
			res := m["resource"].(map[string]any)
			out = append(out, m["search"].(map[string]any)["mode"].(string)+":"+res["resourceType"].(string)+"/"+res["id"].(string))
		}
		sort.Strings(out)
		return out
	}
	cases := map[string]string{
		"Observation?_id=o1&_include=Observation:subject":                                            "include:Patient/p1,match:Observation/o1",
		"Observation?_id=o1&_include=Observation:subject:Practitioner":                               "match:Observation/o1",
		"Observation?_id=o1,o2&_include=Observation:encounter&_include=Observation:patient":          "include:Encounter/e1,include:Patient/p1,match:Observation/o1,match:Observation/o2",
		"Observation?_id=o1&_include=*":                                                              "include:Encounter/e1,include:Patient/p1,match:Observation/o1",
		"Patient?_id=p1&_revinclude=Observation:subject":                                             "include:Observation/o1,include:Observation/o2,match:Patient/p1",
		"Patient?_id=p2&_revinclude=RiskAssessment:subject&_revinclude=Encounter:subject":            "include:RiskAssessment/r2,match:Patient/p2",
		"Encounter?_id=e1&_revinclude=Observation:encounter&_include:iterate=Observation:subject":    "include:Observation/o1,include:Observation/o2,include:Observation/o3,include:Observation/o4,include:Patient/p1,include:Patient/p2,match:Encounter/e1",
		"Encounter?_id=e1&_revinclude=Observation:encounter&_include=Observation:subject&_count=100": "include:Observation/o1,include:Observation/o2,include:Observation/o3,include:Observation/o4,match:Encounter/e1",
	}
	for q, want := range cases {
		if got := strings.Join(types(q), ","); got != want {
			t.Errorf("%s:\n got %s\nwant %s", q, got, want)
		}
	}
	// A deleted target is not included.
	mustStatus(t, do(t, h, "DELETE", "/fhir/R4/Encounter/e1", nil), 204)
	if got := types("Observation?_id=o1&_include=Observation:encounter"); !slices.Equal(got, []string{"match:Observation/o1"}) {
		t.Errorf("deleted include: %v", got)
	}
}

// Pages of a search stay exactly the matches as they were at the first
// page while other clients create and delete matching resources.
func TestPagingUnderConcurrentWrites(t *testing.T) {
	h := newTestServer(t)
	const n = 45
	want := map[string]bool{}
	for i := 0; i < n; i++ {
		id := "q" + strings.Repeat("0", 2-len(itoa(i))) + itoa(i)
		put(t, h, "Patient", id, `"gender":"unknown"`)
		want[id] = true
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	seen := map[string]int{}
	next := "/fhir/R4/Patient?gender=unknown&_count=10"
	pages := 0
	total := -1.0
	for next != "" {
		r := do(t, h, "GET", next, nil)
		mustStatus(t, r, 200)
		b := r.json(t)
		if total < 0 {
			total = b["total"].(float64)
		} else if b["total"].(float64) != total {
			t.Errorf("total changed from %v to %v between pages", total, b["total"])
		}
		for _, e := range entries(t, b) {
			seen[e["id"].(string)]++
		}
		next = strings.TrimPrefix(nextLink(b), "http://fhir.test")
		if pages == 0 { // the others start writing once the search has run
			go func() {
				defer close(done)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					do(t, h, "POST", "/fhir/R4/Patient", `{"resourceType":"Patient","gender":"unknown"}`)
					do(t, h, "DELETE", "/fhir/R4/Patient/q"+itoa(10+i%30), nil)
				}
			}()
		}
		pages++
		if pages > 20 {
			t.Fatal("paging does not end")
		}
	}
	close(stop)
	<-done
	if total != n || len(seen) != n {
		t.Errorf("total %v, %d distinct matches, want %d", total, len(seen), n)
	}
	for id, c := range seen {
		if c != 1 || !want[id] {
			t.Errorf("%s seen %d times (in the original set: %v)", id, c, want[id])
		}
	}
	// A prev link leads back.
	b := do(t, h, "GET", "/fhir/R4/Patient?gender=unknown&_count=10&_offset=10", nil).json(t)
	hasPrev := false
	for _, l := range b["link"].([]any) {
		hasPrev = hasPrev || l.(map[string]any)["relation"] == "previous"
	}
	if !hasPrev {
		t.Error("no previous link on the second page")
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
