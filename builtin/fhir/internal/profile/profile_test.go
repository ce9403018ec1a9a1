package profile

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// examples are the real US Core transaction Bundles (Synthea patients)
// committed for the FHIR server's tests.
const examples = "../../testdata/synthea"

func decode(t testing.TB, s string) map[string]any {
	t.Helper()
	v, err := decodeValue([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return v.(map[string]any)
}

func core(t testing.TB) *Set {
	t.Helper()
	s, err := Core()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// usCorePackage builds an NPM-style package .tgz of the committed US Core
// 5.0.1 StructureDefinitions, one file per definition, as a user supplies
// one.
func usCorePackage(t testing.TB) string {
	t.Helper()
	f, err := os.Open("../../testdata/us-core/uscore-v5.0.1-structuredefinitions.json.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var sds []json.RawMessage
	if err := json.NewDecoder(zr).Decode(&sds); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	put := func(name string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	put("package/package.json", []byte(`{"name":"hl7.fhir.us.core","version":"5.0.1"}`))
	for i, sd := range sds {
		put("package/StructureDefinition-"+string(rune('a'+i))+".json", sd)
	}
	put("package/example/Patient-example.json", []byte(`{"resourceType":"Patient"}`))
	tw.Close()
	zw.Close()
	path := filepath.Join(t.TempDir(), "us-core.tgz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func usCore(t testing.TB) *Set {
	t.Helper()
	res, err := Load(usCorePackage(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Structures) != 8 {
		t.Fatalf("%d StructureDefinitions, want 8", len(res.Structures))
	}
	s, err := core(t).With(res)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func exampleResources(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, f := range []string{"uscore_bundle_patient_85.json", "uscore_bundle_patient_355.json", "carin_bundle_patient_888.json"} {
		data, err := os.ReadFile(filepath.Join(examples, f))
		if err != nil {
			t.Fatal(err)
		}
		b := decode(t, string(data))
		for _, e := range b["entry"].([]any) {
			out = append(out, e.(map[string]any)["resource"].(map[string]any))
		}
	}
	return out
}

func errorsOf(issues []Issue) []Issue {
	var out []Issue
	for _, is := range issues {
		if is.Severity == "error" {
			out = append(out, is)
		}
	}
	return out
}

// The core definitions: each case breaks one rule and must get an issue at
// the expression, all issues reported.
func TestCoreRules(t *testing.T) {
	s := core(t)
	for _, c := range []struct {
		name, res string
		want      []string // "code expression" of each error
	}{
		{"valid", `{"resourceType":"Observation","status":"final","code":{"text":"x"}}`, nil},
		{"required element", `{"resourceType":"Observation","code":{"text":"x"}}`, []string{"required Observation.status"}},
		{"two required elements", `{"resourceType":"Observation"}`, []string{"required Observation.status", "required Observation.code"}},
		{"max", `{"resourceType":"Patient","birthDate":["2000-01-01","2001-01-01"]}`, []string{"structure Patient.birthDate"}},
		{"two choice types", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueString":"a","valueBoolean":true}`, []string{"structure Observation.value"}},
		{"choice type not allowed", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveCoding":{"code":"a"}}`, []string{"structure Observation.effectiveCoding"}},
		{"code binding", `{"resourceType":"Observation","status":"done","code":{"text":"x"}}`, []string{"code-invalid Observation.status"}},
		{"CodeableConcept binding", `{"resourceType":"AllergyIntolerance","patient":{"reference":"Patient/1"},
			"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical","code":"gone"}]}}`,
			[]string{"code-invalid AllergyIntolerance.clinicalStatus"}},
		{"CodeableConcept binding ok", `{"resourceType":"AllergyIntolerance","patient":{"reference":"Patient/1"},
			"clinicalStatus":{"coding":[{"system":"urn:other","code":"x"},{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical","code":"active"}]}}`, nil},
		{"Coding binding", `{"resourceType":"Subscription","status":"active","reason":"r","criteria":"Patient","channel":{"type":"rest-hook"},
			"meta":{"security":[{"system":"urn:x","code":"y"}]}}`, nil},
		{"invariant", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueString":"a","dataAbsentReason":{"text":"no"}}`, []string{"invariant Observation"}},
		{"invariant of a data type", `{"resourceType":"Encounter","status":"finished","class":{"code":"AMB"},"period":{"start":"2020-02-01","end":"2020-01-01"}}`, []string{"invariant Encounter.period"}},
		{"invariant on a backbone element", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"referenceRange":[{"appliesTo":[{"text":"a"}]}]}`, []string{"invariant Observation.referenceRange[0]"}},
		{"ele-1", `{"resourceType":"Observation","status":"final","code":{}}`, []string{"invariant Observation.code"}},
		{"extension with value and extensions", `{"resourceType":"Patient","extension":[{"url":"urn:x","valueString":"a","extension":[{"url":"b","valueString":"c"}]}]}`, []string{"invariant Patient.extension[0]"}},
		{"extension without url", `{"resourceType":"Patient","extension":[{"valueString":"a"}]}`, []string{"required Patient.extension[0].url"}},
		{"primitive extension", `{"resourceType":"Patient","_birthDate":{"extension":[{"valueString":"a"}]}}`, []string{"required Patient.birthDate.extension[0].url"}},
		{"contained", `{"resourceType":"Patient","contained":[{"resourceType":"Observation","id":"o","code":{"text":"x"}}]}`, []string{"required Patient.contained[0].status"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := errorsOf(s.Validate(decode(t, c.res), Options{Core: true, Profiles: true}))
			var gs []string
			for _, is := range got {
				gs = append(gs, is.Code+" "+is.Expression)
			}
			if strings.Join(gs, "|") != strings.Join(c.want, "|") {
				t.Errorf("got %q, want %q\n%+v", gs, c.want, got)
			}
		})
	}
}

// Every resource of the real example Bundles is valid by the core rules
// and, where it claims a US Core profile the server knows, by it.
func TestExamplesValid(t *testing.T) {
	s := usCore(t)
	n, profiled := 0, 0
	for _, r := range exampleResources(t) {
		n++
		meta, _ := r["meta"].(map[string]any)
		if ps, _ := meta["profile"].([]any); len(ps) > 0 && s.Structure(ps[0].(string)) != nil {
			profiled++
		}
		for _, is := range s.Validate(r, Options{Core: true, Profiles: true}) {
			if is.Severity == "error" {
				t.Errorf("%s/%s: %+v", r["resourceType"], r["id"], is)
			}
		}
	}
	if n < 700 || profiled < 3 {
		t.Fatalf("%d resources, %d with a known profile", n, profiled)
	}
}

func examplePatient(t *testing.T) map[string]any {
	for _, r := range exampleResources(t) {
		if r["resourceType"] == "Patient" && r["id"] == "85" {
			return r
		}
	}
	t.Fatal("no Patient/85")
	return nil
}

// A US Core Patient without identifier, whose race extension lacks its
// required text and gives its category as a string, fails with issues at
// each place.
func TestUSCorePatientBroken(t *testing.T) {
	s := usCore(t)
	p := examplePatient(t)
	if errs := errorsOf(s.Validate(p, Options{Core: true, Profiles: true})); len(errs) > 0 {
		t.Fatalf("the example is not valid: %+v", errs)
	}
	delete(p, "identifier")
	race := p["extension"].([]any)[0].(map[string]any)
	race["extension"] = []any{map[string]any{"url": "ombCategory", "valueString": "White"}}
	got := errorsOf(s.Validate(p, Options{Core: true, Profiles: true}))
	want := map[string]bool{
		"required Patient.identifier":                             false,
		"structure Patient.extension[0].extension[0].valueString": false,
		"required Patient.extension[0].extension[0].value":        false, // ombCategory's Coding
		"required Patient.extension[0].extension":                 false, // the text slice
	}
	for _, is := range got {
		k := is.Code + " " + is.Expression
		if _, ok := want[k]; ok {
			want[k] = true
		} else {
			t.Errorf("unexpected %+v", is)
		}
	}
	for k, ok := range want {
		if !ok {
			t.Errorf("no %s issue; got %+v", k, got)
		}
	}
	// Without the profile the same resource is valid by the core rules.
	if errs := errorsOf(s.Validate(p, Options{Core: true})); len(errs) > 0 {
		t.Errorf("core: %+v", errs)
	}
}

// A profile the server does not know is a warning; one named by $validate
// is an error; one for another type is an error.
func TestUnknownProfile(t *testing.T) {
	s := usCore(t)
	r := decode(t, `{"resourceType":"Patient","meta":{"profile":["http://example.org/p"]}}`)
	got := s.Validate(r, Options{Core: true, Profiles: true})
	if len(got) != 1 || got[0].Severity != "warning" || got[0].Expression != "Patient.meta.profile[0]" {
		t.Errorf("got %+v", got)
	}
	got = s.Validate(decode(t, `{"resourceType":"Patient"}`), Options{Core: true, Extra: []string{"http://example.org/p"}})
	if len(got) != 1 || got[0].Severity != "error" {
		t.Errorf("extra: got %+v", got)
	}
	got = s.Validate(decode(t, `{"resourceType":"Observation","status":"final","code":{"text":"x"}}`),
		Options{Core: true, Extra: []string{"http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"}})
	if len(got) != 1 || got[0].Severity != "error" {
		t.Errorf("other type: got %+v", got)
	}
}

// US Core's blood pressure profile slices Observation.component by the
// pattern of code: a blood pressure without its diastolic component fails.
func TestSlicingByPattern(t *testing.T) {
	s := usCore(t)
	bp := `{"resourceType":"Observation","meta":{"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-blood-pressure"]},
	"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],
	"code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},"subject":{"reference":"Patient/1"},"effectiveDateTime":"2020-01-01",
	"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":120,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}%s]}`
	dia := `,{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueQuantity":{"value":80,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}`
	if errs := errorsOf(s.Validate(decode(t, strings.Replace(bp, "%s", dia, 1)), Options{Core: true, Profiles: true})); len(errs) > 0 {
		t.Fatalf("valid blood pressure: %+v", errs)
	}
	// The profile requires two components, and one in the diastolic slice.
	errs := errorsOf(s.Validate(decode(t, strings.Replace(bp, "%s", "", 1)), Options{Core: true, Profiles: true}))
	if len(errs) != 2 || errs[1].Expression != "Observation.component" || !strings.Contains(errs[1].Message, "diastolic") {
		t.Errorf("got %+v", errs)
	}
	// Without the vital-signs category: the VSCat slice (by value of
	// coding.code and coding.system) is missing.
	noCat := strings.Replace(strings.Replace(bp, "%s", dia, 1), `"code":"vital-signs"`, `"code":"laboratory"`, 1)
	errs = errorsOf(s.Validate(decode(t, noCat), Options{Core: true, Profiles: true}))
	if len(errs) != 1 || errs[0].Expression != "Observation.category" || !strings.Contains(errs[0].Message, "VSCat") {
		t.Errorf("got %+v", errs)
	}
}

func TestLoadSources(t *testing.T) {
	dir := t.TempDir()
	sd := `{"resourceType":"StructureDefinition","url":"http://x/p","type":"Patient","kind":"resource","snapshot":{"element":[{"path":"Patient","min":0,"max":"*"},{"path":"Patient.gender","min":1,"max":"1"}]}}`
	vs := `{"resourceType":"ValueSet","url":"http://x/vs","compose":{"include":[{"system":"http://x/cs"}]}}`
	cs := `{"resourceType":"CodeSystem","url":"http://x/cs","content":"complete","concept":[{"code":"a","concept":[{"code":"b"}]}]}`
	os.WriteFile(filepath.Join(dir, "sd.json"), []byte(sd), 0o644)
	os.WriteFile(filepath.Join(dir, "vs.json"), []byte(`{"resourceType":"Bundle","entry":[{"resource":`+vs+`},{"resource":`+cs+`}]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "array.json"), []byte(`[{"resourceType":"Patient"},`+strings.Replace(sd, "http://x/p", "http://x/q", 1)+`]`), 0o644)
	res, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Structures) != 2 || len(res.ValueSets) != 1 || len(res.CodeSystems) != 1 {
		t.Fatalf("got %d, %d, %d", len(res.Structures), len(res.ValueSets), len(res.CodeSystems))
	}
	s, err := core(t).With(res)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.codes["http://x/vs"]; strings.Join(got["http://x/cs"], ",") != "a,b" {
		t.Errorf("expansion %v", got)
	}
	errs := errorsOf(s.Validate(decode(t, `{"resourceType":"Patient","meta":{"profile":["http://x/q"]}}`), Options{Core: true, Profiles: true}))
	if len(errs) != 1 || errs[0].Expression != "Patient.gender" {
		t.Errorf("got %+v", errs)
	}
	for _, bad := range []string{"missing.json", filepath.Join(dir, "sd.json") + "x"} {
		if _, err := Load(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	os.WriteFile(filepath.Join(dir, "bad.tgz"), []byte("not gzip"), 0o644)
	if _, err := Load(filepath.Join(dir, "bad.tgz")); err == nil {
		t.Error("bad.tgz: no error")
	}
}

func TestExpand(t *testing.T) {
	term := &Terminology{ValueSets: map[string]*ValueSet{}, CodeSystems: map[string]*CodeSystem{}}
	add := func(s string) {
		var head struct{ ResourceType string }
		json.Unmarshal([]byte(s), &head)
		if head.ResourceType == "ValueSet" {
			var vs ValueSet
			json.Unmarshal([]byte(s), &vs)
			term.ValueSets[vs.URL] = &vs
		} else {
			var cs CodeSystem
			json.Unmarshal([]byte(s), &cs)
			term.CodeSystems[cs.URL] = &cs
		}
	}
	add(`{"resourceType":"CodeSystem","url":"cs","content":"complete","concept":[{"code":"a","concept":[{"code":"b","concept":[{"code":"c"}]}]},{"code":"d"}]}`)
	add(`{"resourceType":"CodeSystem","url":"frag","content":"fragment","concept":[{"code":"x"}]}`)
	add(`{"resourceType":"ValueSet","url":"all","compose":{"include":[{"system":"cs"}],"exclude":[{"system":"cs","concept":[{"code":"d"}]}]}}`)
	add(`{"resourceType":"ValueSet","url":"isa","compose":{"include":[{"system":"cs","filter":[{"property":"concept","op":"is-a","value":"b"}]}]}}`)
	add(`{"resourceType":"ValueSet","url":"desc","compose":{"include":[{"system":"cs","filter":[{"property":"concept","op":"descendent-of","value":"a"}]}]}}`)
	add(`{"resourceType":"ValueSet","url":"imp","compose":{"include":[{"valueSet":["isa"]},{"system":"other","concept":[{"code":"z"}]}]}}`)
	add(`{"resourceType":"ValueSet","url":"exp","expansion":{"contains":[{"system":"s","code":"1","contains":[{"system":"s","code":"2"}]}]}}`)
	add(`{"resourceType":"ValueSet","url":"fragment","compose":{"include":[{"system":"frag"}]}}`)
	add(`{"resourceType":"ValueSet","url":"unknown","compose":{"include":[{"system":"nowhere"}]}}`)
	add(`{"resourceType":"ValueSet","url":"regex","compose":{"include":[{"system":"cs","filter":[{"property":"code","op":"regex","value":"."}]}]}}`)
	for _, c := range []struct{ url, want string }{
		{"all", "cs:a,b,c"}, {"isa|4.0.1", "cs:b,c"}, {"desc", "cs:b,c"}, {"imp", "cs:b,c other:z"}, {"exp", "s:1,2"},
		{"fragment", "error"}, {"unknown", "error"}, {"regex", "error"}, {"missing", "error"},
	} {
		codes, err := term.Expand(c.url)
		got := "error"
		if err == nil {
			var parts []string
			for _, sys := range []string{"cs", "other", "s"} {
				if len(codes[sys]) > 0 {
					parts = append(parts, sys+":"+strings.Join(codes[sys], ","))
				}
			}
			got = strings.Join(parts, " ")
		}
		if got != c.want {
			t.Errorf("%s: %s (%v), want %s", c.url, got, err, c.want)
		}
	}
}

// BenchmarkValidate validates the example Bundles' resources against the
// core definitions and the US Core profiles they declare, one resource per
// operation.
func BenchmarkValidate(b *testing.B) {
	s := usCore(b)
	rs := exampleResources(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Validate(rs[i%len(rs)], Options{Core: true, Profiles: true})
	}
}
