package authz

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
)

// upstreamB is the embedded FHIR server of another OmniGate instance,
// without authz, holding the Synthea patients 85 and 355: the upstream the
// gateway under test (A) enforces its policy in front of.
type upstreamB struct {
	*gw
	addr string
	// ids of resources in each patient's compartment, by type
	ids map[string]map[string][]string
}

var (
	sharedB     *upstreamB
	sharedBOnce sync.Mutex
)

const bYAML = `
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
fhir:
  store: {path: ":memory:"}
routes:
  - name: fhir
    fhir: true
`

// newB starts an upstream with the Synthea data. Tests that write get
// their own; readers share one (fresh=false).
func newB(t *testing.T, fresh bool) *upstreamB {
	t.Helper()
	if !fresh {
		sharedBOnce.Lock()
		defer sharedBOnce.Unlock()
		if sharedB != nil {
			return sharedB
		}
	}
	var g *gw
	if fresh {
		g = newGateway(t, bYAML)
	} else {
		// Shared by the package's tests, shut down by TestMain.
		g = startGateway(t, bYAML)
	}
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	b := &upstreamB{gw: g, addr: g.Addr(), ids: map[string]map[string][]string{}}
	loadSynthea(t, g, nobody)
	for _, pid := range []string{"85", "355"} {
		b.ids[pid] = map[string][]string{}
		rec := g.do(nobody, "GET", "/fhir/R4/Patient/"+pid+"/*?_count=1000", nil)
		if rec.Code != 200 {
			// the embedded server has no Patient/x/* search: list the
			// types that matter
			for _, typ := range []string{"Observation", "Encounter", "Condition", "Procedure", "Immunization", "DiagnosticReport"} {
				rec := g.do(nobody, "GET", "/fhir/R4/Patient/"+pid+"/"+typ+"?_count=1000&_elements=id", nil)
				mustStatus(t, rec, 200)
				rs, _ := resources(t, rec)
				for _, r := range rs {
					b.ids[pid][typ] = append(b.ids[pid][typ], r["id"].(string))
				}
			}
		}
	}
	if !fresh {
		sharedB = b
	}
	return b
}

// count asks B directly how many resources a search finds.
func (b *upstreamB) count(t *testing.T, path string) int {
	t.Helper()
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	rec := b.do(nobody, "GET", path+sep+"_summary=count", nil)
	mustStatus(t, rec, 200)
	return total(t, rec)
}

func (b *upstreamB) first(t *testing.T, patient, typ string) string {
	t.Helper()
	ids := b.ids[patient][typ]
	if len(ids) == 0 {
		t.Fatalf("no %s for patient %s in the test data", typ, patient)
	}
	return ids[0]
}

// aYAML is the gateway under test in front of B; extra is more authz keys.
func aYAML(b *upstreamB, extra string) string {
	return fmt.Sprintf(`
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
plugins:
  as: {type: as}
  record: {type: record}
  authz:
    type: authz
    roles:
      physician: {scopes: [user/*.cruds]}
      nurse: {scopes: [user/*.rs, user/Observation.cu]}
      patient: {scopes: [patient/*.rs], patient_context: true}
      writer: {scopes: [patient/*.cruds], patient_context: true}
%s
routes:
  - name: legacy
    path: /fhir/R4/*path
    upstream: http://%s
    fhir_errors: true
    plugins: [as, record, authz]
`, indent(extra, "    "), b.addr)
}

func indent(s, by string) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := range lines {
		lines[i] = by + lines[i]
	}
	return strings.Join(lines, "\n")
}

var writer85 = who{user: "w85", role: "writer", patient: "85"}

// noOtherPatient fails when a 2xx answer carries a resource of patient
// 355's: the Patient itself, or any resource that names Patient/355.
// OperationOutcomes and Bundle links (which echo what was asked) are not
// data.
func noOtherPatient(t *testing.T, what string, rec *httptest.ResponseRecorder) {
	t.Helper()
	if rec.Code >= 300 || rec.Body.Len() == 0 {
		return
	}
	var v any
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if leak := leakOf(v); leak != "" {
		t.Errorf("%s: patient 355's data reached patient 85: %s", what, truncate(leak))
	}
}

func leakOf(v any) string {
	m, ok := v.(map[string]any)
	if !ok {
		return ""
	}
	switch m["resourceType"] {
	case "OperationOutcome":
		return ""
	case "Bundle":
		es, _ := m["entry"].([]any)
		for _, e := range es {
			em, _ := e.(map[string]any)
			if l := leakOf(em["resource"]); l != "" {
				return l
			}
			if r, ok := em["response"].(map[string]any); ok {
				if l := leakOf(r["outcome"]); l != "" {
					return l
				}
			}
		}
		return ""
	}
	b, _ := json.Marshal(m)
	if m["resourceType"] == "Patient" && m["id"] == "355" || strings.Contains(string(b), "Patient/355") {
		return string(b)
	}
	return ""
}

func TestUpstreamReads(t *testing.T) {
	b := newB(t, false)
	a := newGateway(t, aYAML(b, ""))
	obs85, obs355 := b.first(t, "85", "Observation"), b.first(t, "355", "Observation")
	prac := func() string {
		rec := b.do(nobody, "GET", "/fhir/R4/Practitioner?_count=1", nil)
		rs, _ := resources(t, rec)
		return rs[0]["id"].(string)
	}()
	for _, tc := range []struct {
		name   string
		as     who
		method string
		path   string
		want   int
	}{
		{"own record", patient85, "GET", "/fhir/R4/Patient/85", 200},
		{"another patient", patient85, "GET", "/fhir/R4/Patient/355", 404},
		{"own observation", patient85, "GET", "/fhir/R4/Observation/" + obs85, 200},
		{"another's observation", patient85, "GET", "/fhir/R4/Observation/" + obs355, 404},
		{"another's observation, HEAD", patient85, "HEAD", "/fhir/R4/Observation/" + obs355, 404},
		{"another's version", patient85, "GET", "/fhir/R4/Observation/" + obs355 + "/_history/1", 404},
		{"own version", patient85, "GET", "/fhir/R4/Observation/" + obs85 + "/_history/1", 200},
		{"a readable practitioner", patient85, "GET", "/fhir/R4/Practitioner/" + prac, 200},
		{"with _elements that would hide the subject", patient85, "GET", "/fhir/R4/Observation/" + obs355 + "?_elements=id", 404},
		{"with _summary", patient85, "GET", "/fhir/R4/Patient/355?_summary=true", 404},
		{"not found stays not found", patient85, "GET", "/fhir/R4/Observation/nope", 404},
		{"the physician reads anyone's", physician, "GET", "/fhir/R4/Observation/" + obs355, 200},
		{"XML is not checkable", patient85, "GET", "/fhir/R4/Patient/85?_format=xml", 406},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := a.do(tc.as, tc.method, tc.path, nil)
			mustStatus(t, rec, tc.want)
			if tc.as == patient85 {
				noOtherPatient(t, tc.path, rec)
			}
		})
	}
	rec := a.do(patient85, "GET", "/fhir/R4/Observation/"+obs355, nil)
	if r := recordOf(t, rec); r.Allowed || !strings.Contains(r.Reason, "outside the patient's compartment") {
		t.Errorf("record of a read outside the compartment: %+v", r)
	}
	if _, d := diagnostics(t, rec); strings.Contains(d, "compartment") {
		t.Errorf("the 404 tells the client why: %q", d)
	}
	rec = a.do(patient85, "GET", "/fhir/R4/Observation/"+obs85, nil)
	if r := recordOf(t, rec); !r.Allowed || r.Patient != "85" {
		t.Errorf("record of an own read: %+v", r)
	}
	if rec.Header().Get("ETag") == "" {
		t.Error("the upstream's headers were not relayed")
	}
}

func TestUpstreamSearch(t *testing.T) {
	b := newB(t, false)
	for _, narrowing := range []string{NarrowCompartment, NarrowParameter} {
		t.Run(narrowing, func(t *testing.T) {
			a := newGateway(t, aYAML(b, "enforcement: {narrowing: "+narrowing+"}"))
			check := func(as who, path string, want func(t *testing.T, rec *httptest.ResponseRecorder)) {
				t.Helper()
				t.Run(path, func(t *testing.T) {
					rec := a.do(as, "GET", path, nil)
					mustStatus(t, rec, 200)
					if as == patient85 {
						noOtherPatient(t, path, rec)
					}
					want(t, rec)
				})
			}
			check(patient85, "/fhir/R4/Observation?_count=1000", func(t *testing.T, rec *httptest.ResponseRecorder) {
				rs, _ := resources(t, rec)
				want := b.count(t, "/fhir/R4/Observation?subject=Patient/85")
				if narrowing == NarrowCompartment {
					want = b.count(t, "/fhir/R4/Patient/85/Observation")
				}
				if len(rs) != want || total(t, rec) != want || want == 0 {
					t.Errorf("%d observations, total %d; the upstream has %d", len(rs), total(t, rec), want)
				}
			})
			check(patient85, "/fhir/R4/Observation?subject=Patient/355", func(t *testing.T, rec *httptest.ResponseRecorder) {
				if rs, _ := resources(t, rec); len(rs) != 0 || total(t, rec) != 0 {
					t.Errorf("found %d", len(rs))
				}
			})
			check(patient85, "/fhir/R4/Patient", func(t *testing.T, rec *httptest.ResponseRecorder) {
				rs, _ := resources(t, rec)
				if len(rs) != 1 || rs[0]["id"] != "85" {
					t.Errorf("patients %v", rs)
				}
			})
			check(patient85, "/fhir/R4/Patient?_id=355", func(t *testing.T, rec *httptest.ResponseRecorder) {
				if total(t, rec) != 0 {
					t.Error("found 355")
				}
			})
			check(patient85, "/fhir/R4/Encounter?_include=Encounter:participant&_include=Encounter:subject&_count=5", func(t *testing.T, rec *httptest.ResponseRecorder) {
				rs, modes := resources(t, rec)
				inc := 0
				for i, r := range rs {
					if modes[i] == "include" {
						inc++
						if typ := r["resourceType"]; typ != "Practitioner" && typ != "Patient" {
							t.Errorf("included %v", typ)
						}
					}
				}
				if inc == 0 {
					t.Error("nothing included")
				}
			})
			// Reverse includes reach only the compartment (a Provenance
			// that targets the patient is in it).
			check(patient85, "/fhir/R4/Patient?_revinclude=Provenance:target&_revinclude=Encounter:subject&_count=1", func(t *testing.T, rec *httptest.ResponseRecorder) {
				rs, modes := resources(t, rec)
				n := 0
				for i := range rs {
					if modes[i] == "include" {
						n++
					}
				}
				if n == 0 {
					t.Error("nothing included")
				}
			})
			check(physician, "/fhir/R4/Observation?subject=Patient/355&_summary=count", func(t *testing.T, rec *httptest.ResponseRecorder) {
				if total(t, rec) != b.count(t, "/fhir/R4/Observation?subject=Patient/355") {
					t.Error("the physician's count differs from the upstream's")
				}
			})
			// POST _search is narrowed like GET.
			t.Run("POST _search", func(t *testing.T) {
				rec := a.do(patient85, "POST", "/fhir/R4/Observation/_search", "subject=Patient/355", "Content-Type", "application/x-www-form-urlencoded")
				mustStatus(t, rec, 200)
				if total(t, rec) != 0 {
					t.Errorf("POST _search found %d of 355's", total(t, rec))
				}
			})
		})
	}
	a := newGateway(t, aYAML(b, ""))
	for _, tc := range []struct {
		name, path, reason string
	}{
		{"a search of every type", "/fhir/R4?_type=Observation", "search one type at a time"},
		{"a history of a type", "/fhir/R4/Observation/_history", "cannot be confined"},
		{"a history of everything", "/fhir/R4/_history", "cannot be confined"},
		{"another compartment", "/fhir/R4/Patient/355/Encounter", "not the patient in context"},
		{"named queries", "/fhir/R4/Observation?_query=everything", "_query"},
		{"contained resources", "/fhir/R4/Observation?_contained=true", "_contained"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := a.do(patient85, "GET", tc.path, nil)
			mustStatus(t, rec, 403)
			if _, d := diagnostics(t, rec); !strings.Contains(d, tc.reason) {
				t.Errorf("diagnostics %q, want %q", d, tc.reason)
			}
		})
	}
	// An instance history is confined by checking each version; with no
	// version left, it is answered as a read: 404, as if it did not exist.
	rec := a.do(patient85, "GET", "/fhir/R4/Observation/"+b.first(t, "355", "Observation")+"/_history", nil)
	mustStatus(t, rec, 404)
	if rec.Body.String() != a.do(patient85, "GET", "/fhir/R4/Observation/"+b.first(t, "355", "Observation"), nil).Body.String() {
		t.Errorf("the history of a hidden resource is not answered as its read: %s", rec.Body)
	}
	rec = a.do(patient85, "GET", "/fhir/R4/Observation/"+b.first(t, "85", "Observation")+"/_history", nil)
	if rs, _ := resources(t, rec); len(rs) != 1 {
		t.Errorf("own history: %d versions", len(rs))
	}
}

func TestUpstreamConstraints(t *testing.T) {
	b := newB(t, false)
	a := newGateway(t, aYAML(b, ""))
	labs := who{user: "lab", role: "physician", scopes: "user/Observation.rs?category=laboratory"}
	labsVitals := who{user: "lv", role: "physician", scopes: "user/Observation.rs?category=laboratory user/Observation.rs?category=vital-signs"}
	mixed := who{user: "mx", role: "physician", scopes: "user/Observation.rs?category=laboratory user/Observation.rs?status=final"}
	dated := who{user: "dt", role: "physician", scopes: "user/Observation.rs?date=ge2020"}
	labs85 := who{user: "pl", role: "patient", patient: "85", scopes: "patient/Observation.rs?category=laboratory"}
	categories := func(t *testing.T, rec *httptest.ResponseRecorder) []string {
		rs, _ := resources(t, rec)
		var out []string
		for _, r := range rs {
			var cs []string
			for _, c := range r["category"].([]any) {
				for _, cd := range c.(map[string]any)["coding"].([]any) {
					cs = append(cs, cd.(map[string]any)["code"].(string))
				}
			}
			out = append(out, strings.Join(cs, "+"))
		}
		return out
	}
	t.Run("one constraint", func(t *testing.T) {
		rec := a.do(labs, "GET", "/fhir/R4/Observation?_count=1000", nil)
		mustStatus(t, rec, 200)
		cs := categories(t, rec)
		want := b.count(t, "/fhir/R4/Observation?category=laboratory")
		if len(cs) != want || want == 0 {
			t.Errorf("%d labs, the upstream has %d", len(cs), want)
		}
		for _, c := range cs {
			if !strings.Contains(c, "laboratory") {
				t.Errorf("a %s observation", c)
			}
		}
	})
	t.Run("alternatives in one parameter", func(t *testing.T) {
		rec := a.do(labsVitals, "GET", "/fhir/R4/Observation?_count=1000", nil)
		mustStatus(t, rec, 200)
		want := b.count(t, "/fhir/R4/Observation?category=laboratory,vital-signs")
		if cs := categories(t, rec); len(cs) != want {
			t.Errorf("%d, want %d", len(cs), want)
		}
	})
	t.Run("alternatives one search cannot express", func(t *testing.T) {
		rec := a.do(mixed, "GET", "/fhir/R4/Observation", nil)
		mustStatus(t, rec, 403)
		if _, d := diagnostics(t, rec); !strings.Contains(d, "one search cannot express") {
			t.Errorf("%q", d)
		}
	})
	t.Run("constraints the gateway cannot check", func(t *testing.T) {
		mustStatus(t, a.do(dated, "GET", "/fhir/R4/Observation", nil), 403)
	})
	t.Run("a read outside the constraint", func(t *testing.T) {
		rec := b.do(nobody, "GET", "/fhir/R4/Observation?category=social-history&_count=1", nil)
		rs, _ := resources(t, rec)
		mustStatus(t, a.do(labs, "GET", "/fhir/R4/Observation/"+rs[0]["id"].(string), nil), 404)
		rec = b.do(nobody, "GET", "/fhir/R4/Observation?category=laboratory&_count=1", nil)
		rs, _ = resources(t, rec)
		mustStatus(t, a.do(labs, "GET", "/fhir/R4/Observation/"+rs[0]["id"].(string), nil), 200)
	})
	t.Run("a constraint and a compartment", func(t *testing.T) {
		rec := a.do(labs85, "GET", "/fhir/R4/Observation?_count=1000", nil)
		mustStatus(t, rec, 200)
		noOtherPatient(t, "labs of 85", rec)
		if want := b.count(t, "/fhir/R4/Patient/85/Observation?category=laboratory"); len(categories(t, rec)) != want || want == 0 {
			t.Errorf("want %d", want)
		}
	})
}

func TestUpstreamWrites(t *testing.T) {
	b := newB(t, true)
	a := newGateway(t, aYAML(b, ""))
	obs85, obs355 := b.first(t, "85", "Observation"), b.first(t, "355", "Observation")
	body := func(id, patient string) string {
		idPart := ""
		if id != "" {
			idPart = `"id":"` + id + `",`
		}
		return `{"resourceType":"Observation",` + idPart + `"status":"final","code":{"text":"test"},"identifier":[{"system":"urn:t","value":"` + id + patient + `"}],"subject":{"reference":"Patient/` + patient + `"}}`
	}
	version := func(id string) string {
		rec := b.do(nobody, "GET", "/fhir/R4/Observation/"+id, nil)
		mustStatus(t, rec, 200)
		return rec.Header().Get("ETag")
	}
	subjectOf := func(id string) string {
		rec := b.do(nobody, "GET", "/fhir/R4/Observation/"+id, nil)
		return jsonOf(t, rec)["subject"].(map[string]any)["reference"].(string)
	}
	v355 := version(obs355)
	patch := func(patient string) string {
		return `[{"op":"replace","path":"/subject/reference","value":"Patient/` + patient + `"}]`
	}
	for _, tc := range []struct {
		name         string
		as           who
		method, path string
		body         string
		header       []string
		want         int
	}{
		{"create in the compartment", writer85, "POST", "/fhir/R4/Observation", body("", "85"), nil, 201},
		{"create in another's", writer85, "POST", "/fhir/R4/Observation", body("", "355"), nil, 403},
		{"update own, staying", writer85, "PUT", "/fhir/R4/Observation/" + obs85, body(obs85, "85"), nil, 200},
		{"update own, moving it to another patient", writer85, "PUT", "/fhir/R4/Observation/" + obs85, body(obs85, "355"), nil, 403},
		{"update another's, taking it", writer85, "PUT", "/fhir/R4/Observation/" + obs355, body(obs355, "85"), nil, 403},
		{"update with a stale If-Match", writer85, "PUT", "/fhir/R4/Observation/" + obs85, body(obs85, "85"), []string{"If-Match", `W/"1"`}, 412},
		{"update that creates, inside", writer85, "PUT", "/fhir/R4/Observation/new85", body("new85", "85"), nil, 201},
		{"update that creates, outside", writer85, "PUT", "/fhir/R4/Observation/new355", body("new355", "355"), nil, 403},
		{"patch own", writer85, "PATCH", "/fhir/R4/Observation/" + obs85, `[{"op":"replace","path":"/status","value":"amended"}]`, []string{"Content-Type", "application/json-patch+json"}, 200},
		{"patch own out of the compartment", writer85, "PATCH", "/fhir/R4/Observation/" + obs85, patch("355"), []string{"Content-Type", "application/json-patch+json"}, 403},
		{"patch another's into the compartment", writer85, "PATCH", "/fhir/R4/Observation/" + obs355, patch("85"), []string{"Content-Type", "application/json-patch+json"}, 403},
		{"conditional update of another's", writer85, "PUT", "/fhir/R4/Observation?_id=" + obs355, body(obs355, "85"), nil, 201},
		{"conditional update of own", writer85, "PUT", "/fhir/R4/Observation?_id=new85", body("", "85"), nil, 200},
		{"conditional patch of another's", writer85, "PATCH", "/fhir/R4/Observation?_id=" + obs355, patch("85"), []string{"Content-Type", "application/json-patch+json"}, 404},
		{"conditional delete of another's", writer85, "DELETE", "/fhir/R4/Observation?_id=" + obs355, "", nil, 204},
		{"delete another's", writer85, "DELETE", "/fhir/R4/Observation/" + obs355, "", nil, 403},
		{"delete own", writer85, "DELETE", "/fhir/R4/Observation/new85", "", nil, 204},
		{"the physician updates anyone's", physician, "PUT", "/fhir/R4/Observation/" + obs355, body(obs355, "355"), nil, 200},
		{"a read-only patient writes nothing", patient85, "POST", "/fhir/R4/Observation", body("", "85"), nil, 403},
		{"a create whose body is of another type", nurse, "POST", "/fhir/R4/Observation", `{"resourceType":"Condition","subject":{"reference":"Patient/85"}}`, nil, 400},
		{"an update whose body is of another type", nurse, "PUT", "/fhir/R4/Observation/" + obs85, `{"resourceType":"Condition","id":"` + obs85 + `"}`, nil, 400},
		{"a body with a key twice", writer85, "POST", "/fhir/R4/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"t"},"subject":{"reference":"Patient/85"},"Subject":{"reference":"Patient/355"}}`, nil, 400},
		{"an update that would create needs c", who{user: "u", role: "physician", scopes: "user/Observation.rus"}, "PUT", "/fhir/R4/Observation/brand-new", body("brand-new", "85"), nil, 403},
		{"a conditional update that would create needs c", who{user: "u", role: "physician", scopes: "user/Observation.rus"}, "PUT", "/fhir/R4/Observation?identifier=urn:t|nothing", body("", "85"), nil, 403},
		{"a conditional update of an existing one needs no c", who{user: "u", role: "physician", scopes: "user/Observation.rus"}, "PUT", "/fhir/R4/Observation?_id=" + obs85, body("", "85"), nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := a.do(tc.as, tc.method, tc.path, tc.body, tc.header...)
			mustStatus(t, rec, tc.want)
			if tc.as != physician {
				noOtherPatient(t, tc.name, rec)
			}
		})
	}
	// Nothing the refusals aimed at changed; the physician's update is
	// the one new version of 355's observation.
	if got := subjectOf(obs355); got != "Patient/355" {
		t.Errorf("355's observation now belongs to %s", got)
	}
	if got := version(obs355); got == v355 || got != `W/"2"` {
		t.Errorf("355's observation at %s (was %s): a refused write reached it", got, v355)
	}
	if got := subjectOf(obs85); got != "Patient/85" {
		t.Errorf("85's observation moved to %s", got)
	}
	if rec := b.do(nobody, "GET", "/fhir/R4/Observation/new355", nil); rec.Code != 404 {
		t.Errorf("new355 was created: %d", rec.Code)
	}
	// The conditional update that matched nothing inside the compartment
	// created a new observation for 85 (it did not take 355's).
	rec := b.do(nobody, "GET", "/fhir/R4/Observation?subject=Patient/85&status=final&code:text=test&_count=100", nil)
	if rs, _ := resources(t, rec); len(rs) < 2 {
		t.Errorf("%d test observations for 85", len(rs))
	}
}

// TestUpstreamBundles: batches are split, decided entry by entry and
// spliced back in order; a transaction with one refused entry is refused
// whole.
func TestUpstreamBundles(t *testing.T) {
	b := newB(t, true)
	a := newGateway(t, aYAML(b, ""))
	obs85, obs355 := b.first(t, "85", "Observation"), b.first(t, "355", "Observation")
	entry := func(method, u string, res string) map[string]any {
		e := map[string]any{"request": map[string]any{"method": method, "url": u}}
		if res != "" {
			e["resource"] = json.RawMessage(res)
		}
		return e
	}
	bundle := func(typ string, es ...map[string]any) map[string]any {
		return map[string]any{"resourceType": "Bundle", "type": typ, "entry": es}
	}
	newObs := func(patient string) string {
		return `{"resourceType":"Observation","status":"final","code":{"text":"bundle"},"subject":{"reference":"Patient/` + patient + `"}}`
	}
	statuses := func(t *testing.T, rec *httptest.ResponseRecorder) []string {
		var out []string
		for _, e := range jsonOf(t, rec)["entry"].([]any) {
			st := e.(map[string]any)["response"].(map[string]any)["status"].(string)
			code, _, _ := strings.Cut(st, " ")
			out = append(out, code)
		}
		return out
	}
	t.Run("batch", func(t *testing.T) {
		rec := a.do(writer85, "POST", "/fhir/R4", bundle("batch",
			entry("GET", "Patient/85", ""),
			entry("GET", "Patient/355", ""),
			entry("GET", "Observation?subject=Patient/355", ""),
			entry("POST", "Observation", newObs("355")),
			entry("POST", "Observation", newObs("85")),
			entry("GET", "Patient/355/Observation", ""),
			entry("DELETE", "Observation/"+obs355, ""),
			entry("GET", "http://elsewhere.example/fhir/R4/Observation/"+obs355, ""),
			entry("POST", "", `{"resourceType":"Bundle","type":"batch"}`),
			entry("GET", "AuditEvent", ""),
			entry("GET", "Observation/"+obs85, ""),
		))
		mustStatus(t, rec, 200)
		noOtherPatient(t, "batch", rec)
		want := []string{"200", "404", "200", "403", "201", "403", "403", "404", "403", "403", "200"}
		if got := statuses(t, rec); !slices.Equal(got, want) {
			t.Errorf("statuses %v\nwant     %v", got, want)
		}
		es := jsonOf(t, rec)["entry"].([]any)
		if sb := es[2].(map[string]any)["resource"].(map[string]any); sb["total"].(float64) != 0 {
			t.Errorf("the narrowed search entry found %v", sb["total"])
		}
		r := recordOf(t, rec)
		if !r.Allowed || len(r.Entries) != len(want) {
			t.Fatalf("record %+v", r)
		}
		for i, e := range r.Entries {
			if e.Allowed != (want[i][0] == '2') || e.Index != i || !e.Allowed && e.Reason == "" {
				t.Errorf("entry %d recorded %+v (answered %s)", i, e, want[i])
			}
		}
		if b.count(t, "/fhir/R4/Observation?subject=Patient/355&code:text=bundle") != 0 {
			t.Error("the refused create reached the upstream")
		}
		if rec := b.do(nobody, "GET", "/fhir/R4/Observation/"+obs355, nil); rec.Code != 200 {
			t.Error("the refused delete reached the upstream")
		}
	})
	t.Run("transaction with a refused entry", func(t *testing.T) {
		before := b.count(t, "/fhir/R4/Observation?subject=Patient/85&code:text=bundle")
		rec := a.do(writer85, "POST", "/fhir/R4", bundle("transaction",
			entry("POST", "Observation", newObs("85")),
			entry("PUT", "Observation/"+obs355, `{"resourceType":"Observation","id":"`+obs355+`","status":"final","code":{"text":"taken"},"subject":{"reference":"Patient/85"}}`),
		))
		mustStatus(t, rec, 403)
		if _, d := diagnostics(t, rec); !strings.Contains(d, "entry 1 (PUT Observation/"+obs355+")") {
			t.Errorf("diagnostics %q do not name the entry", d)
		}
		if after := b.count(t, "/fhir/R4/Observation?subject=Patient/85&code:text=bundle"); after != before {
			t.Error("part of the refused transaction was written")
		}
		r := recordOf(t, rec)
		if r.Allowed || len(r.Entries) != 2 || !r.Entries[0].Allowed || r.Entries[1].Allowed {
			t.Errorf("record %+v", r)
		}
	})
	t.Run("transaction allowed", func(t *testing.T) {
		rec := a.do(writer85, "POST", "/fhir/R4", bundle("transaction",
			entry("POST", "Observation", newObs("85")),
			entry("GET", "Observation/"+obs355, ""),
			entry("GET", "Observation?code:text=bundle", ""),
		))
		mustStatus(t, rec, 200)
		noOtherPatient(t, "transaction", rec)
		if got := statuses(t, rec); !slices.Equal(got, []string{"201", "404", "200"}) {
			t.Errorf("statuses %v", got)
		}
	})
	t.Run("transaction smuggling a conditional update", func(t *testing.T) {
		rec := a.do(writer85, "POST", "/fhir/R4", bundle("transaction",
			entry("PUT", "Observation?_id="+obs355, `{"resourceType":"Observation","status":"final","code":{"text":"smuggled"},"subject":{"reference":"Patient/85"}}`),
		))
		mustStatus(t, rec, 200)
		if rec := b.do(nobody, "GET", "/fhir/R4/Observation/"+obs355, nil); strings.Contains(rec.Body.String(), "smuggled") {
			t.Error("a conditional update in a transaction took another patient's observation")
		}
	})
	t.Run("a read-only patient's batch", func(t *testing.T) {
		rec := a.do(patient85, "POST", "/fhir/R4", bundle("batch",
			entry("GET", "Patient/85", ""),
			entry("POST", "Observation", newObs("85")),
		))
		mustStatus(t, rec, 200)
		if got := statuses(t, rec); !slices.Equal(got, []string{"200", "403"}) {
			t.Errorf("statuses %v", got)
		}
	})
	t.Run("not a bundle", func(t *testing.T) {
		mustStatus(t, a.do(writer85, "POST", "/fhir/R4", `{"resourceType":"Patient"}`), 400)
		mustStatus(t, a.do(writer85, "POST", "/fhir/R4", `{`), 400)
	})
}

// TestUpstreamBypasses: every path patient 85 might take to another
// patient's data through an upstream route.
func TestUpstreamBypasses(t *testing.T) {
	b := newB(t, false)
	for _, narrowing := range []string{NarrowCompartment, NarrowParameter} {
		a := newGateway(t, aYAML(b, "enforcement: {narrowing: "+narrowing+"}"))
		obs355, enc355 := b.first(t, "355", "Observation"), b.first(t, "355", "Encounter")
		form := "application/x-www-form-urlencoded"
		batch := func(urls ...string) string {
			var es []string
			for _, u := range urls {
				es = append(es, `{"request":{"method":"GET","url":`+strconvQuote(u)+`}}`)
			}
			return `{"resourceType":"Bundle","type":"batch","entry":[` + strings.Join(es, ",") + `]}`
		}
		for _, tc := range []struct {
			method, path, body string
			header             []string
		}{
			{"GET", "/fhir/R4/Observation?subject=Patient/355", "", nil},
			{"GET", "/fhir/R4/Observation?patient=355", "", nil},
			{"GET", "/fhir/R4/Observation?_id=" + obs355, "", nil},
			{"GET", "/fhir/R4/Observation?subject:missing=false&_count=1000", "", nil},
			{"GET", "/fhir/R4/Patient?_id=355", "", nil},
			{"GET", "/fhir/R4/Patient?identifier:missing=false", "", nil},
			{"GET", "/fhir/R4/Patient/355", "", nil},
			{"GET", "/fhir/R4/Patient/355/Observation", "", nil},
			{"GET", "/fhir/R4/Patient/355/_history", "", nil},
			{"GET", "/fhir/R4/Encounter/" + enc355, "", nil},
			{"GET", "/fhir/R4/Encounter?_include=Encounter:subject&_count=1000", "", nil},
			{"GET", "/fhir/R4/Practitioner?_revinclude=Encounter:participant&_count=5", "", nil},
			{"GET", "/fhir/R4/Organization?_revinclude=Patient:organization", "", nil},
			{"GET", "/fhir/R4/Practitioner?_has:Encounter:participant:subject=Patient/355", "", nil},
			{"GET", "/fhir/R4/Encounter?subject.name=Christiansen", "", nil},
			{"GET", "/fhir/R4?_type=Encounter", "", nil},
			{"GET", "/fhir/R4/_history", "", nil},
			{"GET", "/fhir/R4/Encounter/_history", "", nil},
			{"GET", "/fhir/R4/Observation/" + obs355 + "/_history/1", "", nil},
			{"GET", "/fhir/R4/Patient/355/$everything", "", nil},
			{"POST", "/fhir/R4/Observation/_search", "subject=Patient/355", []string{"Content-Type", form}},
			{"POST", "/fhir/R4/Patient/355/Observation/_search", "", []string{"Content-Type", form}},
			{"POST", "/fhir/R4", batch("Patient/355", "Observation?subject=Patient/355", "Patient/355/Encounter",
				"Observation/"+obs355, "http://other.example/fhir/R4/Patient/355", "Encounter?_include=Encounter:subject"), nil},
			{"POST", "/fhir/R4", `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"GET","url":"Patient/355"}}]}`, nil},
			{"GET", "/fhir/R4/Observation/" + obs355, "", []string{DefaultBreakGlassHeader, "emergency"}},
			{"GET", "/fhir/R4/Observation/" + obs355 + "?_method=GET", "", nil},
			{"POST", "/fhir/R4/Observation/_search", "", []string{"X-HTTP-Method-Override", "GET", "Content-Type", form}},
		} {
			t.Run(narrowing+" "+tc.method+" "+tc.path, func(t *testing.T) {
				rec := a.do(patient85, tc.method, tc.path, tc.body, tc.header...)
				if rec.Code >= 500 {
					t.Errorf("status %d: %s", rec.Code, truncate(rec.Body.String()))
				}
				noOtherPatient(t, tc.path, rec)
			})
		}
	}
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestEmbeddedGatewayEnforcement: an embedded route may be enforced by the
// gateway like an upstream one.
func TestEmbeddedGatewayEnforcement(t *testing.T) {
	g := newGateway(t, strings.Replace(embeddedYAML, "    type: authz\n", "    type: authz\n    enforcement: {embedded: gateway}\n", 1))
	loadSynthea(t, g, physician)
	rec := g.do(patient85, "GET", "/fhir/R4/Encounter?_count=1000", nil)
	mustStatus(t, rec, 200)
	noOtherPatient(t, "encounters", rec)
	if rs, _ := resources(t, rec); len(rs) == 0 {
		t.Error("no encounters of 85")
	}
	mustStatus(t, g.do(patient85, "GET", "/fhir/R4/Patient/355", nil), 404)
}
