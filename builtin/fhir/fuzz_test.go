package fhir

import (
	"encoding/json"
	"net/url"
	"strconv"
	"testing"
	"unicode/utf8"
)

// FuzzResourceJSON posts arbitrary bodies: the server answers 201 or a 4xx
// OperationOutcome, never fails, and what it accepted reads back as JSON
// with the server's id.
func FuzzResourceJSON(f *testing.F) {
	for _, s := range []string{
		patientJSON,
		`{"resourceType":"Patient"}`,
		`{"resourceType":"Patient","id":"a","meta":{"versionId":"x"},"name":[{"given":["\u00e9"]}]}`,
		`{"resourceType":"Patient","meta":5}`,
		`{"resourceType":"Patient","contained":[{"resourceType":"Organization","name":"o"}]}`,
		`{"resourceType":"Patient","extension":[{"url":"http://x","valueDecimal":1.50e3}]}`,
		`{"resourceType":"Patient","birthDate":"1974-02-29"}`,
		`{"resourceType":"Observation"}`,
		`{"resourceType":"Patient",`,
		`[]`, `null`, `{"resourceType":"Patient"}{}`, "\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	h := newTestServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		r := do(t, h, "POST", "/fhir/R4/Patient", body)
		switch {
		case r.status == 201:
			var p map[string]any
			if err := json.Unmarshal(r.body, &p); err != nil {
				t.Fatalf("accepted body stored as invalid JSON: %v", err)
			}
			id, _ := p["id"].(string)
			got := do(t, h, "GET", "/fhir/R4/Patient/"+id, nil)
			if got.status != 200 || string(got.body) != string(r.body) {
				t.Fatalf("read back %d: %s, created %s", got.status, got.body, r.body)
			}
		case r.status >= 400 && r.status < 500:
			if r.json(t)["resourceType"] != "OperationOutcome" {
				t.Fatalf("%d without OperationOutcome", r.status)
			}
		default:
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	})
}

// FuzzSearchQuery runs arbitrary query strings: 200 or 400, never more.
func FuzzSearchQuery(f *testing.F) {
	for _, s := range []string{
		"patient=85&code=http://loinc.org|72166-2",
		"date=ge2015-01-01&_sort=-date&_count=5",
		"value-quantity=le5.4|http://unitsofmeasure.org|mg&_include=Observation:subject",
		"code:text=weight&_revinclude=Provenance:target&_elements=code,subject",
		"subject:Patient=x&_summary=count&_total=accurate",
		"status:missing=true&_id=a,b&_lastUpdated=gt2020",
		"date=ap2020-01-01T10:00:00+02:00&_page=abc&_offset=3",
		"code=a\\,b,c&_sort=code,-_id", "_count=x", "date=2020-13", "%zz",
		"subject:Patient.name=x&patient.identifier=a|b", "_has:Provenance:target:agent=x", "subject.name:exact=x,y",
		"patient._has:Observation:patient:code=1", "code-value-quantity=http://loinc.org|1$gt5|u|kg",
		"component-code-value-quantity=1$le5,2$ge3&combo-code-value-concept=a$b|c",
	} {
		f.Add(s)
	}
	h := newTestServer(f)
	put(f, h, "Observation", "o1", `"status":"final","code":{"text":"weight"},"subject":{"reference":"Patient/x"},"effectiveDateTime":"2020-01-01"`)
	f.Fuzz(func(t *testing.T, query string) {
		vals, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		r := do(t, h, "GET", "/fhir/R4/Observation?"+vals.Encode(), nil)
		if r.status != 200 && r.status != 400 {
			t.Fatalf("%q: status %d: %s", query, r.status, r.body)
		}
	})
}

// FuzzInputChecks runs the input checks of every write on arbitrary
// bodies: what they accept is valid UTF-8 whose numbers a double keeps,
// and they never fail.
func FuzzInputChecks(f *testing.F) {
	for _, s := range []string{
		`{"resourceType":"Patient","multipleBirthInteger":9007199254740991}`,
		`{"resourceType":"Patient","multipleBirthInteger":9007199254740992}`,
		`{"a":[1.50,-0.0,1e308,1e309,2.2250738585072014e-308,0.1000000000000000055511151231257827]}`,
		"{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xc3\xa9\"}", `{"a":1E-1000000000000}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		tree, err := decodeInput(body, "")
		if err != nil {
			return
		}
		if !utf8.Valid(body) {
			t.Fatalf("accepted invalid UTF-8: %q", body)
		}
		var walk func(v any)
		walk = func(v any) {
			switch v := v.(type) {
			case map[string]any:
				for _, x := range v {
					walk(x)
				}
			case []any:
				for _, x := range v {
					walk(x)
				}
			case json.Number:
				f, err := strconv.ParseFloat(string(v), 64)
				if err != nil || !sameDecimal(string(v), strconv.FormatFloat(f, 'g', -1, 64)) {
					t.Fatalf("accepted %s", v)
				}
				if i, err := strconv.ParseInt(string(v), 10, 64); err == nil && (i > maxSafeInteger || i < -maxSafeInteger) {
					t.Fatalf("accepted integer %s", v)
				}
			}
		}
		walk(tree)
	})
}

// FuzzValidateOperation posts arbitrary bodies to $validate: 200 with an
// OperationOutcome, or a 4xx one, never more.
func FuzzValidateOperation(f *testing.F) {
	for _, s := range []string{
		`{"resourceType":"Observation","status":"final","code":{"text":"x"}}`,
		`{"resourceType":"Parameters","parameter":[{"name":"resource","resource":{"resourceType":"Observation"}},{"name":"mode","valueCode":"update"},{"name":"profile","valueUri":"http://x"}]}`,
		`{"resourceType":"Parameters","parameter":[{"name":"resource"},{"name":"mode","valueCode":5}]}`,
		`{"resourceType":"Observation","valueQuantity":{"value":1e999}}`,
	} {
		f.Add([]byte(s))
	}
	h := newTestServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		r := do(t, h, "POST", "/fhir/R4/Observation/$validate", body)
		if r.status != 200 && (r.status < 400 || r.status >= 500) {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		if r.json(t)["resourceType"] != "OperationOutcome" {
			t.Fatalf("%d without OperationOutcome", r.status)
		}
	})
}
