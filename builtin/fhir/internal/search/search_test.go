package search

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestParseDate(t *testing.T) {
	ms := func(s string) int64 {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm.UnixMilli()
	}
	cases := []struct{ in, lo, hi string }{
		{"2015", "2015-01-01T00:00:00Z", "2016-01-01T00:00:00Z"},
		{"2015-02", "2015-02-01T00:00:00Z", "2015-03-01T00:00:00Z"},
		{"2016-02-29", "2016-02-29T00:00:00Z", "2016-03-01T00:00:00Z"},
		{"2015-02-07T13:28", "2015-02-07T13:28:00Z", "2015-02-07T13:29:00Z"},
		{"2015-02-07T13:28:17Z", "2015-02-07T13:28:17Z", "2015-02-07T13:28:18Z"},
		{"2015-02-07T13:28:17.239+02:00", "2015-02-07T11:28:17.239Z", "2015-02-07T11:28:17.240Z"},
		{"2015-02-07T13:28:17-05:00", "2015-02-07T18:28:17Z", "2015-02-07T18:28:18Z"},
	}
	for _, c := range cases {
		lo, hi, err := ParseDate(c.in)
		if err != nil || lo != ms(c.lo) || hi != ms(c.hi) {
			t.Errorf("%s: [%d, %d) %v, want [%s, %s)", c.in, lo, hi, err, c.lo, c.hi)
		}
	}
	for _, bad := range []string{"", "15", "2015-13", "2015-02-30", "2015-02-07T25:00", "2015-02-07 13:28", "2015-02-07T13:28:17+2", "2015-02-07T13:28:17.Z", "2015x"} {
		if _, _, err := ParseDate(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{"Müller": "muller", "  José  María ": "jose maria", "ÅNGSTRÖM": "angstrom", "plain": "plain"} {
		if got := Normalize(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func TestParseQuery(t *testing.T) {
	q, err := Parse("Observation", url.Values{
		"code":            {"http://loinc.org|1,2\\,3"},
		"date":            {"ge2015", "lt2016-01"},
		"subject:Patient": {"85"},
		"value-quantity":  {"le5.40|http://unitsofmeasure.org|mg"},
		"_sort":           {"-date,code"},
		"_include":        {"Observation:subject:Patient"},
		"_count":          {"5000"},
		"bogus":           {"1"},
	}, Options{Lenient: true})
	if err != nil {
		t.Fatal(err)
	}
	if q.Count != 1000 || len(q.Clauses) != 5 || len(q.Sort) != 2 || !q.Sort[0].Desc || len(q.Includes) != 1 || q.Includes[0].Target != "Patient" {
		t.Fatalf("%+v", q)
	}
	if len(q.Unknown) != 1 || q.Self.Has("bogus") || !q.Self.Has("code") {
		t.Errorf("unknown %v self %v", q.Unknown, q.Self)
	}
	for _, c := range q.Clauses {
		switch c.Name {
		case "code":
			if len(c.Values) != 2 || c.Values[0].System != "http://loinc.org" || c.Values[1].Code != "2,3" {
				t.Errorf("code values %+v", c.Values)
			}
		case "subject":
			if c.Values[0].RefType != "Patient" || c.Values[0].RefID != "85" {
				t.Errorf("subject %+v", c.Values)
			}
		case "value-quantity":
			v := c.Values[0]
			if v.Prefix != "le" || v.Num != 5.4 || v.Half != 0.005 || v.Code != "mg" {
				t.Errorf("quantity %+v", v)
			}
		}
	}
	if _, err := Parse("Patient", url.Values{"bogus": {"1"}}, Options{}); err == nil {
		t.Error("unknown parameter accepted by default")
	}
	if q, err := Parse("Patient", url.Values{"bogus": {"1"}}, Options{Lenient: true}); err != nil || len(q.Unknown) != 1 || len(q.Self) != 0 {
		t.Errorf("lenient: %v %v", q, err)
	}
	if _, err := Parse("Patient", url.Values{"birthdate": {"xx"}, "gender:text:x": {"a"}}, Options{}); err == nil || len(err.(*Error).Problems) != 2 {
		t.Errorf("want two problems, got %v", err)
	}
}

func TestIndex(t *testing.T) {
	var res any
	d := json.NewDecoder(strings.NewReader(`{"resourceType":"Observation","id":"o","status":"final",
		"code":{"coding":[{"system":"http://loinc.org","code":"1","display":"Body Weight"}],"text":"Weight"},
		"subject":{"reference":"Patient/85"},"performer":[{"reference":"Patient/86"}],
		"effectivePeriod":{"start":"2020-01-01"},"valueQuantity":{"value":70,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}`))
	d.UseNumber()
	d.Decode(&res)
	e := Index("Observation", "o", res)
	has := func(what string, ok bool) {
		if !ok {
			t.Errorf("missing %s in %+v", what, e)
		}
	}
	find := func(p string, f func(i int) bool, n int) bool {
		for i := 0; i < n; i++ {
			if f(i) {
				return true
			}
		}
		return false
	}
	has("code token", find("", func(i int) bool {
		x := e.Tokens[i]
		return x.Param == "Observation.code" && x.System == "http://loinc.org" && x.Code == "1" && x.Text == "body weight"
	}, len(e.Tokens)))
	has("code text", find("", func(i int) bool { x := e.Tokens[i]; return x.Param == "Observation.code" && x.Text == "weight" }, len(e.Tokens)))
	has("patient ref", find("", func(i int) bool {
		x := e.Refs[i]
		return x.Param == "Observation.patient" && x.Type == "Patient" && x.ID == "85"
	}, len(e.Refs)))
	has("open period", find("", func(i int) bool { x := e.Dates[i]; return x.Param == "Observation.date" && x.Hi == MaxTime }, len(e.Dates)))
	has("quantity", find("", func(i int) bool {
		x := e.Quantities[i]
		return x.Param == "Observation.value-quantity" && x.Value == 70 && x.Code == "kg"
	}, len(e.Quantities)))
	if strings.Join(e.Compartments, ",") != "85,86" {
		t.Errorf("compartments %v", e.Compartments)
	}
	if c := Compartments("Observation", "o", res); strings.Join(c, ",") != "85,86" {
		t.Errorf("Compartments %v", c)
	}
}

// FuzzParseQuery feeds arbitrary query strings to the parser.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"patient=85&code=http://loinc.org|72166-2", "date=ge2015-01-01&_sort=-date", "value-quantity=ap5||mg",
		"subject:Patient=Patient/1&_include=Observation:subject:Patient&_include:iterate=*",
		"code:text=a\\,b&_elements=a,b&_summary=true&_total=none", "_count=3&_offset=9&_page=x",
		"date=2015-02-07T13:28:17.239+02:00", "component-value-quantity=gt1e3",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		vals, err := url.ParseQuery(s)
		if err != nil {
			return
		}
		q, err := Parse("Observation", vals, Options{})
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		if q.Count < 0 || q.Count > 1000 || q.Offset < 0 {
			t.Fatalf("count %d offset %d", q.Count, q.Offset)
		}
	})
}

// Access constraints parse strictly: what the server cannot evaluate is an
// error, never a constraint quietly dropped.
func TestParseConstraint(t *testing.T) {
	now := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		typ, query string
		clauses    int // -1: an error
	}{
		{"Observation", "category=laboratory", 1},
		{"Observation", "category=laboratory&status=final", 2},
		{"Observation", "category=laboratory,vital-signs", 1},
		{"Observation", "code:text=glucose&_lastUpdated=ge2020", 2},
		{"Observation", "_id=a", 1},
		{"Observation", "nonsense=1", -1},
		{"Observation", "patient.name=x", -1},
		{"Observation", "_count=1", -1},
		{"Observation", "_include=Observation:subject", -1},
		{"Observation", "_sort=date", -1},
		{"Observation", "_format=json", -1},
		{"Observation", "date=notadate", -1},
		{"Observation", "category:bogus=x", -1},
	} {
		v, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := ParseConstraint(tc.typ, v, now)
		got := len(cs)
		if err != nil {
			got = -1
		}
		if got != tc.clauses {
			t.Errorf("%s?%s: %d clauses (%v), want %d", tc.typ, tc.query, len(cs), err, tc.clauses)
		}
	}
}
