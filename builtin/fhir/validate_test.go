package fhir

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// usCoreFile writes the committed US Core 5.0.1 StructureDefinitions as a
// JSON file (an array of resources), as fhir.validation.packages takes
// one, and returns its path.
func usCoreFile(t testing.TB) string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "us-core", "uscore-v5.0.1-structuredefinitions.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "us-core.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func withUSCore(t testing.TB) func(*Config) {
	path := usCoreFile(t)
	return func(c *Config) { c.Validation.Packages = []string{path} }
}

// issuesOf returns "severity code expression" of each issue of an
// OperationOutcome.
func issuesOf(t testing.TB, r resp) []string {
	t.Helper()
	var oo struct {
		ResourceType string
		Issue        []struct {
			Severity, Code string
			Expression     []string
		}
	}
	if err := json.Unmarshal(r.body, &oo); err != nil || oo.ResourceType != "OperationOutcome" {
		t.Fatalf("status %d: not an OperationOutcome: %s", r.status, truncateBody(r.body))
	}
	var out []string
	for _, is := range oo.Issue {
		out = append(out, is.Severity+" "+is.Code+" "+strings.Join(is.Expression, ","))
	}
	return out
}

func hasIssue(t testing.TB, r resp, want string) {
	t.Helper()
	if got := issuesOf(t, r); !slices.Contains(got, want) {
		t.Errorf("no issue %q in %q", want, got)
	}
}

const obsNoStatus = `{"resourceType":"Observation","code":{"text":"weight"},"valueQuantity":{"value":70}}`

// Every write path validates against the core StructureDefinitions: a
// resource that parses but fails them is 422, with each issue at its
// expression; one that breaks the schema stays 400.
func TestWritesValidated(t *testing.T) {
	h := newTestServer(t)
	r := do(t, h, "POST", "/fhir/R4/Observation", obsNoStatus)
	mustStatus(t, r, 422)
	hasIssue(t, r, "error required Observation.status")

	// All issues, not the first.
	r = do(t, h, "POST", "/fhir/R4/Observation", `{"resourceType":"Observation","code":{"text":"x"},"valueString":"a","dataAbsentReason":{"text":"b"},"referenceRange":[{"appliesTo":[{"text":"c"}]}]}`)
	mustStatus(t, r, 422)
	for _, w := range []string{"error required Observation.status", "error invariant Observation", "error invariant Observation.referenceRange[0]"} {
		hasIssue(t, r, w)
	}

	r = do(t, h, "PUT", "/fhir/R4/Observation/o1", strings.Replace(obsNoStatus, `{`, `{"id":"o1",`, 1))
	mustStatus(t, r, 422)
	hasIssue(t, r, "error required Observation.status")

	// Schema failures are 400.
	r = do(t, h, "POST", "/fhir/R4/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"issued":"yesterday"}`)
	mustStatus(t, r, 400)

	// A patch whose result fails.
	r = do(t, h, "PUT", "/fhir/R4/Observation/o1", `{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}}`)
	mustStatus(t, r, 201)
	r = do(t, h, "PATCH", "/fhir/R4/Observation/o1", `[{"op":"remove","path":"/status"}]`, "Content-Type", "application/json-patch+json")
	mustStatus(t, r, 422)
	hasIssue(t, r, "error required Observation.status")

	// A transaction fails as a whole, at the entry's expression (the
	// resource's own expression under the entry's resource, as the
	// schema's issues are).
	tx := `{"resourceType":"Bundle","type":"transaction","entry":[
		{"resource":{"resourceType":"Observation","status":"final","code":{"text":"ok"}},"request":{"method":"POST","url":"Observation"}},
		{"resource":` + obsNoStatus + `,"request":{"method":"POST","url":"Observation"}}]}`
	r = do(t, h, "POST", "/fhir/R4", tx)
	mustStatus(t, r, 422)
	hasIssue(t, r, "error required Bundle.entry[1].resource.Observation.status")

	// A batch fails the entry only.
	r = do(t, h, "POST", "/fhir/R4", strings.Replace(tx, `"transaction"`, `"batch"`, 1))
	mustStatus(t, r, 200)
	var batch struct {
		Entry []struct{ Response struct{ Status string } }
	}
	json.Unmarshal(r.body, &batch)
	if len(batch.Entry) != 2 || !strings.HasPrefix(batch.Entry[0].Response.Status, "201") || !strings.HasPrefix(batch.Entry[1].Response.Status, "422") {
		t.Errorf("batch: %s", truncateBody(r.body))
	}

	// Off: stored as before.
	off := false
	for _, mod := range []func(*Config){
		func(c *Config) { c.Validation.Core = &off },
		func(c *Config) { c.SchemaValidation = &off },
	} {
		mustStatus(t, do(t, newTestServer(t, mod), "POST", "/fhir/R4/Observation", obsNoStatus), 201)
	}
}

// Import validates like any write, unless the importer opts out.
func TestImportValidated(t *testing.T) {
	h := newTestServer(t)
	ndjson := `{"resourceType":"Observation","id":"a","status":"final","code":{"text":"x"}}` + "\n" +
		strings.Replace(obsNoStatus, `{`, `{"id":"b",`, 1) + "\n"
	sum, err := h.Import(context.Background(), strings.NewReader(ndjson), nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Failed == 0 || !strings.Contains(strings.Join(sum.Errors, " "), "Observation.status") {
		t.Errorf("import: %+v", sum)
	}
	sum, err = h.Import(SkipValidation(context.Background()), strings.NewReader(ndjson), nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Failed != 0 || sum.Created+sum.Updated != 2 {
		t.Errorf("import without validation: %+v", sum)
	}
	// Opting out keeps the schema and the input checks.
	sum, _ = h.Import(SkipValidation(context.Background()), strings.NewReader(`{"resourceType":"Observation","status":"final","code":{"text":"x"},"issued":"yesterday"}`+"\n"), nil)
	if sum.Failed != 1 {
		t.Errorf("schema: %+v", sum)
	}
}

// Bodies that FHIR's JSON rules forbid are refused with 400 at input, on
// every write path.
func TestInputHardening(t *testing.T) {
	h := newTestServer(t)
	bad := map[string]string{
		"invalid UTF-8":     "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Ren\xe9\"}]}",
		"big integer":       `{"resourceType":"Patient","multipleBirthInteger":9007199254740992}`,
		"negative integer":  `{"resourceType":"Patient","multipleBirthInteger":-90071992547409930}`,
		"precise decimal":   `{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":0.1000000000000000055511151231257827}}`,
		"decimal too large": `{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e400}}`,
	}
	for name, body := range bad {
		t.Run(name, func(t *testing.T) {
			typ := strings.Split(strings.Split(body, `"resourceType":"`)[1], `"`)[0]
			r := do(t, h, "POST", "/fhir/R4/"+typ, body)
			mustStatus(t, r, 400)
			if name != "invalid UTF-8" && !strings.Contains(issuesOf(t, r)[0], typ+".") {
				t.Errorf("no expression: %q", issuesOf(t, r))
			}
			tx := `{"resourceType":"Bundle","type":"transaction","entry":[{"resource":` + body + `,"request":{"method":"POST","url":"` + typ + `"}}]}`
			mustStatus(t, do(t, h, "POST", "/fhir/R4", tx), 400)
			sum, err := h.Import(context.Background(), strings.NewReader(body+"\n"), nil)
			if err == nil && sum.Failed != 1 {
				t.Errorf("import: %+v", sum)
			}
		})
	}
	for _, ok := range []string{
		`{"resourceType":"Patient","multipleBirthInteger":2}`,
		`{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}`,
		`{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":-9007199254740991}}`,
		`{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":6.02e23}}`,
		"{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Ren\u00e9 \U0001F600\"}]}",
	} {
		typ := strings.Split(strings.Split(ok, `"resourceType":"`)[1], `"`)[0]
		mustStatus(t, do(t, h, "POST", "/fhir/R4/"+typ, ok), 201)
	}
}

func TestNumberProblem(t *testing.T) {
	for s, bad := range map[string]bool{
		"0": false, "-0": false, "9007199254740991": false, "-9007199254740991": false, "9007199254740992": true,
		"123456789012345678901234567890": true, "0.1": false, "1.10": false, "1e2": false, "1E+2": false, "1.5e-7": false,
		"0.30000000000000004": false, "0.3000000000000000444": true, "3.141592653589793238": true, "1e400": true, "1e-400": true,
		"0.000": false, "1e-1000000000000": true,
	} {
		if got := numberProblem(s) != ""; got != bad {
			t.Errorf("%s: problem %v, want %v (%s)", s, got, bad, numberProblem(s))
		}
	}
}

// Profiles from a configured package: the example Bundles' US Core
// patients are valid; a broken one fails with the profile's expressions;
// an unknown profile does not fail a write.
func TestProfilesFromPackages(t *testing.T) {
	h := newTestServer(t, withUSCore(t))
	patient := examplePatient(t)
	body, _ := json.Marshal(patient)
	mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient/85", body), 201)

	delete(patient, "identifier")
	race := patient["extension"].([]any)[0].(map[string]any)
	race["extension"] = []any{map[string]any{"url": "ombCategory", "valueString": "White"}}
	body, _ = json.Marshal(patient)
	r := do(t, h, "PUT", "/fhir/R4/Patient/85", body)
	mustStatus(t, r, 422)
	for _, w := range []string{"error required Patient.identifier", "error structure Patient.extension[0].extension[0].valueString", "error required Patient.extension[0].extension"} {
		hasIssue(t, r, w)
	}

	r = do(t, h, "POST", "/fhir/R4/Patient", `{"resourceType":"Patient","meta":{"profile":["http://example.org/unknown"]}}`)
	mustStatus(t, r, 201)

	off := false
	h = newTestServer(t, withUSCore(t), func(c *Config) { c.Validation.Profiles = &off })
	mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient/85", body), 201)
}

// examplePatient is Patient/85 of the US Core example Bundle.
func examplePatient(t testing.TB) map[string]any {
	t.Helper()
	data := sharedExample(t, "uscore_bundle_patient_85.json")
	var b struct {
		Entry []struct{ Resource map[string]any }
	}
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if err := d.Decode(&b); err != nil {
		t.Fatal(err)
	}
	for _, e := range b.Entry {
		if e.Resource["resourceType"] == "Patient" {
			return e.Resource
		}
	}
	t.Fatal("no Patient")
	return nil
}

func TestValidateOperation(t *testing.T) {
	h := newTestServer(t, withUSCore(t))
	okObs := `{"resourceType":"Observation","status":"final","code":{"text":"x"}}`
	info := []string{"information informational "}
	for _, c := range []struct {
		name, method, path, body string
		status                   int
		want                     []string
	}{
		{"type, clean", "POST", "/Observation/$validate", okObs, 200, info},
		{"type, issues", "POST", "/Observation/$validate", obsNoStatus, 200, []string{"error required Observation.status"}},
		{"type, schema issues", "POST", "/Observation/$validate", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"issued":"yesterday"}`, 200,
			[]string{"error structure Observation.issued"}},
		{"Parameters", "POST", "/Observation/$validate", `{"resourceType":"Parameters","parameter":[{"name":"resource","resource":` + obsNoStatus + `},{"name":"mode","valueCode":"create"}]}`, 200,
			[]string{"error required Observation.status"}},
		{"profile parameter", "POST", "/Patient/$validate", `{"resourceType":"Parameters","parameter":[{"name":"resource","resource":{"resourceType":"Patient"}},{"name":"profile","valueUri":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"}]}`, 200,
			[]string{"error invariant Patient", "error required Patient.identifier", "error required Patient.name", "error required Patient.gender"}},
		{"profile query", "POST", "/Patient/$validate?profile=http://example.org/nope", `{"resourceType":"Patient"}`, 200,
			[]string{"error not-supported Patient"}},
		{"unknown declared profile", "POST", "/Patient/$validate", `{"resourceType":"Patient","meta":{"profile":["http://example.org/nope"]}}`, 200,
			[]string{"warning not-supported Patient.meta.profile[0]"}},
		{"update without id", "POST", "/Observation/$validate?mode=update", okObs, 200, []string{"error required Observation.id"}},
		{"update, other id", "POST", "/Observation/o1/$validate?mode=update", strings.Replace(okObs, "{", `{"id":"o2",`, 1), 200, []string{"error invalid Observation.id"}},
		{"instance, stored", "GET", "/Observation/o1/$validate", "", 200, info},
		{"instance, missing", "GET", "/Observation/nope/$validate", "", 404, nil},
		{"delete, exists", "POST", "/Observation/o1/$validate?mode=delete", "", 200, info},
		{"delete, missing", "POST", "/Observation/nope/$validate?mode=delete", "", 200, []string{"error not-found "}},
		{"delete, type level", "POST", "/Observation/$validate?mode=delete", "", 400, nil},
		{"bad mode", "POST", "/Observation/$validate?mode=frob", okObs, 400, nil},
		{"bad JSON", "POST", "/Observation/$validate", `{"resourceType":`, 400, nil},
		{"bad UTF-8", "POST", "/Observation/$validate", "{\"resourceType\":\"Observation\",\"status\":\"fin\xffal\"}", 400, nil},
		{"other type", "POST", "/Observation/$validate", `{"resourceType":"Patient"}`, 400, nil},
		{"no resource", "POST", "/Observation/$validate", "", 400, nil},
		{"GET type level", "GET", "/Observation/$validate", "", 405, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "instance, stored" || c.name == "delete, exists" {
				if r := do(t, h, "PUT", "/fhir/R4/Observation/o1", strings.Replace(okObs, "{", `{"id":"o1",`, 1)); r.status != 200 && r.status != 201 {
					t.Fatalf("PUT: %d", r.status)
				}
			}
			var body any
			if c.body != "" {
				body = c.body
			}
			r := do(t, h, c.method, "/fhir/R4"+c.path, body)
			mustStatus(t, r, c.status)
			if c.want != nil && strings.Join(issuesOf(t, r), "|") != strings.Join(c.want, "|") {
				t.Errorf("issues %q, want %q", issuesOf(t, r), c.want)
			}
		})
	}
}
