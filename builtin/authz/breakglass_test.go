package authz

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const breakGlassYAML = `
listen: "127.0.0.1:0"
admin: "off"
log: {access_log: false}
fhir:
  store: {path: ":memory:"}
plugins:
  as: {type: as}
  record: {type: record}
  authz:
    type: authz-test
    break_glass: {roles: [physician], max_reason: 40, recent: 3}
  probe: {type: probe}
routes:
  - name: fhir
    fhir: true
    plugins: [as, record, authz, probe]
`

func TestBreakGlass(t *testing.T) {
	g := newGateway(t, breakGlassYAML)
	const header = DefaultBreakGlassHeader
	// A physician whose token only reads Patients, and a nurse.
	dr := who{user: "dr-er", role: "physician", scopes: "user/Patient.rs"}
	const cond = `{"resourceType":"MedicationRequest","status":"active","intent":"order","medicationCodeableConcept":{"text":"x"},"subject":{"reference":"Patient/85"}}`
	for _, tc := range []struct {
		name         string
		as           who
		method, path string
		body         string
		reason       []string // header values; nil for none
		status       int      // 0: allowed (not 400, 401, 403)
		listed       bool     // a break-glass access is listed
	}{
		{"no header: the token's scopes", dr, "GET", "/fhir/R4/Observation", "", nil, 403, false},
		{"with a reason: read beyond the scopes", dr, "GET", "/fhir/R4/Observation", "", []string{"unconscious patient in ER"}, 0, true},
		{"break-glass widens reads, not writes", dr, "POST", "/fhir/R4/MedicationRequest", cond, []string{"unconscious patient in ER"}, 403, true},
		{"not the audit trail either", dr, "GET", "/fhir/R4/AuditEvent", "", []string{"curious"}, 403, true},
		{"an empty reason", dr, "GET", "/fhir/R4/Observation", "", []string{""}, 400, false},
		{"a blank reason", dr, "GET", "/fhir/R4/Observation", "", []string{"   "}, 400, false},
		{"a reason too long", dr, "GET", "/fhir/R4/Observation", "", []string{strings.Repeat("x", 41)}, 400, false},
		{"a control character", dr, "GET", "/fhir/R4/Observation", "", []string{"code\x01blue"}, 400, false},
		{"a bidi override", dr, "GET", "/fhir/R4/Observation", "", []string{"code \u202eeulb"}, 400, false},
		{"not UTF-8", dr, "GET", "/fhir/R4/Observation", "", []string{"code \xff"}, 400, false},
		{"two reasons", dr, "GET", "/fhir/R4/Observation", "", []string{"a", "b"}, 400, false},
		{"a token without resource scopes, with a reason", who{user: "dr-er", role: "physician", scopes: "openid"}, "GET", "/fhir/R4/Observation", "", []string{"code blue"}, 0, true},
		{"a token without resource scopes, without a reason", who{user: "dr-er", role: "physician", scopes: "openid"}, "GET", "/fhir/R4/Observation", "", nil, 403, false},
		{"another role: nothing changes", nurse, "POST", "/fhir/R4/MedicationRequest", cond, []string{"unconscious patient in ER"}, 403, false},
		{"another role reads as ever", nurse, "GET", "/fhir/R4/Observation", "", []string{"unconscious patient in ER"}, 0, false},
		{"another role with a bad reason: nothing changes", nurse, "GET", "/fhir/R4/Observation", "", []string{"\x01"}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := breakGlassList(t, g).Total
			r := httptest.NewRequest(tc.method, "http://omnigate.test"+tc.path, strings.NewReader(tc.body))
			r.Header.Set("Content-Type", "application/fhir+json")
			r.Header.Set("X-Test-User", tc.as.user)
			r.Header.Set("X-Test-Role", tc.as.role)
			r.Header.Set("X-Test-Scopes", tc.as.scopes)
			for _, v := range tc.reason {
				r.Header.Add(header, v)
			}
			rec := httptest.NewRecorder()
			g.ServeHTTP(rec, r)
			switch {
			case tc.status == 0 && (rec.Code == 400 || rec.Code == 401 || rec.Code == 403):
				t.Fatalf("refused: %d %s", rec.Code, rec.Body.String())
			case tc.status != 0:
				mustStatus(t, rec, tc.status)
			}
			if rec.Header().Get("X-Test-Break-Glass") != "" {
				t.Error("the break-glass header reached the next plugin")
			}
			listed := breakGlassList(t, g).Total - before
			if tc.listed != (listed == 1) || listed > 1 {
				t.Errorf("%d break-glass accesses listed", listed)
			}
			rd := recordOf(t, rec)
			if tc.listed && rd.BreakGlass != strings.TrimSpace(tc.reason[0]) || !tc.listed && rd.BreakGlass != "" {
				t.Errorf("record %+v", rd)
			}
			if tc.status == 0 {
				p := rec.Header().Get("X-Test-Policy")
				if tc.listed != strings.Contains(p, "bg="+tc.reason[0]) || tc.listed && !strings.Contains(p, "user/*.rs") {
					t.Errorf("policy %q", p)
				}
				if tc.listed && (rd.Reason != "break-glass access" || !rd.Allowed) {
					t.Errorf("record %+v", rd)
				}
			}
		})
	}
	list := breakGlassList(t, g)
	if list.Total != 4 || len(list.Recent) != 3 {
		t.Fatalf("list %+v", list)
	}
	// Newest first, on the plugin's clock.
	for i, a := range list.Recent {
		if i > 0 && !a.Time.Before(list.Recent[i-1].Time) {
			t.Errorf("not newest first: %v", list.Recent)
		}
		if a.User != "dr-er" || a.Role != "physician" || a.Reason == "" || a.RequestID == "" || a.Route != "fhir" || a.Plugin != "authz" {
			t.Errorf("access %+v", a)
		}
	}
	if a := list.Recent[0]; a.Interaction != "search-type" || a.Type != "Observation" || !a.Allowed || a.Time.Year() != 2026 || a.Reason != "code blue" {
		t.Errorf("last access %+v", a)
	}
	if a := list.Recent[2]; a.Interaction != "create" || a.Allowed {
		t.Errorf("refused access %+v", a)
	}
	// Logged with who and why, never a resource or a credential.
	logs := g.logs.String()
	if n := strings.Count(logs, `"msg":"break-glass access"`); n != 4 {
		t.Errorf("%d break-glass log lines", n)
	}
	if !strings.Contains(logs, `"reason":"unconscious patient in ER"`) || strings.Contains(logs, "Patient/85") {
		t.Errorf("log: %s", logs)
	}
	metrics := scrape(t, g)
	for _, want := range []string{
		`omnigate_authz_break_glass_total{role="physician"} 4`,
		`omnigate_authz_decisions_total{interaction="search-type",result="break_glass",role="physician"} 2`,
		`omnigate_authz_decisions_total{interaction="create",result="deny",role="physician"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func breakGlassList(t testing.TB, g *gw) BreakGlassList {
	t.Helper()
	rec := httptest.NewRecorder()
	g.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/admin/authz/break-glass", nil))
	mustStatus(t, rec, 200)
	var l BreakGlassList
	if err := json.Unmarshal(rec.Body.Bytes(), &l); err != nil {
		t.Fatal(err)
	}
	return l
}

func scrape(t testing.TB, g *gw) string {
	t.Helper()
	rec := httptest.NewRecorder()
	g.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	mustStatus(t, rec, 200)
	return rec.Body.String()
}

// Break-glass on an upstream route reaches any patient's data, and is
// listed.
func TestBreakGlassUpstream(t *testing.T) {
	b := newB(t, false)
	a := newGateway(t, aYAML(b, "break_glass: {roles: [physician]}"))
	dr := who{user: "dr-er", role: "physician", scopes: "patient/*.rs", patient: "85"}
	path := "/fhir/R4/Observation/" + b.first(t, "355", "Observation")
	mustStatus(t, a.do(dr, "GET", path, nil), 404)
	mustStatus(t, a.do(dr, "GET", path, nil, DefaultBreakGlassHeader, "transferred patient, records needed"), 200)
	if l := breakGlassList(t, a); l.Total != 1 || !l.Recent[0].Allowed {
		t.Errorf("list %+v", l)
	}
}
