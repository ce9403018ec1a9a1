package authz

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestBulkExportThroughGateway: with the default operations, a patient's
// bulk export through the gateway and the embedded server holds only its
// own compartment; the status and files answer its identity only; the
// admin listener lists the export.
func TestBulkExportThroughGateway(t *testing.T) {
	yaml := strings.Replace(embeddedYAML, `store: {path: ":memory:"}`,
		fmt.Sprintf(`store: {path: ":memory:"}`+"\n  export: {dir: %q}", t.TempDir()), 1)
	g := newGateway(t, yaml)
	for _, p := range []string{"85", "355"} {
		r := g.do(physician, "PUT", "/fhir/R4/Patient/"+p, fmt.Sprintf(`{"resourceType":"Patient","id":%q}`, p))
		mustStatus(t, r, 201)
		for i := range 3 {
			obs := fmt.Sprintf(`{"resourceType":"Observation","id":"o%s-%d","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/%s"}}`, p, i, p)
			mustStatus(t, g.do(physician, "PUT", fmt.Sprintf("/fhir/R4/Observation/o%s-%d", p, i), obs), 201)
		}
	}
	r := g.do(patient85, "GET", "/fhir/R4/Patient/$export", nil, "Prefer", "respond-async", "Accept", "application/fhir+json")
	mustStatus(t, r, 202)
	status, err := url.Parse(r.Header().Get("Content-Location"))
	if err != nil || !strings.Contains(status.RawQuery, "_jobId=") {
		t.Fatalf("Content-Location %q", r.Header().Get("Content-Location"))
	}
	// Poll as a client does, until the manifest.
	var m map[string]any
	deadline := time.Now().Add(time.Minute)
	for {
		r = g.do(patient85, "GET", status.RequestURI(), nil)
		if r.Code == 200 {
			if err := json.Unmarshal(r.Body.Bytes(), &m); err != nil {
				t.Fatal(err)
			}
			break
		}
		mustStatus(t, r, 202)
		if time.Now().After(deadline) {
			t.Fatal("the export did not complete within a minute")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var got []string
	for _, o := range m["output"].([]any) {
		u, _ := url.Parse(o.(map[string]any)["url"].(string))
		r := g.do(patient85, "GET", u.RequestURI(), nil, "Accept", "application/fhir+ndjson")
		mustStatus(t, r, 200)
		sc := bufio.NewScanner(bytes.NewReader(r.Body.Bytes()))
		for sc.Scan() {
			var res struct{ ResourceType, ID string }
			json.Unmarshal(sc.Bytes(), &res)
			got = append(got, res.ResourceType+"/"+res.ID)
		}
		// Another patient and a physician cannot download it.
		for _, other := range []who{patient35, physician} {
			if r := g.do(other, "GET", u.RequestURI(), nil); r.Code != 404 {
				t.Errorf("%s downloads another's export: %d", other.user, r.Code)
			}
		}
	}
	sort.Strings(got)
	want := []string{"Observation/o85-0", "Observation/o85-1", "Observation/o85-2", "Patient/85"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("exported %v, want %v", got, want)
	}
	if r := g.do(patient35, "GET", status.RequestURI(), nil); r.Code != 404 {
		t.Errorf("another patient polls: %d", r.Code)
	}
	// A narrowed token cannot export at all (rs on every type).
	narrowed := who{user: "app", role: "physician", scopes: "user/Observation.rs"}
	mustStatus(t, g.do(narrowed, "GET", "/fhir/R4/$export", nil, "Prefer", "respond-async"), 403)

	w := httptest.NewRecorder()
	g.AdminHandler().ServeHTTP(w, httptest.NewRequest("GET", "/admin/fhir/exports", nil))
	var list struct {
		Exports []struct{ Kind, Status string } `json:"exports"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || w.Code != 200 || len(list.Exports) != 1 ||
		list.Exports[0].Status != "completed" || list.Exports[0].Kind != "patient" || strings.Contains(w.Body.String(), "p85") {
		t.Errorf("admin listing %d: %s", w.Code, w.Body)
	}
	mustStatus(t, g.do(patient85, "DELETE", status.RequestURI(), nil), 202)
}
