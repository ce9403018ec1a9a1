package authz

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/omnigate/omnigate/internal/redistest"
)

// The access matrix: every identity × interaction × target × wrapping
// (plain, batch entry, transaction entry) × enforcement (the embedded
// server, an upstream FHIR server), through the real session plugin on a
// real redis-server and the real embedded store holding Synthea patients
// 85 and 355. Each expectation comes from want, which is written from the
// SMART App Launch 2.0 scope rules and the FHIR R4 Patient compartment,
// not from what the code answers:
//
//   - c, r, u, d, s: create; read, vread, instance history; update, patch;
//     delete; search, type history. Conditional forms need s as well.
//   - user/ scopes reach every resource of the type; patient/ scopes (and
//     a role with patient_context) only the compartment of the patient in
//     context, plus reads of the readable types (Practitioner, …).
//   - No scope: 403. A resource outside the compartment is read as if it
//     did not exist (404) and cannot be written; a search finds none of
//     it.
//   - A transaction with a refused entry is refused whole; a batch answers
//     each entry as the plain request would be answered.
func TestAccessMatrix(t *testing.T) {
	redis := redistest.Start(t)
	users := matrixUsers(t)
	for _, mode := range []string{"embedded", "upstream"} {
		t.Run(mode, func(t *testing.T) {
			m := newMatrix(t, mode, redis.URL(), users)
			cases := matrixCases()
			if len(cases) < 300 {
				t.Fatalf("only %d cases", len(cases))
			}
			for _, c := range cases {
				t.Run(c.name(), func(t *testing.T) { m.run(t, c) })
			}
		})
	}
}

// identities of the matrix: username, role, patient, own scopes.
var matrixIdentities = []struct {
	user, role, patient string
	scopes              []string
}{
	{"doc", "physician", "", nil},
	{"nina", "nurse", "", nil},
	{"pat", "patient", "85", nil},
	{"patobs", "patient", "85", []string{"openid", "patient/Observation.rs"}}, // narrows the role
	{"pw", "writer", "85", nil},
	{"adm", "admin", "", nil},
	{"jan", "janitor", "", nil}, // a role authz does not know
}

// roleScopes are the scopes of the roles in the matrix config.
var roleScopes = map[string][]string{
	"physician": {"user/*.cruds"},
	"nurse":     {"user/*.rs", "user/Observation.cu"},
	"patient":   {"patient/*.rs"},
	"writer":    {"patient/*.cruds"},
	"admin":     {"user/AuditEvent.rs"},
}

const matrixRoles = `
    roles:
      physician: {scopes: [user/*.cruds]}
      nurse: {scopes: [user/*.rs, user/Observation.cu]}
      patient: {scopes: [patient/*.rs], patient_context: true}
      writer: {scopes: [patient/*.cruds], patient_context: true}
      admin: {scopes: [user/AuditEvent.rs]}
`

func matrixUsers(t *testing.T) string {
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("users:\n")
	for _, id := range matrixIdentities {
		fmt.Fprintf(&b, "  - {username: %s, password_hash: %q, role: %s, patient: %q", id.user, hash, id.role, id.patient)
		if id.scopes != nil {
			fmt.Fprintf(&b, ", scopes: [%s]", strings.Join(id.scopes, ", "))
		}
		b.WriteString("}\n")
	}
	path := filepath.Join(t.TempDir(), "users.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A target is what an interaction is about.
type target struct {
	name string
	typ  string
	// owner is the patient whose compartment holds it, "" for none.
	owner string
}

var matrixTargets = []target{
	{"own Observation", "Observation", "85"},
	{"another's Observation", "Observation", "355"},
	{"own Patient", "Patient", "85"},
	{"another Patient", "Patient", "355"},
	{"a Practitioner", "Practitioner", ""},
}

// interactions: the permission each needs, and whether it writes.
type interaction struct {
	name   string
	perm   string // letters a scope must grant
	write  bool
	bundle bool // may be a Bundle entry (PATCH entries need a Binary)
}

var matrixInteractions = []interaction{
	{"read", "r", false, true},
	{"vread", "r", false, true},
	{"history", "r", false, true},
	{"search", "s", false, true},
	{"type history", "s", false, true},
	{"create", "c", true, true},
	{"update", "u", true, true},
	{"patch", "u", true, false},
	{"delete", "d", true, true},
	{"conditional delete", "ds", true, true},
}

type matrixCase struct {
	who  int
	ia   interaction
	tgt  target
	wrap string // plain, batch, transaction
}

func (c matrixCase) name() string {
	return fmt.Sprintf("%s/%s/%s/%s", matrixIdentities[c.who].user, c.ia.name, c.tgt.name, c.wrap)
}

func matrixCases() []matrixCase {
	var out []matrixCase
	for who := range matrixIdentities {
		for _, ia := range matrixInteractions {
			for _, tgt := range matrixTargets {
				if ia.perm[0] == 'd' && tgt.typ == "Patient" {
					continue // the patients stay: deletes target fresh resources
				}
				out = append(out, matrixCase{who, ia, tgt, "plain"})
				if ia.bundle {
					out = append(out, matrixCase{who, ia, tgt, "batch"})
				}
				if ia.bundle && ia.write {
					out = append(out, matrixCase{who, ia, tgt, "transaction"})
				}
			}
		}
	}
	return out
}

// Expected outcomes.
const (
	allowed   = "allowed"   // 2xx, and the write happened
	forbidden = "forbidden" // 403, nothing written
	hidden    = "hidden"    // 404, as for a resource that does not exist
	refused   = "refused"   // 403 or 404, nothing written
	none      = "none"      // a search or conditional write that finds nothing
)

// want is the expected outcome of c, from the scope rules alone.
func want(c matrixCase, upstream bool) string {
	id := matrixIdentities[c.who]
	scopes := roleScopes[id.role]
	if id.scopes != nil {
		scopes = narrowed(id.scopes, scopes)
	}
	confined := id.patient != "" && (id.role == "patient" || id.role == "writer")
	// Which scopes cover the type, and with which permissions.
	var perms string
	for _, s := range scopes {
		ctx, rest, _ := strings.Cut(s, "/")
		typ, p, _ := strings.Cut(rest, ".")
		if typ == c.tgt.typ || typ == "*" {
			perms += p
			if ctx == "patient" {
				confined = true
			}
		}
	}
	for _, l := range c.ia.perm {
		if !strings.ContainsRune(perms, l) {
			return forbidden
		}
	}
	if !confined {
		return allowed
	}
	// Confined to patient 85's compartment.
	readable := c.tgt.typ == "Practitioner" // a readable type outside the compartment
	switch {
	case readable && !c.ia.write:
		return allowed
	case readable:
		return forbidden // outside the compartment: patient scopes never write it
	}
	if c.ia.name == "type history" && upstream {
		return forbidden // an upstream's history cannot be confined
	}
	inside := c.tgt.owner == id.patient
	switch c.ia.name {
	case "type history":
		return allowed // confined to the compartment
	case "search", "conditional delete":
		if inside {
			return allowed
		}
		return none
	case "read", "vread", "history":
		if inside {
			return allowed
		}
		return hidden
	}
	if inside {
		return allowed
	}
	return refused
}

// narrowed is what a token's scopes keep of a role's (same context and
// type, or the role's wildcard; the common permissions).
func narrowed(own, role []string) []string {
	var out []string
	for _, o := range own {
		oc, orest, ok := strings.Cut(o, "/")
		if !ok {
			continue
		}
		ot, op, _ := strings.Cut(orest, ".")
		for _, r := range role {
			rc, rrest, _ := strings.Cut(r, "/")
			rt, rp, _ := strings.Cut(rrest, ".")
			if rt != ot && rt != "*" {
				continue
			}
			var p string
			for _, l := range op {
				if strings.ContainsRune(rp, l) {
					p += string(l)
				}
			}
			ctx := "user"
			if oc == "patient" || rc == "patient" {
				ctx = "patient"
			}
			if p != "" {
				out = append(out, ctx+"/"+ot+"."+p)
			}
		}
	}
	return out
}

// matrix is one enforcement mode's gateway, its data and its logins.
type matrix struct {
	mode   string
	g      *gw                   // the gateway under test
	data   func() *gw            // what sees the data unrestricted
	tokens map[string]string     // user -> token
	ids    map[string]string     // "Observation/85" -> an id in that patient's compartment
	asData func(r *http.Request) // makes a request unrestricted on data()
}

func newMatrix(t *testing.T, mode, redisURL, users string) *matrix {
	m := &matrix{mode: mode, tokens: map[string]string{}, ids: map[string]string{}}
	front := func(terminal string) string {
		return fmt.Sprintf(`
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
redis: {url: %q}
%s
plugins:
  session: {type: session, users: {file: %q, create: false}}
  authz:
    type: authz
%s
routes:
  - name: fhir
    path: /fhir/R4/*path
%s
    plugins: [session, authz]
`, redisURL, map[bool]string{true: "fhir:\n  store: {path: \":memory:\"}", false: ""}[terminal == "fhir"], users, matrixRoles,
			map[bool]string{true: "    fhir: true", false: "    fhir_errors: true\n    upstream: " + terminal}[terminal == "fhir"])
	}
	if mode == "embedded" {
		m.g = newGateway(t, front("fhir"))
		m.data = func() *gw { return m.g }
		m.login(t)
		doc := m.tokens["doc"]
		m.asData = func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+doc) }
		for _, f := range []string{"uscore_bundle_patient_85.json", "uscore_bundle_patient_355.json"} {
			rec := m.send(m.g, m.asData, "POST", "/fhir/R4", synthea(t, f))
			mustStatus(t, rec, 200)
		}
	} else {
		b := newGateway(t, bYAML)
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		loadSynthea(t, b, nobody)
		m.data = func() *gw { return b }
		m.asData = func(*http.Request) {}
		m.g = newGateway(t, front("http://"+b.Addr()))
		m.login(t)
	}
	// A resource of each patient's compartment, found unrestricted.
	for _, p := range []string{"85", "355"} {
		rec := m.send(m.data(), m.asData, "GET", "/fhir/R4/Observation?subject=Patient/"+p+"&_count=1", nil)
		mustStatus(t, rec, 200)
		rs, _ := resources(t, rec)
		if len(rs) != 1 {
			t.Fatalf("no Observation of patient %s", p)
		}
		m.ids["Observation/"+p] = rs[0]["id"].(string)
	}
	m.ids["Patient/85"], m.ids["Patient/355"] = "85", "355"
	rec := m.send(m.data(), m.asData, "GET", "/fhir/R4/Practitioner?_count=1", nil)
	rs, _ := resources(t, rec)
	if len(rs) != 1 {
		t.Fatal("no Practitioner in the test data")
	}
	m.ids["Practitioner/"] = rs[0]["id"].(string)
	return m
}

func (m *matrix) login(t *testing.T) {
	for _, id := range matrixIdentities {
		r := httptest.NewRequest("POST", "http://omnigate.test/auth/login", strings.NewReader(`{"username":"`+id.user+`","password":"pw"}`))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		m.g.ServeHTTP(w, r)
		mustStatus(t, w, 200)
		m.tokens[id.user] = jsonOf(t, w)["token"].(string)
	}
}

func (m *matrix) send(g *gw, auth func(*http.Request), method, path string, body any) *httptest.ResponseRecorder {
	var raw []byte
	switch b := body.(type) {
	case nil:
	case []byte:
		raw = b
	case string:
		raw = []byte(b)
	default:
		raw, _ = json.Marshal(b)
	}
	r := httptest.NewRequest(method, "http://omnigate.test"+path, strings.NewReader(string(raw)))
	if raw != nil {
		r.Header.Set("Content-Type", "application/fhir+json")
		if method == "PATCH" {
			r.Header.Set("Content-Type", "application/json-patch+json")
		}
	}
	auth(r)
	w := httptest.NewRecorder()
	g.ServeHTTP(w, r)
	return w
}

// subject is a new resource of the target's type, in its owner's
// compartment.
func subject(tgt target, marker string) map[string]any {
	switch tgt.typ {
	case "Observation":
		return map[string]any{"resourceType": "Observation", "status": "final", "code": map[string]any{"text": marker},
			"subject": map[string]any{"reference": "Patient/" + tgt.owner}}
	case "Patient":
		return map[string]any{"resourceType": "Patient", "id": tgt.owner, "name": []any{map[string]any{"family": marker}}}
	}
	return map[string]any{"resourceType": tgt.typ, "name": []any{map[string]any{"family": marker}}}
}

// fresh creates, unrestricted, a resource like the target for a write
// to act on, and returns its id (the target's own for Patients).
func (m *matrix) fresh(t *testing.T, tgt target, marker string) string {
	if tgt.typ == "Patient" {
		return tgt.owner
	}
	rec := m.send(m.data(), m.asData, "POST", "/fhir/R4/"+tgt.typ, subject(tgt, marker))
	mustStatus(t, rec, 201)
	return jsonOf(t, rec)["id"].(string)
}

// version reads a resource unrestricted: its versionId, "" when gone.
func (m *matrix) version(t *testing.T, typ, id string) string {
	rec := m.send(m.data(), m.asData, "GET", "/fhir/R4/"+typ+"/"+id, nil)
	if rec.Code != 200 {
		return ""
	}
	return jsonOf(t, rec)["meta"].(map[string]any)["versionId"].(string)
}

// count counts, unrestricted, the resources of a type with a marker.
func (m *matrix) count(t *testing.T, typ, marker string) int {
	param := "code:text"
	if typ != "Observation" {
		param = "name"
	}
	rec := m.send(m.data(), m.asData, "GET", "/fhir/R4/"+typ+"?"+param+"="+marker+"&_summary=count", nil)
	mustStatus(t, rec, 200)
	return total(t, rec)
}

func (m *matrix) run(t *testing.T, c matrixCase) {
	id := matrixIdentities[c.who]
	exp := want(c, m.mode == "upstream")
	marker := fmt.Sprintf("m%d%s", c.who, strings.NewReplacer(" ", "", "'", "", "/", "").Replace(c.ia.name+c.tgt.name+c.wrap))
	// The request, as method, url (relative to the base) and body.
	var method, url string
	var body any
	typ := c.tgt.typ
	rid := m.ids[typ+"/"+c.tgt.owner]
	var before string // the written resource's version before, for writes
	switch c.ia.name {
	case "read":
		method, url = "GET", typ+"/"+rid
	case "vread":
		method, url = "GET", typ+"/"+rid+"/_history/1"
	case "history":
		method, url = "GET", typ+"/"+rid+"/_history"
	case "search":
		method, url = "GET", typ+"?_id="+rid
	case "type history":
		method, url = "GET", typ+"/_history?_count=5"
	case "create":
		res := subject(c.tgt, marker)
		delete(res, "id")
		if typ == "Patient" {
			res["link"] = []any{map[string]any{"other": map[string]any{"reference": "Patient/" + c.tgt.owner}, "type": "seealso"}}
		}
		method, url, body = "POST", typ, res
	case "update":
		rid = m.fresh(t, c.tgt, marker+"0")
		res := subject(c.tgt, marker)
		res["id"] = rid
		method, url, body = "PUT", typ+"/"+rid, res
	case "patch":
		rid = m.fresh(t, c.tgt, marker+"0")
		method, url, body = "PATCH", typ+"/"+rid, `[{"op":"add","path":"/language","value":"en"}]`
	case "delete":
		rid = m.fresh(t, c.tgt, marker)
		method, url = "DELETE", typ+"/"+rid
	case "conditional delete":
		rid = m.fresh(t, c.tgt, marker)
		method, url = "DELETE", typ+"?_id="+rid
	}
	if c.ia.write && c.ia.name != "create" {
		before = m.version(t, typ, rid)
		if before == "" {
			t.Fatalf("setup: %s/%s not there", typ, rid)
		}
	}
	auth := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+m.tokens[id.user]) }

	// Send it, plain or as a Bundle entry; status is the plain status or
	// the entry's, bundleStatus the Bundle's own.
	var status, bundleStatus int
	var rec *httptest.ResponseRecorder
	if c.wrap == "plain" {
		rec = m.send(m.g, auth, method, "/fhir/R4/"+url, body)
		status = rec.Code
	} else {
		entry := map[string]any{"request": map[string]any{"method": method, "url": url}}
		if body != nil {
			entry["resource"] = body
		}
		rec = m.send(m.g, auth, "POST", "/fhir/R4", map[string]any{"resourceType": "Bundle", "type": c.wrap, "entry": []any{entry}})
		bundleStatus = rec.Code
		status = bundleStatus
		if bundleStatus == 200 {
			es, _ := jsonOf(t, rec)["entry"].([]any)
			if len(es) != 1 {
				t.Fatalf("%d entries in the answer: %s", len(es), truncate(rec.Body.String()))
			}
			st := es[0].(map[string]any)["response"].(map[string]any)["status"].(string)
			fmt.Sscanf(st, "%d", &status)
		}
	}
	body200 := rec.Body.String()

	// What the outcome must be.
	ok2xx := status >= 200 && status < 300
	switch exp {
	case allowed:
		if !ok2xx {
			t.Fatalf("want allowed, got %d (Bundle %d): %s", status, bundleStatus, truncate(body200))
		}
	case forbidden:
		if status != 403 {
			t.Fatalf("want 403, got %d (Bundle %d): %s", status, bundleStatus, truncate(body200))
		}
	case hidden:
		if status != 404 {
			t.Fatalf("want 404 (as if it did not exist), got %d (Bundle %d): %s", status, bundleStatus, truncate(body200))
		}
	case refused:
		if status != 403 && status != 404 {
			t.Fatalf("want 403 or 404, got %d (Bundle %d): %s", status, bundleStatus, truncate(body200))
		}
	case none:
		// Reads find nothing; conditional writes act on nothing.
		if status >= 500 || status == 401 {
			t.Fatalf("got %d (Bundle %d): %s", status, bundleStatus, truncate(body200))
		}
	}
	if c.ia.name == "search" && ok2xx && c.wrap == "plain" {
		n := total(t, rec)
		if want := map[bool]int{true: 1, false: 0}[exp == allowed]; n != want {
			t.Fatalf("search found %d, want %d", n, want)
		}
	}
	// Writes: done exactly when allowed.
	if !c.ia.write {
		return
	}
	wrote := false
	switch c.ia.name {
	case "create":
		wrote = m.count(t, typ, marker) > 0
	case "update", "patch":
		wrote = m.version(t, typ, rid) != before
	case "delete", "conditional delete":
		wrote = m.version(t, typ, rid) == ""
	}
	if wrote != (exp == allowed) {
		t.Fatalf("outcome %s, status %d, but the write happened: %v", exp, status, wrote)
	}
}
