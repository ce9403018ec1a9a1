package fhir

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

const patientJSON = `{"resourceType":"Patient","id":"ignored-on-create","meta":{"versionId":"99","lastUpdated":"2001-01-01T00:00:00Z","profile":["http://example.org/p"]},"name":[{"family":"Chalmers","given":["Peter","James"]}],"gender":"male","birthDate":"1974-12-25"}`

func idOf(t testing.TB, r resp) string {
	t.Helper()
	id, _ := r.json(t)["id"].(string)
	if id == "" {
		t.Fatalf("no id in %s", r.body)
	}
	return id
}

func TestMetadata(t *testing.T) {
	h := newTestServer(t)
	r := do(t, h, "GET", "/fhir/R4/metadata", nil)
	mustStatus(t, r, 200)
	cs := r.json(t)
	if cs["resourceType"] != "CapabilityStatement" || cs["fhirVersion"] != "4.0.1" {
		t.Fatalf("not an R4 CapabilityStatement: %.300s", r.body)
	}
	params := map[string]map[string]string{}
	rest := cs["rest"].([]any)[0].(map[string]any)
	for _, res := range rest["resource"].([]any) {
		m := res.(map[string]any)
		ps := map[string]string{}
		for _, p := range m["searchParam"].([]any) {
			pm := p.(map[string]any)
			ps[pm["name"].(string)] = pm["type"].(string)
		}
		params[m["type"].(string)] = ps
	}
	if len(params) < 140 {
		t.Errorf("%d resource types, want every R4 type", len(params))
	}
	for _, c := range []struct{ typ, name, ptype string }{
		{"Patient", "name", "string"}, {"Patient", "birthdate", "date"}, {"Observation", "code", "token"},
		{"Observation", "patient", "reference"}, {"Observation", "value-quantity", "quantity"},
		{"RiskAssessment", "probability", "number"}, {"ValueSet", "url", "uri"}, {"Encounter", "_lastUpdated", "date"},
	} {
		if got := params[c.typ][c.name]; got != c.ptype {
			t.Errorf("%s %s: type %q, want %q", c.typ, c.name, got, c.ptype)
		}
	}
	for _, name := range []string{"code-value-quantity", "component-code-value-quantity", "combo-code-value-concept"} {
		if got := params["Observation"][name]; got != "composite" {
			t.Errorf("Observation %s: type %q, want composite", name, got)
		}
	}
	// Each of the 16 core types lists every non-composite parameter the
	// definitions give it.
	for _, typ := range []string{"Patient", "Practitioner", "Organization", "Encounter", "Observation", "Condition", "Procedure",
		"MedicationRequest", "Immunization", "AllergyIntolerance", "DiagnosticReport", "DocumentReference", "CarePlan", "CareTeam",
		"Coverage", "ExplanationOfBenefit"} {
		if len(params[typ]) < 10 {
			t.Errorf("%s lists only %d parameters", typ, len(params[typ]))
		}
	}
}

func TestCreateReadVreadUpdateDelete(t *testing.T) {
	clock := newTestClock(testEpoch)
	h := newTestServerAt(t, clock)
	before := testEpoch
	r := do(t, h, "POST", "/fhir/R4/Patient", patientJSON)
	mustStatus(t, r, 201)
	p := r.json(t)
	id := p["id"].(string)
	if id == "ignored-on-create" {
		t.Fatal("create kept the client's id")
	}
	meta := p["meta"].(map[string]any)
	if meta["versionId"] != "1" || meta["profile"] == nil {
		t.Fatalf("meta = %v, want versionId 1 and the client's profile", meta)
	}
	lu, err := time.Parse(time.RFC3339, meta["lastUpdated"].(string))
	if err != nil || lu.Before(before) || lu.After(clock.Now()) {
		t.Fatalf("lastUpdated %v not set by the server", meta["lastUpdated"])
	}
	if loc := r.header.Get("Location"); loc != "http://fhir.test/fhir/R4/Patient/"+id+"/_history/1" {
		t.Errorf("Location %q", loc)
	}
	if r.header.Get("ETag") != `W/"1"` || r.header.Get("Last-Modified") == "" {
		t.Errorf("ETag %q Last-Modified %q", r.header.Get("ETag"), r.header.Get("Last-Modified"))
	}
	if ct := r.header.Get("Content-Type"); ct != "application/fhir+json; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	// The stored JSON is what the client sent, members in order.
	if !strings.Contains(string(r.body), `"name":[{"family":"Chalmers","given":["Peter","James"]}],"gender":"male","birthDate":"1974-12-25"`) {
		t.Errorf("stored body changed the client's content: %s", r.body)
	}

	r = do(t, h, "GET", "/fhir/R4/Patient/"+id, nil)
	mustStatus(t, r, 200)
	if r.header.Get("ETag") != `W/"1"` {
		t.Errorf("read ETag %q", r.header.Get("ETag"))
	}

	upd := strings.Replace(patientJSON, `"ignored-on-create"`, `"`+id+`"`, 1)
	upd = strings.Replace(upd, `"male"`, `"other"`, 1)
	r = do(t, h, "PUT", "/fhir/R4/Patient/"+id, upd)
	mustStatus(t, r, 200)
	if r.json(t)["meta"].(map[string]any)["versionId"] != "2" || r.header.Get("ETag") != `W/"2"` {
		t.Fatalf("update did not make version 2: %s", r.body)
	}

	r = do(t, h, "GET", "/fhir/R4/Patient/"+id+"/_history/1", nil)
	mustStatus(t, r, 200)
	if r.json(t)["gender"] != "male" {
		t.Error("vread 1 does not show version 1")
	}
	mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/"+id+"/_history/9", nil), 404)
	mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/"+id+"/_history/x", nil), 404)

	// Update as create, with the client's id.
	r = do(t, h, "PUT", "/fhir/R4/Patient/chosen-1", `{"resourceType":"Patient","id":"chosen-1"}`)
	mustStatus(t, r, 201)
	if r.header.Get("Location") == "" {
		t.Error("no Location on update-as-create")
	}

	r = do(t, h, "DELETE", "/fhir/R4/Patient/"+id, nil)
	mustStatus(t, r, 204)
	r = do(t, h, "GET", "/fhir/R4/Patient/"+id, nil)
	mustStatus(t, r, 410)
	if r.json(t)["resourceType"] != "OperationOutcome" {
		t.Error("410 without OperationOutcome")
	}
	mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/"+id+"/_history/3", nil), 410)
	mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/"+id+"/_history/2", nil), 200)
	mustStatus(t, do(t, h, "DELETE", "/fhir/R4/Patient/"+id, nil), 204) // idempotent
	mustStatus(t, do(t, h, "DELETE", "/fhir/R4/Patient/never", nil), 204)

	// Re-creating a deleted resource by update makes a new version.
	r = do(t, h, "PUT", "/fhir/R4/Patient/"+id, upd)
	mustStatus(t, r, 201)
	if r.header.Get("ETag") != `W/"4"` {
		t.Errorf("re-create ETag %q, want W/\"4\"", r.header.Get("ETag"))
	}

	// Instance history: newest first, with the methods.
	r = do(t, h, "GET", "/fhir/R4/Patient/"+id+"/_history", nil)
	mustStatus(t, r, 200)
	hb := r.json(t)
	if hb["type"] != "history" || hb["total"].(float64) != 4 {
		t.Fatalf("history: %.400s", r.body)
	}
	var methods []string
	for _, e := range hb["entry"].([]any) {
		methods = append(methods, e.(map[string]any)["request"].(map[string]any)["method"].(string))
	}
	if strings.Join(methods, ",") != "PUT,DELETE,PUT,POST" {
		t.Errorf("history methods %v", methods)
	}
	r = do(t, h, "GET", "/fhir/R4/Patient/_history", nil)
	mustStatus(t, r, 200)
	if n := r.json(t)["total"].(float64); n != 5 {
		t.Errorf("type history total %v, want 5", n)
	}
	r = do(t, h, "GET", "/fhir/R4/_history?_count=2", nil)
	mustStatus(t, r, 200)
	sys := r.json(t)
	if len(entries(t, sys)) != 2 || nextLink(sys) == "" {
		t.Fatalf("system history page: %.500s", r.body)
	}
	r = do(t, h, "GET", strings.TrimPrefix(nextLink(sys), "http://fhir.test"), nil)
	mustStatus(t, r, 200)
	if n := len(entries(t, r.json(t))); n != 2 {
		t.Errorf("second history page has %d entries", n)
	}
	r = do(t, h, "GET", "/fhir/R4/Patient/_history?_since="+testEpoch.Add(time.Hour).UTC().Format(time.RFC3339), nil)
	mustStatus(t, r, 200)
	if n := r.json(t)["total"].(float64); n != 0 {
		t.Errorf("_since in the future: total %v", n)
	}
	mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/nope/_history", nil), 404)
}

func nextLink(b map[string]any) string {
	ls, _ := b["link"].([]any)
	for _, l := range ls {
		m := l.(map[string]any)
		if m["relation"] == "next" {
			return m["url"].(string)
		}
	}
	return ""
}

func TestUpdateCreateOff(t *testing.T) {
	h := newTestServer(t, func(c *Config) { f := false; c.UpdateCreate = &f })
	r := do(t, h, "PUT", "/fhir/R4/Patient/x1", `{"resourceType":"Patient","id":"x1"}`)
	mustStatus(t, r, 405)
}

func TestConditionalRequests(t *testing.T) {
	h := newTestServer(t)
	r := do(t, h, "POST", "/fhir/R4/Patient", `{"resourceType":"Patient","identifier":[{"system":"urn:s","value":"1"}]}`)
	mustStatus(t, r, 201)
	id := idOf(t, r)
	body := `{"resourceType":"Patient","id":"` + id + `","identifier":[{"system":"urn:s","value":"1"}],"active":true}`

	t.Run("If-Match", func(t *testing.T) {
		mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient/"+id, body, "If-Match", `W/"7"`), 412)
		mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient/"+id, body, "If-Match", `W/"1"`), 200)
		mustStatus(t, do(t, h, "DELETE", "/fhir/R4/Patient/"+id, nil, "If-Match", `W/"1"`), 412)
	})
	t.Run("If-None-Match", func(t *testing.T) {
		r := do(t, h, "GET", "/fhir/R4/Patient/"+id, nil, "If-None-Match", `W/"2"`)
		mustStatus(t, r, 304)
		if len(r.body) != 0 {
			t.Error("304 with a body")
		}
		mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/"+id, nil, "If-None-Match", `W/"1"`), 200)
	})
	t.Run("If-Modified-Since", func(t *testing.T) {
		future := testEpoch.Add(time.Hour).UTC().Format(http.TimeFormat)
		past := testEpoch.Add(-time.Hour).UTC().Format(http.TimeFormat)
		mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/"+id, nil, "If-Modified-Since", future), 304)
		mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/"+id, nil, "If-Modified-Since", past), 200)
	})
	t.Run("If-None-Exist", func(t *testing.T) {
		r := do(t, h, "POST", "/fhir/R4/Patient", `{"resourceType":"Patient"}`, "If-None-Exist", "identifier=urn:s|1")
		mustStatus(t, r, 200)
		if idOf(t, r) != id {
			t.Error("conditional create did not return the existing resource")
		}
		mustStatus(t, do(t, h, "POST", "/fhir/R4/Patient", `{"resourceType":"Patient","identifier":[{"system":"urn:s","value":"2"}]}`, "If-None-Exist", "identifier=urn:s|2"), 201)
		mustStatus(t, do(t, h, "POST", "/fhir/R4/Patient", `{"resourceType":"Patient","identifier":[{"system":"urn:s","value":"2"}]}`), 201)
		mustStatus(t, do(t, h, "POST", "/fhir/R4/Patient", `{"resourceType":"Patient"}`, "If-None-Exist", "identifier=urn:s|2"), 412)
	})
	t.Run("conditional update", func(t *testing.T) {
		r := do(t, h, "PUT", "/fhir/R4/Patient?identifier=urn:s|1", `{"resourceType":"Patient","identifier":[{"system":"urn:s","value":"1"}],"active":false}`)
		mustStatus(t, r, 200)
		if idOf(t, r) != id {
			t.Error("conditional update changed another resource")
		}
		r = do(t, h, "PUT", "/fhir/R4/Patient?identifier=urn:s|3", `{"resourceType":"Patient","identifier":[{"system":"urn:s","value":"3"}]}`)
		mustStatus(t, r, 201)
		mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient?identifier=urn:s|2", `{"resourceType":"Patient"}`), 412)
		mustStatus(t, do(t, h, "PUT", "/fhir/R4/Patient?identifier=urn:s|1", `{"resourceType":"Patient","id":"other"}`), 400)
	})
	t.Run("conditional delete", func(t *testing.T) {
		mustStatus(t, do(t, h, "DELETE", "/fhir/R4/Patient?identifier=urn:s|2", nil), 412)
		mustStatus(t, do(t, h, "DELETE", "/fhir/R4/Patient?identifier=urn:s|3", nil), 204)
		mustStatus(t, do(t, h, "DELETE", "/fhir/R4/Patient?identifier=urn:s|3", nil), 204)
		mustStatus(t, do(t, h, "DELETE", "/fhir/R4/Patient", nil), 400)
	})
}

func TestPatch(t *testing.T) {
	h := newTestServer(t)
	id := idOf(t, do(t, h, "POST", "/fhir/R4/Patient", patientJSON))
	patch := `[{"op":"replace","path":"/gender","value":"female"},{"op":"add","path":"/active","value":true}]`
	ct := "application/json-patch+json"
	r := do(t, h, "PATCH", "/fhir/R4/Patient/"+id, patch, "Content-Type", ct, "If-Match", `W/"1"`)
	mustStatus(t, r, 200)
	p := r.json(t)
	if p["gender"] != "female" || p["active"] != true || p["meta"].(map[string]any)["versionId"] != "2" {
		t.Fatalf("patched: %s", r.body)
	}
	mustStatus(t, do(t, h, "PATCH", "/fhir/R4/Patient/"+id, patch, "Content-Type", ct, "If-Match", `W/"1"`), 412)
	mustStatus(t, do(t, h, "PATCH", "/fhir/R4/Patient/"+id, patch, "Content-Type", "text/plain"), 415)
	mustStatus(t, do(t, h, "PATCH", "/fhir/R4/Patient/"+id, patch), 400) // not a FHIRPath Patch
	mustStatus(t, do(t, h, "PATCH", "/fhir/R4/Patient/"+id, `{"op":1}`, "Content-Type", ct), 400)
	mustStatus(t, do(t, h, "PATCH", "/fhir/R4/Patient/"+id, `[{"op":"replace","path":"/gender","value":7}]`, "Content-Type", ct), 422)
	mustStatus(t, do(t, h, "PATCH", "/fhir/R4/Patient/"+id, `[{"op":"replace","path":"/id","value":"zzz"}]`, "Content-Type", ct), 422)
	mustStatus(t, do(t, h, "PATCH", "/fhir/R4/Patient/"+id, `[{"op":"remove","path":"/nothere"}]`, "Content-Type", ct), 422)
	mustStatus(t, do(t, h, "PATCH", "/fhir/R4/Patient/missing", patch, "Content-Type", ct), 404)
	r = do(t, h, "PATCH", "/fhir/R4/Patient?gender=female", `[{"op":"replace","path":"/gender","value":"male"}]`, "Content-Type", ct)
	mustStatus(t, r, 200)
}

func TestPrefer(t *testing.T) {
	h := newTestServer(t)
	r := do(t, h, "POST", "/fhir/R4/Patient", patientJSON, "Prefer", "return=minimal")
	mustStatus(t, r, 201)
	if len(r.body) != 0 || r.header.Get("Location") == "" || r.header.Get("ETag") == "" {
		t.Errorf("minimal: body %q, headers %v", r.body, r.header)
	}
	r = do(t, h, "POST", "/fhir/R4/Patient", patientJSON, "Prefer", "return=OperationOutcome")
	mustStatus(t, r, 201)
	if r.json(t)["resourceType"] != "OperationOutcome" {
		t.Errorf("OperationOutcome: %s", r.body)
	}
	r = do(t, h, "POST", "/fhir/R4/Patient", patientJSON, "Prefer", "return=representation")
	mustStatus(t, r, 201)
	if r.json(t)["resourceType"] != "Patient" {
		t.Errorf("representation: %s", r.body)
	}
}

// Two writers racing with the same If-Match: exactly one wins. Many
// writers without it: no write is lost and versions strictly increase.
func TestConcurrentUpdates(t *testing.T) {
	h := newTestServer(t)
	r := do(t, h, "PUT", "/fhir/R4/Patient/race", `{"resourceType":"Patient","id":"race"}`)
	mustStatus(t, r, 201)
	for round := 1; round <= 5; round++ {
		var wg sync.WaitGroup
		statuses := make([]int, 2)
		for i := range statuses {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses[i] = do(t, h, "PUT", "/fhir/R4/Patient/race", `{"resourceType":"Patient","id":"race"}`, "If-Match", fmt.Sprintf(`W/"%d"`, round)).status
			}()
		}
		wg.Wait()
		if !(statuses[0] == 200 && statuses[1] == 412 || statuses[0] == 412 && statuses[1] == 200) {
			t.Fatalf("round %d: statuses %v, want one 200 and one 412", round, statuses)
		}
	}
	const writers = 20
	var wg sync.WaitGroup
	versions := make(chan string, writers)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := do(t, h, "PUT", "/fhir/R4/Patient/race", `{"resourceType":"Patient","id":"race","active":true}`)
			versions <- r.header.Get("ETag")
		}()
	}
	wg.Wait()
	close(versions)
	seen := map[string]bool{}
	for v := range versions {
		if seen[v] {
			t.Fatalf("two writes got version %s", v)
		}
		seen[v] = true
	}
	r = do(t, h, "GET", "/fhir/R4/Patient/race", nil)
	if want := fmt.Sprintf(`W/"%d"`, 6+writers); r.header.Get("ETag") != want {
		t.Errorf("final ETag %s, want %s", r.header.Get("ETag"), want)
	}
}

func TestCORS(t *testing.T) {
	h := newTestServer(t, func(c *Config) { c.CORS.AllowedOrigins = []string{"https://app.example"} })
	r := do(t, h, "OPTIONS", "/fhir/R4/Patient", nil, "Origin", "https://app.example", "Access-Control-Request-Method", "POST")
	mustStatus(t, r, 204)
	if r.header.Get("Access-Control-Allow-Origin") != "https://app.example" || !strings.Contains(r.header.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("preflight headers %v", r.header)
	}
	r = do(t, h, "GET", "/fhir/R4/metadata", nil, "Origin", "https://app.example")
	if exp := r.header.Get("Access-Control-Expose-Headers"); !strings.Contains(exp, "ETag") || !strings.Contains(exp, "Location") || !strings.Contains(exp, "Content-Location") {
		t.Errorf("expose %q", exp)
	}
	r = do(t, h, "GET", "/fhir/R4/metadata", nil, "Origin", "https://evil.example")
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Error("CORS headers for an origin not allowed")
	}
}
