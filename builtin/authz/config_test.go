package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	_ "github.com/omnigate/omnigate/builtin/session"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/redistest"
)

func TestConfigDefaults(t *testing.T) {
	c := Defaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.Roles) != 4 || !c.Roles["patient"].PatientContext || c.Roles["physician"].Scopes[0] != "user/*.cruds" {
		t.Errorf("roles %+v", c.Roles)
	}
	if !slices.Equal(c.ReadableTypes, []string{"Practitioner", "PractitionerRole", "Organization", "Location", "Medication"}) {
		t.Errorf("readable %v", c.ReadableTypes)
	}
	bg := c.BreakGlass
	if len(bg.Roles) != 0 || bg.Header != "X-Break-Glass-Reason" || !slices.Equal(bg.Scopes, []string{"user/*.rs"}) || bg.MaxReason != 200 || bg.Recent != 100 {
		t.Errorf("break_glass %+v", bg)
	}
	if op := c.Operations["everything"]; op.Permission != "rs" || !op.AllTypes || len(c.Operations) != 4 ||
		!c.Operations["export"].System || !c.Operations["export-poll-status"].System || !c.Operations["export-file"].System {
		t.Errorf("operations %+v", c.Operations)
	}
	e := c.Enforcement
	if e.Embedded != "server" || e.Narrowing != "compartment" || e.MaxResponse != 16<<20 || e.OnViolation != "filter" || c.PolicyCache != 10000 || c.BasePath != "" {
		t.Errorf("%+v", c)
	}
}

// Every bad key is reported with its name and line.
func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"roles: {nurse: {scopes: [user/*.rs, user/Nope.rs]}}", "plugins.authz.roles.nurse.scopes[1]"},
		{"roles: {x: {scopes: [\"patient/Observation.rs?nope=1\"]}}", "roles.x.scopes[0]: nope is not a search parameter of Observation"},
		{"roles: {nurse: {scope: [user/*.rs]}}", "unknown key \"scope\""},
		{"readable_types: [Observation]", "readable_types[0]: Observation is in the Patient compartment"},
		{"readable_types: [Nope]", "readable_types[0]"},
		{"break_glass: {roles: [janitor]}", "break_glass.roles[0]: role \"janitor\" is not listed"},
		{"break_glass: {roles: [patient]}", "break_glass.roles[0]: role \"patient\" has patient_context"},
		{"break_glass: {scopes: [patient/*.rs]}", "break_glass.scopes[0]"},
		{"break_glass: {scopes: [nonsense]}", "break_glass.scopes[0]"},
		{"break_glass: {roles: [physician], scopes: []}", "break_glass.scopes"},
		{"break_glass: {header: \"bad header\"}", "break_glass.header"},
		{"break_glass: {max_reason: 0}", "break_glass.max_reason"},
		{"break_glass: {recent: 0}", "break_glass.recent"},
		{"operations: {$everything: {permission: rs, types: [Patient]}}", "without its $"},
		{"operations: {everything: {permission: sr, types: [Patient]}}", "operations.everything.permission"},
		{"operations: {meta: {permission: r}}", "operations.meta: allows no invocation"},
		{"operations: {meta: {permission: r, types: [Nope]}}", "operations.meta.types[0]"},
		{"base_path: fhir", "base_path: must begin with '/'"},
		{"route_base_paths: {legacy: /legacy/}", "route_base_paths.legacy"},
		{"enforcement: {embedded: maybe}", "enforcement.embedded"},
		{"enforcement: {narrowing: guess}", "enforcement.narrowing"},
		{"enforcement: {on_violation: ignore}", "enforcement.on_violation"},
		{"enforcement: {max_response: 0}", "enforcement.max_response"},
		{"policy_cache: 0", "policy_cache"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			y := "plugins:\n  authz:\n    type: authz\n    " + tc.yaml + "\nroutes:\n  - name: fhir\n    fhir: true\n    plugins: [authz]\n"
			_, err := gateway.Parse("t.yaml", []byte(y), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "t.yaml:") {
				t.Errorf("error %v, want it to name %q with its line", err, tc.want)
			}
		})
	}
}

// Errors only the constructor can see: routes and their bases.
func TestConfigRoutes(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{`
plugins:
  authz: {type: authz, route_base_paths: {nope: /x}}
routes:
  - {name: fhir, fhir: true, plugins: [authz]}
`, "route_base_paths.nope: no route named nope"},
		{`
plugins:
  authz: {type: authz}
routes:
  - {name: legacy, path: /legacy/*rest, upstream: "http://127.0.0.1:1", plugins: [authz]}
`, "set route_base_paths.legacy"},
	} {
		cfg, err := gateway.Parse("t.yaml", []byte("admin: \"off\"\nlisten: \"127.0.0.1:0\"\n"+tc.yaml), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "plugins.authz") {
			t.Errorf("error %v, want %q", err, tc.want)
		}
	}
}

// An upstream route mounted elsewhere reads paths under its own base.
func TestRouteBasePath(t *testing.T) {
	b := newB(t, false)
	a := newGateway(t, fmt.Sprintf(`
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
plugins:
  as: {type: as}
  record: {type: record}
  authz: {type: authz, route_base_paths: {legacy: /legacy}}
routes:
  - name: legacy
    path: /legacy/*rest
    upstream: {url: "http://%s/fhir/R4", strip_prefix: /legacy}
    fhir_errors: true
    plugins: [as, record, authz]
`, b.addr))
	mustStatus(t, a.do(patient85, "GET", "/legacy/Patient/85", nil), 200)
	mustStatus(t, a.do(patient85, "GET", "/legacy/Patient/355", nil), 404)
	mustStatus(t, a.do(patient85, "GET", "/legacy/metadata", nil), 200)
	rec := a.do(patient85, "GET", "/legacy/Encounter?_count=500", nil)
	mustStatus(t, rec, 200)
	noOtherPatient(t, "encounters", rec)
	if rs, _ := resources(t, rec); len(rs) != b.count(t, "/fhir/R4/Patient/85/Encounter") {
		t.Errorf("%d encounters", len(rs))
	}
	mustStatus(t, a.do(patient85, "GET", "/fhir/R4/Patient/85", nil), 404) // no route
}

// TestServerBundles: on an embedded route the plugin decides every entry
// of a batch or transaction at type level; refused entries never reach the
// server.
func TestServerBundles(t *testing.T) {
	g := newGateway(t, embeddedYAML)
	obs := func(text string) json.RawMessage {
		return json.RawMessage(`{"resourceType":"Observation","status":"final","code":{"text":"` + text + `"},"subject":{"reference":"Patient/85"}}`)
	}
	entry := func(method, u string, res json.RawMessage) map[string]any {
		e := map[string]any{"request": map[string]any{"method": method, "url": u}}
		if res != nil {
			e["resource"] = res
		}
		return e
	}
	count := func(text string) int {
		rec := g.do(physician, "GET", "/fhir/R4/Observation?code:text="+text+"&_summary=count", nil)
		mustStatus(t, rec, 200)
		return total(t, rec)
	}
	// A transaction smuggling a prescription past a nurse.
	rec := g.do(nurse, "POST", "/fhir/R4", map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": []any{
		entry("POST", "Observation", obs("tx")),
		entry("POST", "MedicationRequest", json.RawMessage(`{"resourceType":"MedicationRequest","status":"active","intent":"order","medicationCodeableConcept":{"text":"x"},"subject":{"reference":"Patient/85"}}`)),
	}})
	mustStatus(t, rec, 403)
	if _, d := diagnostics(t, rec); !strings.Contains(d, "transaction entry 1 (POST MedicationRequest): no scope grants c on MedicationRequest") {
		t.Errorf("diagnostics %q", d)
	}
	if count("tx") != 0 {
		t.Error("part of a refused transaction was written")
	}
	// A batch: refused entries answered in place, the rest run.
	rec = g.do(nurse, "POST", "/fhir/R4", map[string]any{"resourceType": "Bundle", "type": "batch", "entry": []any{
		entry("POST", "Observation", obs("b1")),
		entry("POST", "MedicationRequest", json.RawMessage(`{"resourceType":"MedicationRequest","status":"active","intent":"order","medicationCodeableConcept":{"text":"x"},"subject":{"reference":"Patient/85"}}`)),
		entry("GET", "Observation?code:text=b1", nil),
		entry("DELETE", "Observation?code:text=b1", nil),
		entry("GET", "AuditEvent", nil),
		entry("POST", "Observation", obs("b2")),
	}})
	mustStatus(t, rec, 200)
	var got []string
	for _, e := range jsonOf(t, rec)["entry"].([]any) {
		st := e.(map[string]any)["response"].(map[string]any)["status"].(string)
		got = append(got, st[:3])
	}
	if want := []string{"201", "403", "200", "403", "403", "201"}; !slices.Equal(got, want) {
		t.Errorf("statuses %v, want %v", got, want)
	}
	if rec.Header().Get("X-Test-Policy") == "none" {
		t.Error("the spliced batch reached the server without the policy")
	}
	if count("b1") != 1 || count("b2") != 1 {
		t.Error("allowed entries did not run, or the refused delete did")
	}
	r := recordOf(t, rec)
	if len(r.Entries) != 6 || r.Entries[1].Allowed || r.Entries[1].Reason == "" || !r.Entries[0].Allowed || r.Interaction != "batch" {
		t.Errorf("record %+v", r)
	}
	// A batch with nothing refused goes on as sent.
	rec = g.do(nurse, "POST", "/fhir/R4", map[string]any{"resourceType": "Bundle", "type": "batch", "entry": []any{
		entry("GET", "Patient/85", nil),
	}})
	mustStatus(t, rec, 200)
	if rec.Header().Get("X-Test-Policy") == "none" {
		t.Error("no policy on the batch")
	}
	// Entries that are not interactions, and nested Bundles.
	rec = g.do(physician, "POST", "/fhir/R4", map[string]any{"resourceType": "Bundle", "type": "batch", "entry": []any{
		entry("GET", "not a url at all", nil),
		entry("POST", "", json.RawMessage(`{"resourceType":"Bundle","type":"transaction"}`)),
		map[string]any{"resource": obs("no request")},
		entry("GET", "metadata", nil),
	}})
	mustStatus(t, rec, 200)
	got = nil
	for _, e := range jsonOf(t, rec)["entry"].([]any) {
		got = append(got, e.(map[string]any)["response"].(map[string]any)["status"].(string)[:3])
	}
	if want := []string{"403", "403", "403", "200"}; !slices.Equal(got, want) {
		t.Errorf("statuses %v, want %v", got, want)
	}
}

// TestWithSessions: the real session plugin (users file, Redis) in front of
// authz.
func TestWithSessions(t *testing.T) {
	redis := redistest.Start(t)
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := fmt.Sprintf(`users:
  - {username: pat, password_hash: %q, role: patient, patient: "85"}
  - {username: doc, password_hash: %q, role: physician, scopes: [openid, user/Patient.rs]}
  - {username: temp, password_hash: %q, role: contractor}
`, hash, hash, hash)
	if err := os.WriteFile(filepath.Join(dir, "users.yaml"), []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, fmt.Sprintf(`
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
redis: {url: %q}
fhir:
  store: {path: ":memory:"}
plugins:
  session: {type: session, users: {file: %q, create: false}}
  authz: {type: authz}
routes:
  - name: fhir
    fhir: true
    plugins: [session, authz]
`, redis.URL(), filepath.Join(dir, "users.yaml")))
	login := func(user string) string {
		r := httptest.NewRequest("POST", "http://omnigate.test/auth/login", strings.NewReader(`{"username":"`+user+`","password":"pw"}`))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		g.ServeHTTP(w, r)
		mustStatus(t, w, 200)
		return jsonOf(t, w)["token"].(string)
	}
	get := func(token, method, path string) int {
		r := httptest.NewRequest(method, "http://omnigate.test"+path, nil)
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		g.ServeHTTP(w, r)
		return w.Code
	}
	pat, doc, temp := login("pat"), login("doc"), login("temp")
	for _, tc := range []struct {
		token, method, path string
		want                int
	}{
		{pat, "GET", "/fhir/R4/Observation", 200},
		{pat, "DELETE", "/fhir/R4/Observation/1", 403},
		{pat, "GET", "/fhir/R4/Patient/355/Observation", 403},
		{doc, "GET", "/fhir/R4/Patient/85", 404}, // allowed; nothing stored
		{doc, "GET", "/fhir/R4/Observation", 403},
		{temp, "GET", "/fhir/R4/Patient/85", 403},
		{"", "GET", "/fhir/R4/Patient/85", 401},
		{"", "GET", "/fhir/R4/metadata", 401}, // the session plugin guards this route
	} {
		if got := get(tc.token, tc.method, tc.path); got != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, got, tc.want)
		}
	}
}
