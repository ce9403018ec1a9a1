package fhir

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file; got:\n%s", path, got)
	}
}

// Every error answers with an OperationOutcome, the right status, one
// issue per problem with its location, and stores nothing.
func TestErrors(t *testing.T) {
	h := newTestServer(t, func(c *Config) { c.MaxBody = 2048 })
	mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient/p1", `{"resourceType":"Patient","id":"p1"}`), 201)
	big := `{"resourceType":"Patient","text":{"status":"generated","div":"` + strings.Repeat("x", 3000) + `"}}`
	cases := []struct {
		name, method, path, body string
		headers                  []string
		status                   int
	}{
		{"malformed JSON", "POST", "/fhir/R4/Patient", `{"resourceType":"Patient",`, nil, 400},
		{"JSON syntax", "POST", "/fhir/R4/Patient", "{\n\"resourceType\": \"Patient\"\n\"x\":1}", nil, 400},
		{"not an object", "POST", "/fhir/R4/Patient", `[1,2]`, nil, 400},
		{"empty body", "POST", "/fhir/R4/Patient", ``, nil, 400},
		{"trailing data", "POST", "/fhir/R4/Patient", `{"resourceType":"Patient"} {}`, nil, 400},
		{"no resourceType", "POST", "/fhir/R4/Patient", `{"id":"a"}`, nil, 400},
		{"unknown resourceType", "POST", "/fhir/R4/Patient", `{"resourceType":"Patientx"}`, nil, 400},
		{"resourceType mismatch", "POST", "/fhir/R4/Patient", `{"resourceType":"Observation","status":"final","code":{"text":"x"}}`, nil, 400},
		{"schema problems", "POST", "/fhir/R4/Patient", `{"resourceType":"Patient","gender":7,"birthDate":"1974-13-40","name":[{"given":"Peter"}]}`, nil, 400},
		{"contained problem", "POST", "/fhir/R4/Patient", `{"resourceType":"Patient","contained":[{"resourceType":"Organization","name":5}]}`, nil, 400},
		{"bad id in body", "PUT", "/fhir/R4/Patient/p1", `{"resourceType":"Patient","id":"a b"}`, nil, 400},
		{"missing id on update", "PUT", "/fhir/R4/Patient/p1", `{"resourceType":"Patient"}`, nil, 400},
		{"id mismatch on update", "PUT", "/fhir/R4/Patient/p1", `{"resourceType":"Patient","id":"p2"}`, nil, 400},
		{"bad id in URL", "GET", "/fhir/R4/Patient/" + strings.Repeat("a", 65), "", nil, 400},
		{"unknown type", "GET", "/fhir/R4/Patientx/1", "", nil, 404},
		{"unknown id", "GET", "/fhir/R4/Patient/nobody", "", nil, 404},
		{"unknown path", "GET", "/fhir/R4/Patient/p1/foo/bar/baz", "", nil, 404},
		{"method not allowed", "DELETE", "/fhir/R4/metadata", "", nil, 405},
		{"POST to an instance", "POST", "/fhir/R4/Patient/p1", `{"resourceType":"Patient"}`, nil, 405},
		{"XML Accept", "GET", "/fhir/R4/Patient/p1", "", []string{"Accept", "application/fhir+xml"}, 406},
		{"XML _format", "GET", "/fhir/R4/Patient/p1?_format=xml", "", nil, 406},
		{"XML body", "POST", "/fhir/R4/Patient", `<Patient xmlns="http://hl7.org/fhir"/>`, []string{"Content-Type", "application/fhir+xml"}, 415},
		{"text body", "POST", "/fhir/R4/Patient", `{}`, []string{"Content-Type", "text/plain"}, 415},
		{"body too large", "POST", "/fhir/R4/Patient", big, nil, 413},
		{"stale If-Match", "PUT", "/fhir/R4/Patient/p1", `{"resourceType":"Patient","id":"p1"}`, []string{"If-Match", `W/"5"`}, 412},
		{"bad If-Match", "PUT", "/fhir/R4/Patient/p1", `{"resourceType":"Patient","id":"p1"}`, []string{"If-Match", `banana`}, 400},
		{"unknown parameter, strict", "GET", "/fhir/R4/Patient?foo=bar", "", []string{"Prefer", "handling=strict"}, 400},
		{"bad date", "GET", "/fhir/R4/Patient?birthdate=1974-13", "", nil, 400},
		{"bad prefix value", "GET", "/fhir/R4/Observation?value-quantity=gtabc", "", nil, 400},
		{"unknown modifier", "GET", "/fhir/R4/Patient?name:fuzzy=x", "", nil, 400},
		{"bad _count", "GET", "/fhir/R4/Patient?_count=-1", "", nil, 400},
		{"bad _sort", "GET", "/fhir/R4/Patient?_sort=nonsense", "", nil, 400},
		{"bad _include", "GET", "/fhir/R4/Patient?_include=Patient", "", nil, 400},
		{"_include of a parameter that is no reference", "GET", "/fhir/R4/Patient?_include=Patient:name", "", nil, 400},
		{"not a Bundle at the base", "POST", "/fhir/R4", `{"resourceType":"Patient"}`, nil, 400},
		{"Bundle of the wrong type", "POST", "/fhir/R4", `{"resourceType":"Bundle","type":"collection"}`, nil, 400},
		{"PUT at the base", "PUT", "/fhir/R4", "", nil, 405},
		{"compartment of a type outside it", "GET", "/fhir/R4/Patient/p1/Organization", "", nil, 400},
	}
	var out bytes.Buffer
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := do(t, h, c.method, c.path, c.body, c.headers...)
			if r.status != c.status {
				t.Errorf("status %d, want %d: %s", r.status, c.status, r.body)
			}
			oo := r.json(t)
			if oo["resourceType"] != "OperationOutcome" || len(oo["issue"].([]any)) == 0 {
				t.Errorf("not an OperationOutcome: %s", r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != ContentType {
				t.Errorf("Content-Type %q", ct)
			}
			fmt.Fprintf(&out, "%s\n%s %s -> %d\n%s\n\n", c.name, c.method, c.path[:min(len(c.path), 60)], r.status, r.body)
		})
	}
	golden(t, "errors.golden", out.Bytes())
	// Nothing was stored by the failed writes.
	r := do(t, h, "GET", "/fhir/R4/_history", nil)
	if n := r.json(t)["total"].(float64); n != 1 {
		t.Errorf("history holds %v versions after failed writes, want 1", n)
	}
}
