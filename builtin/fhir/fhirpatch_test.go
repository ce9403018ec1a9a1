package fhir

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// fhirPatchBody builds a FHIRPath Patch from operations, each a list of
// parts as JSON ({"name":"type","valueCode":"add"}, …).
func fhirPatchBody(ops ...[]string) string {
	var ps []string
	for _, parts := range ops {
		ps = append(ps, `{"name":"operation","part":[`+strings.Join(parts, ",")+`]}`)
	}
	return `{"resourceType":"Parameters","parameter":[` + strings.Join(ps, ",") + `]}`
}

func part(name, typ string, value any) string {
	v, _ := json.Marshal(value)
	if typ == "" {
		return fmt.Sprintf(`{"name":%q,"part":%s}`, name, v)
	}
	return fmt.Sprintf(`{"name":%q,"value%s":%s}`, name, typ, v)
}

func opType(t string) string { return part("type", "Code", t) }
func opPath(p string) string { return part("path", "String", p) }

// patientOf returns the Patient of a Synthea Bundle file.
func patientOf(t *testing.T, file string) map[string]any {
	for _, r := range syntheaResources(t, file) {
		if r["resourceType"] == "Patient" {
			return r
		}
	}
	t.Fatal("no Patient")
	return nil
}

// TestFHIRPathPatch applies each operation of FHIRPath Patch to patient
// 85 of the example Bundle and checks the result against what the
// specification says each does.
func TestFHIRPathPatch(t *testing.T) {
	h := newTestServer(t)
	orig := patientOf(t, "uscore_bundle_patient_85.json")
	put := func(t *testing.T) map[string]any {
		t.Helper()
		b, _ := json.Marshal(orig)
		r := do(t, h, "PUT", "/fhir/R4/Patient/85", b)
		if r.status != 200 && r.status != 201 {
			t.Fatalf("put: %d %s", r.status, r.body)
		}
		return r.json(t)
	}
	patch := func(t *testing.T, body string, status int) map[string]any {
		t.Helper()
		r := do(t, h, "PATCH", "/fhir/R4/Patient/85", body, "Content-Type", "application/fhir+json")
		mustStatus(t, r, status)
		return r.json(t)
	}
	ids := func(p map[string]any) []string {
		var out []string
		for _, x := range p["identifier"].([]any) {
			out = append(out, x.(map[string]any)["value"].(string))
		}
		return out
	}
	origIDs := ids(orig)
	ssn := "http://hl7.org/fhir/sid/us-ssn"

	t.Run("replace", func(t *testing.T) {
		put(t)
		p := patch(t, fhirPatchBody([]string{opType("replace"), opPath("Patient.birthDate"), part("value", "Date", "1990-01-02")}), 200)
		if p["birthDate"] != "1990-01-02" || p["gender"] != orig["gender"] {
			t.Errorf("birthDate %v gender %v", p["birthDate"], p["gender"])
		}
	})
	t.Run("replace in an element a where() selects", func(t *testing.T) {
		put(t)
		p := patch(t, fhirPatchBody([]string{opType("replace"), opPath("Patient.identifier.where(system='" + ssn + "').value"),
			part("value", "String", "000-00-0000")}), 200)
		got := ids(p)
		for i, v := range got {
			sys := p["identifier"].([]any)[i].(map[string]any)["system"]
			if (sys == ssn) != (v == "000-00-0000") || sys != ssn && v != origIDs[i] {
				t.Errorf("identifier %d (%v): %s", i, sys, v)
			}
		}
	})
	t.Run("add", func(t *testing.T) {
		put(t)
		p := patch(t, fhirPatchBody(
			[]string{opType("add"), opPath("Patient"), part("name", "String", "active"), part("value", "Boolean", true)},
			[]string{opType("add"), opPath("Patient"), part("name", "String", "identifier"), part("value", "Identifier", map[string]any{"system": "http://x", "value": "new"})},
			[]string{opType("add"), opPath("Patient"), part("name", "String", "generalPractitioner"), part("value", "Reference", map[string]any{"reference": "Practitioner/1"})},
		), 200)
		if p["active"] != true {
			t.Errorf("active %v", p["active"])
		}
		if got := ids(p); !slices.Equal(got, append(slices.Clone(origIDs), "new")) {
			t.Errorf("identifiers %v: the new one is not appended", got)
		}
		// A list element the resource lacked becomes a list.
		if gp, ok := p["generalPractitioner"].([]any); !ok || len(gp) != 1 {
			t.Errorf("generalPractitioner %v, want a list of one", p["generalPractitioner"])
		}
	})
	t.Run("add an anonymous element from parts", func(t *testing.T) {
		put(t)
		p := patch(t, fhirPatchBody([]string{opType("add"), opPath("Patient"), part("name", "String", "contact"), part("value", "", []any{
			map[string]any{"name": "name", "valueHumanName": map[string]any{"family": "Doe"}},
			map[string]any{"name": "telecom", "valueContactPoint": map[string]any{"system": "phone", "value": "555"}},
		})}), 200)
		c, ok := p["contact"].([]any)
		if !ok || len(c) != 1 {
			t.Fatalf("contact %v", p["contact"])
		}
		cm := c[0].(map[string]any)
		if cm["name"].(map[string]any)["family"] != "Doe" || len(cm["telecom"].([]any)) != 1 {
			t.Errorf("contact %v: name an object, telecom a list", cm)
		}
	})
	t.Run("insert", func(t *testing.T) {
		put(t)
		p := patch(t, fhirPatchBody([]string{opType("insert"), opPath("Patient.name[0].given"), part("index", "Integer", 0), part("value", "String", "First")}), 200)
		given := p["name"].([]any)[0].(map[string]any)["given"].([]any)
		want := append([]any{"First"}, orig["name"].([]any)[0].(map[string]any)["given"].([]any)...)
		if !slices.Equal(given, want) {
			t.Errorf("given %v, want %v", given, want)
		}
	})
	t.Run("delete", func(t *testing.T) {
		put(t)
		p := patch(t, fhirPatchBody(
			[]string{opType("delete"), opPath("Patient.identifier.where(system='" + ssn + "')")},
			[]string{opType("delete"), opPath("Patient.identifier.where(system='http://nowhere')")}, // nothing: no-op
			[]string{opType("delete"), opPath("Patient.maritalStatus")},
		), 200)
		for _, x := range p["identifier"].([]any) {
			if x.(map[string]any)["system"] == ssn {
				t.Error("the SSN is still there")
			}
		}
		if len(p["identifier"].([]any)) != len(origIDs)-1 || p["maritalStatus"] != nil {
			t.Errorf("%d identifiers, maritalStatus %v", len(p["identifier"].([]any)), p["maritalStatus"])
		}
	})
	t.Run("move", func(t *testing.T) {
		put(t)
		p := patch(t, fhirPatchBody([]string{opType("move"), opPath("Patient.identifier"), part("source", "Integer", 0), part("destination", "Integer", 2)}), 200)
		want := slices.Clone(origIDs)
		v := want[0]
		want = slices.Insert(slices.Delete(want, 0, 1), 2, v)
		if got := ids(p); !slices.Equal(got, want) {
			t.Errorf("identifiers %v, want %v", got, want)
		}
	})
	t.Run("members keep their order", func(t *testing.T) {
		put(t)
		r := do(t, h, "PATCH", "/fhir/R4/Patient/85", fhirPatchBody([]string{opType("replace"), opPath("Patient.gender"), part("value", "Code", "other")}),
			"Content-Type", "application/fhir+json")
		mustStatus(t, r, 200)
		keys := topKeys(t, r.body)
		var want []string
		for _, k := range topKeys(t, mustJSON(t, orig)) {
			if k != "id" && k != "meta" && k != "resourceType" {
				want = append(want, k)
			}
		}
		if got := keys[3:]; !slices.Equal(got, want) {
			t.Errorf("members %v, want %v after resourceType, id and meta", got, want)
		}
	})
	t.Run("errors", func(t *testing.T) {
		put(t)
		before := versionOf(t, h, "Patient/85")
		for _, c := range []struct {
			body   string
			status int
			msg    string
		}{
			{`{"resourceType":"Patient"}`, 400, "Parameters"},
			{fhirPatchBody([]string{opType("rename"), opPath("Patient.gender")}), 400, "operation[0]"},
			{fhirPatchBody([]string{opType("replace"), opPath("Patient.managingOrganization.resolve().name"), part("value", "String", "x")}), 400, "resolve() is not supported"},
			{fhirPatchBody([]string{opType("replace"), opPath("Patient.descendants()"), part("value", "String", "x")}), 400, "(replace)"},
			{fhirPatchBody([]string{opType("replace"), opPath("Patient.gender")}), 400, "needs a value"},
			{fhirPatchBody([]string{opType("add"), opPath("Patient"), part("value", "Boolean", true)}), 400, "needs a name"},
			{fhirPatchBody([]string{opType("delete"), opPath("Patient.gender"), part("value", "Code", "x")}), 400, "unexpected part"},
			{fhirPatchBody([]string{opType("insert"), opPath("Patient.name"), part("value", "HumanName", map[string]any{})}), 400, "index"},
			{fhirPatchBody([]string{opType("replace"), opPath("Patient.deceasedBoolean.where("), part("value", "Boolean", true)}), 400, "unbalanced"},
			{fhirPatchBody([]string{opType("replace"), opPath("Patient.photo"), part("value", "Attachment", map[string]any{})}), 422, "matches no element"},
			{fhirPatchBody([]string{opType("delete"), opPath("Patient.identifier")}), 422, "a delete removes one"},
			{fhirPatchBody([]string{opType("add"), opPath("Patient"), part("name", "String", "gender"), part("value", "Code", "male")}), 422, "already has"},
			{fhirPatchBody([]string{opType("insert"), opPath("Patient.identifier"), part("index", "Integer", 99), part("value", "Identifier", map[string]any{"value": "x"})}), 422, "past the end"},
			{fhirPatchBody([]string{opType("move"), opPath("Patient.identifier"), part("source", "Integer", 0), part("destination", "Integer", 99)}), 422, "destination"},
			{fhirPatchBody([]string{opType("replace"), opPath("Patient.birthDate"), part("value", "String", "not a date")}), 422, "invalid"},
			{fhirPatchBody([]string{opType("replace"), opPath("Patient.id"), part("value", "Id", "other")}), 422, "id"},
		} {
			r := do(t, h, "PATCH", "/fhir/R4/Patient/85", c.body, "Content-Type", "application/fhir+json")
			if r.status != c.status {
				t.Errorf("%s: %d, want %d: %s", c.body, r.status, c.status, r.body)
				continue
			}
			if _, d := outcomeOf(t, r); !strings.Contains(d, c.msg) {
				t.Errorf("%s: %q, want it to mention %q", c.body, d, c.msg)
			}
		}
		if v := versionOf(t, h, "Patient/85"); v != before {
			t.Errorf("version %s: a failed patch wrote", v)
		}
	})
}

// A FHIRPath Patch changes a choice element's type with its value, and
// adds one under the name its type completes; in a transaction a PATCH
// entry carries it as its resource; under a policy it is a patch like
// any.
func TestFHIRPathPatchChoiceAndBundle(t *testing.T) {
	h := newTestServer(t)
	mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient/85", `{"resourceType":"Patient","id":"85"}`), 201)
	mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient/355", `{"resourceType":"Patient","id":"355"}`), 201)
	obs := `{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"w"},"subject":{"reference":"Patient/85"},"valueQuantity":{"value":70,"unit":"kg"}}`
	mustStatus(t, do(t, h, "PUT", "/fhir/R4/Observation/o1", obs), 201)
	r := do(t, h, "PATCH", "/fhir/R4/Observation/o1", fhirPatchBody(
		[]string{opType("replace"), opPath("Observation.value"), part("value", "String", "heavy")},
		[]string{opType("add"), opPath("Observation"), part("name", "String", "effective"), part("value", "DateTime", "2024-01-01")},
	), "Content-Type", "application/fhir+json")
	mustStatus(t, r, 200)
	o := r.json(t)
	if o["valueString"] != "heavy" || o["valueQuantity"] != nil || o["effectiveDateTime"] != "2024-01-01" || o["effective"] != nil {
		t.Errorf("choice elements: %s", r.body)
	}
	keys := topKeys(t, r.body)
	if i := slices.Index(keys, "valueString"); i != len(keys)-2 {
		t.Errorf("valueString at %d of %v: not where valueQuantity was", i, keys)
	}

	tx := `{"resourceType":"Bundle","type":"transaction","entry":[{"resource":` + fhirPatchBody([]string{opType("replace"), opPath("Observation.status"), part("value", "Code", "amended")}) +
		`,"request":{"method":"PATCH","url":"Observation/o1"}}]}`
	mustStatus(t, do(t, h, "POST", "/fhir/R4", tx), 200)
	if r := do(t, h, "GET", "/fhir/R4/Observation/o1", nil); r.json(t)["status"] != "amended" {
		t.Errorf("after the transaction: %s", r.body)
	}
	bad := strings.Replace(tx, `"replace"`, `"rename"`, 1)
	r = do(t, h, "POST", "/fhir/R4", bad)
	mustStatus(t, r, 400)
	if _, d := outcomeOf(t, r); !strings.Contains(d, "entry[0]") {
		t.Errorf("the error does not name the entry: %q", d)
	}

	move := fhirPatchBody([]string{opType("replace"), opPath("Observation.subject.reference"), part("value", "String", "Patient/355")})
	r = do(t, as(h, writer85), "PATCH", "/fhir/R4/Observation/o1", move, "Content-Type", "application/fhir+json")
	mustStatus(t, r, 403)
	if v := versionOf(t, h, "Observation/o1"); v != "3" {
		t.Errorf("version %s after a refused patch", v)
	}
}

func topKeys(t *testing.T, body []byte) []string {
	t.Helper()
	ms, err := members(body)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.key)
	}
	return out
}

// FuzzFHIRPathPatch applies arbitrary FHIRPath Patches to a fixed
// resource: the parser and the evaluator answer an error or a JSON
// object, and never panic.
func FuzzFHIRPathPatch(f *testing.F) {
	for _, s := range []string{
		fhirPatchBody([]string{opType("replace"), opPath("Patient.birthDate"), part("value", "Date", "1990-01-02")}),
		fhirPatchBody([]string{opType("add"), opPath("Patient"), part("name", "String", "contact"), part("value", "", []any{
			map[string]any{"name": "name", "valueHumanName": map[string]any{"family": "Doe"}}})}),
		fhirPatchBody([]string{opType("insert"), opPath("Patient.name[0].given"), part("index", "Integer", 0), part("value", "String", "F")}),
		fhirPatchBody([]string{opType("delete"), opPath("Patient.identifier.where(system='s' and value.exists()).first()")}),
		fhirPatchBody([]string{opType("move"), opPath("Patient.identifier"), part("source", "Integer", 1), part("destination", "Integer", 0)}),
		fhirPatchBody([]string{opType("replace"), opPath("Patient.name.where(use='official')[0].family"), part("value", "String", "X")}),
		`{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"add"}]}]}`,
		`{"resourceType":"Parameters"}`, `[]`, `{`, "\x00",
		`{"resourceType":"Parameters","parameter":[{"name":"operation","part":[1]}]}`,
		`{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},` +
			`{"name":"name","valueString":"contact"},{"name":"value","part":[7]}]}]}`,
	} {
		f.Add([]byte(s))
	}
	resource := []byte(`{"resourceType":"Patient","id":"p","identifier":[{"system":"s","value":"1"},{"system":"t","value":"2"}],` +
		`"name":[{"use":"official","family":"F","given":["A","B"]}],"birthDate":"1970-01-01","_birthDate":{"extension":[]}}`)
	f.Fuzz(func(t *testing.T, body []byte) {
		fp, err := parseFHIRPatch(body)
		if err != nil {
			if asHTTPError(err) == nil {
				t.Fatalf("parse error without a status: %v", err)
			}
			return
		}
		out, err := fp.apply("Patient", resource)
		if err != nil {
			if asHTTPError(err) == nil {
				t.Fatalf("apply error without a status: %v", err)
			}
			return
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("result is not a JSON object: %v\n%s", err, out)
		}
	})
}
