package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/omnigate/omnigate/gateway"
)

const embeddedYAML = `
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
fhir:
  store: {path: ":memory:"}
  smart: {token_endpoint: "https://idp.example.org/token"}
plugins:
  as: {type: as}
  record: {type: record}
  authz:
    type: authz
    break_glass: {roles: [physician]}
  probe: {type: probe}
routes:
  - name: fhir
    fhir: true
    plugins: [as, record, authz, probe]
`

// TestDecisions: roles × scopes × interactions on an embedded route, where
// the plugin decides the type-level permission and hands the policy to the
// server.
func TestDecisions(t *testing.T) {
	g := newGateway(t, embeddedYAML)
	const obs = `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/85"}}`
	const cond = `{"resourceType":"MedicationRequest","status":"active","intent":"order","medicationCodeableConcept":{"text":"x"},"subject":{"reference":"Patient/85"}}`
	narrowed := who{user: "app", role: "physician", scopes: "openid user/Observation.rs"}
	widening := who{user: "nurse-2", role: "nurse", scopes: "user/*.cruds"}
	noResource := who{user: "oidc", role: "physician", scopes: "openid fhirUser"}
	launched := who{user: "dr-app", role: "physician", scopes: "patient/*.rs", patient: "85"}
	admin := who{user: "root", role: "admin"}
	janitor := who{user: "j", role: "janitor"}
	noRole := who{user: "r"}
	for _, tc := range []struct {
		name         string
		as           who
		method, path string
		body         string
		header       []string
		allowed      bool
		reason       string // part of the refusal's diagnostics
	}{
		{"physician reads", physician, "GET", "/fhir/R4/Patient/85", "", nil, true, ""},
		{"physician searches everything", physician, "GET", "/fhir/R4?_type=Patient", "", nil, true, ""},
		{"physician deletes", physician, "DELETE", "/fhir/R4/Observation/1", "", nil, true, ""},
		{"physician cannot read the audit trail", physician, "GET", "/fhir/R4/AuditEvent", "", nil, false, "AuditEvent"},
		{"admin reads the audit trail", admin, "GET", "/fhir/R4/AuditEvent", "", nil, true, ""},
		{"nobody writes the audit trail", admin, "POST", "/fhir/R4/AuditEvent", `{"resourceType":"AuditEvent"}`, nil, false, "audit trail"},
		{"nurse reads", nurse, "GET", "/fhir/R4/Condition?patient=85", "", nil, true, ""},
		{"nurse records vitals", nurse, "POST", "/fhir/R4/Observation", obs, nil, true, ""},
		{"nurse updates vitals", nurse, "PUT", "/fhir/R4/Observation/o1", obs, nil, true, ""},
		{"nurse conditionally updates vitals (u and s)", nurse, "PUT", "/fhir/R4/Observation?identifier=x", obs, nil, true, ""},
		{"nurse cannot prescribe", nurse, "POST", "/fhir/R4/MedicationRequest", cond, nil, false, "no scope grants c on MedicationRequest"},
		{"nurse cannot delete", nurse, "DELETE", "/fhir/R4/Observation/o1", "", nil, false, "no scope grants d"},
		{"nurse cannot conditionally create a MedicationRequest", nurse, "POST", "/fhir/R4/MedicationRequest", cond, []string{"If-None-Exist", "identifier=x"}, false, "cs"},
		{"nurse cannot patch a Patient", nurse, "PATCH", "/fhir/R4/Patient/85", `[]`, []string{"Content-Type", "application/json-patch+json"}, false, "no scope grants u"},
		{"patient reads own data", patient85, "GET", "/fhir/R4/Observation?code=x", "", nil, true, ""},
		{"patient reads a practitioner", patient85, "GET", "/fhir/R4/Practitioner/1", "", nil, true, ""},
		{"patient reads a location", patient85, "GET", "/fhir/R4/Location?name=x", "", nil, true, ""},
		{"patient cannot read devices (outside the compartment)", patient85, "GET", "/fhir/R4/Device", "", nil, false, "outside the patient's compartment"},
		{"patient cannot write", patient85, "POST", "/fhir/R4/Observation", obs, nil, false, "no scope grants c"},
		{"patient cannot search another compartment", patient85, "GET", "/fhir/R4/Patient/355/Observation", "", nil, false, "Patient/355 is not the patient in context"},
		{"patient searches own compartment", patient85, "GET", "/fhir/R4/Patient/85/Observation", "", nil, true, ""},
		{"patient cannot chain into other patients", patient85, "GET", "/fhir/R4/Observation?subject.name=Smith", "", nil, false, "subject.name"},
		{"patient cannot reverse-chain", patient85, "GET", "/fhir/R4/Practitioner?_has:Observation:performer:code=x", "", nil, false, "_has"},
		{"physician chains", physician, "GET", "/fhir/R4/Observation?subject:Patient.name=Smith", "", nil, true, ""},
		{"a chain into a type the scopes do not reach", narrowed, "GET", "/fhir/R4/Observation?subject:Patient.name=Smith", "", nil, false, "searches Patient"},
		{"a token narrows its role", narrowed, "GET", "/fhir/R4/Observation/1", "", nil, true, ""},
		{"the narrowed token reads nothing else", narrowed, "GET", "/fhir/R4/Patient/85", "", nil, false, "no scope grants r on Patient"},
		{"the narrowed token writes nothing", narrowed, "POST", "/fhir/R4/Observation", obs, nil, false, "no scope grants c"},
		{"a token never widens its role", widening, "DELETE", "/fhir/R4/Observation/o1", "", nil, false, "no scope grants d"},
		{"only non-resource scopes: nothing", noResource, "GET", "/fhir/R4/Patient/85", "", nil, false, "no resource scope"},
		{"a patient launch confines a physician", launched, "GET", "/fhir/R4/Observation", "", nil, true, ""},
		{"unknown role", janitor, "GET", "/fhir/R4/Patient/85", "", nil, false, "role janitor has no FHIR access"},
		{"no role", noRole, "GET", "/fhir/R4/Patient/85", "", nil, false, "no role"},
		{"$everything on a patient", physician, "GET", "/fhir/R4/Patient/85/$everything", "", nil, true, ""},
		{"$everything for the patient", patient85, "GET", "/fhir/R4/Patient/85/$everything", "", nil, true, ""},
		{"$everything needs every type", narrowed, "GET", "/fhir/R4/Patient/85/$everything", "", nil, false, "every resource type"},
		{"$everything at the base", physician, "GET", "/fhir/R4/$everything", "", nil, false, "cannot be invoked at the base"},
		{"unknown operations", physician, "POST", "/fhir/R4/Patient/$match", `{}`, nil, false, "operation $match is not allowed"},
		{"not a FHIR interaction", physician, "GET", "/fhir/R4/patient", "", nil, false, "not a FHIR RESTful interaction"},
		{"history of every type", physician, "GET", "/fhir/R4/_history", "", nil, true, ""},
		{"history of a type the scopes do not reach", narrowed, "GET", "/fhir/R4/Patient/_history", "", nil, false, "no scope grants s on Patient"},
		{"instance history is a read", narrowed, "GET", "/fhir/R4/Observation/1/_history", "", nil, true, ""},
		{"POST _search is a search", narrowed, "POST", "/fhir/R4/Patient/_search", "", nil, false, "no scope grants s on Patient"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := g.do(tc.as, tc.method, tc.path, tc.body, tc.header...)
			r := recordOf(t, rec)
			if tc.allowed {
				if rec.Code == 401 || rec.Code == 403 {
					t.Fatalf("refused: %d %s", rec.Code, truncate(rec.Body.String()))
				}
				if p := rec.Header().Get("X-Test-Policy"); p == "none" || p == "" {
					t.Errorf("no policy on the context after authz: %q", p)
				}
				if !r.Decided || !r.Allowed {
					t.Errorf("record %+v", r)
				}
				return
			}
			mustStatus(t, rec, 403)
			code, diag := diagnostics(t, rec)
			if code != "forbidden" || !strings.Contains(diag, tc.reason) {
				t.Errorf("refusal %s %q, want it to mention %q", code, diag, tc.reason)
			}
			if rec.Header().Get("X-Test-Policy") != "" {
				t.Error("the request reached the next plugin")
			}
			if !r.Decided || r.Allowed || r.Reason != diag {
				t.Errorf("record %+v, want a refusal with reason %q", r, diag)
			}
		})
	}
	// The policy handed on carries the patient context and the narrowed
	// scopes.
	rec := g.do(launched, "GET", "/fhir/R4/Observation", nil)
	if p := rec.Header().Get("X-Test-Policy"); p != "patient=85;scopes=patient/*.rs;bg=" {
		t.Errorf("policy %q", p)
	}
	if r := recordOf(t, rec); r.Patient != "85" || r.Interaction != "search-type" || r.Type != "Observation" || r.BreakGlass != "" {
		t.Errorf("record %+v", r)
	}
	rec = g.do(narrowed, "GET", "/fhir/R4/Observation/1", nil)
	if p := rec.Header().Get("X-Test-Policy"); p != "patient=;scopes=user/Observation.rs;bg=" {
		t.Errorf("narrowed policy %q", p)
	}
}

func TestPublicAndAnonymous(t *testing.T) {
	g := newGateway(t, embeddedYAML)
	for _, p := range []string{"/fhir/R4/metadata", "/fhir/R4/.well-known/smart-configuration"} {
		rec := g.do(nobody, "GET", p, nil)
		mustStatus(t, rec, 200)
		if rec.Header().Get("X-Test-Policy") != "none" {
			t.Errorf("%s: a public document got a policy: %s", p, rec.Header().Get("X-Test-Policy"))
		}
		if r := recordOf(t, rec); !r.Allowed || r.Interaction != "capabilities" {
			t.Errorf("%s: record %+v", p, r)
		}
	}
	rec := g.do(nobody, "GET", "/fhir/R4/Patient/85", nil)
	mustStatus(t, rec, 401)
	if code, _ := diagnostics(t, rec); code != "login" || rec.Header().Get("WWW-Authenticate") == "" {
		t.Errorf("401: %s %v", code, rec.Header())
	}
	if r := recordOf(t, rec); r.Allowed || !r.Decided || r.Interaction != "read" {
		t.Errorf("record %+v", r)
	}
	// A CORS preflight carries no credentials and reads nothing.
	rec = g.do(nobody, "OPTIONS", "/fhir/R4/Patient", nil, "Origin", "https://app.example", "Access-Control-Request-Method", "GET")
	if rec.Code == 401 || rec.Code == 403 {
		t.Errorf("preflight: %d", rec.Code)
	}
	// A plain OPTIONS is not a FHIR interaction: refused.
	mustStatus(t, g.do(physician, "OPTIONS", "/fhir/R4/Patient", nil), 403)
}

// TestPolicyCache: an identity's policy is built once and reused; the
// cache stays within its bound.
func TestPolicyCache(t *testing.T) {
	cfg := Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p := &Plugin{cfg: cfg}
	pc := newPolicyCache(4)
	builds := 0
	build := func(id *gateway.Identity) *identityPolicy { builds++; return p.buildPolicy(id) }
	a := &gateway.Identity{UserID: "a", Role: "patient", PatientID: "1"}
	first := pc.get(a, build)
	if again := pc.get(&gateway.Identity{UserID: "other user, same grant", Role: "patient", PatientID: "1"}, build); again != first || builds != 1 {
		t.Fatalf("not reused: %d builds", builds)
	}
	for i := range 20 {
		pc.get(&gateway.Identity{Role: "patient", PatientID: string(rune('a' + i))}, build)
		if n := pc.len(); n > 4 {
			t.Fatalf("%d policies kept, bound 4", n)
		}
	}
	// Scopes tell identities apart.
	x := pc.get(&gateway.Identity{Role: "physician", Scopes: []string{"user/Patient.r"}}, build)
	y := pc.get(&gateway.Identity{Role: "physician", Scopes: []string{"user/Patient.rs"}}, build)
	if x == y || x.pol.Decide(2, "Patient").Allowed != true {
		t.Errorf("scopes not part of the key")
	}
}

func TestSearchParamsOnPOST(t *testing.T) {
	g := newGateway(t, embeddedYAML)
	// The form body of POST _search is read like the query string.
	rec := g.do(patient85, "POST", "/fhir/R4/Observation/_search", "subject.name=Smith", "Content-Type", "application/x-www-form-urlencoded")
	mustStatus(t, rec, 403)
	rec = g.do(patient85, "POST", "/fhir/R4/Observation/_search", url.Values{"code": {"x"}}.Encode(), "Content-Type", "application/x-www-form-urlencoded")
	if rec.Code == 403 {
		t.Fatalf("plain POST _search refused: %s", rec.Body.String())
	}
}

// TestConcurrentIdentities: many identities at once, through the policy
// cache: each request is decided with its own identity's policy, never
// another's.
func TestConcurrentIdentities(t *testing.T) {
	g := newGateway(t, strings.Replace(embeddedYAML, "    type: authz\n", "    type: authz\n    policy_cache: 8\n", 1))
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				pid := strconv.Itoa((w*40 + i) % 23)
				as := who{user: "p" + pid, role: "patient", patient: pid}
				if i%3 == 0 {
					as = who{user: "app" + pid, role: "physician", scopes: "user/Observation.rs patient/Patient.r", patient: pid}
				}
				rec := g.do(as, "GET", "/fhir/R4/Observation?code=x", nil)
				want := "patient=" + pid + ";scopes=patient/*.rs;bg="
				if as.role == "physician" {
					want = "patient=" + pid + ";scopes=user/Observation.rs patient/Patient.r;bg="
				}
				if got := rec.Header().Get("X-Test-Policy"); got != want {
					select {
					case errs <- fmt.Sprintf("%+v got policy %q, want %q", as, got, want):
					default:
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestReload: a reload builds the plugin again with the new roles; the
// admin endpoint and /ping follow.
func TestReload(t *testing.T) {
	g := newGateway(t, embeddedYAML)
	mustStatus(t, g.do(nurse, "DELETE", "/fhir/R4/Observation/x", nil), 403)
	cfg, err := gateway.Parse("t.yaml", []byte(strings.Replace(embeddedYAML, "break_glass: {roles: [physician]}", "roles: {nurse: {scopes: [user/*.cruds]}}", 1)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Reload(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if rec := g.do(nurse, "DELETE", "/fhir/R4/Observation/x", nil); rec.Code == 403 {
		t.Errorf("the new roles do not apply: %s", rec.Body.String())
	}
	mustStatus(t, g.do(physician, "GET", "/fhir/R4/Patient/85", nil), 403) // no longer a role
	breakGlassList(t, g)
	rec := httptest.NewRecorder()
	g.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/ping", nil))
	var ping gateway.PingResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &ping); err != nil {
		t.Fatal(err)
	}
	if p := ping.Plugins["authz"]; p.Type != "authz" || !strings.Contains(p.Detail, "1 role,") {
		t.Errorf("/ping: %+v", p)
	}
}
