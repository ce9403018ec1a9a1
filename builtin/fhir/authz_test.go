package fhir

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/access"
)

// The identities of the access tests.
var (
	// readable are the types outside the compartment a patient app shows.
	readable = []string{"Practitioner", "Organization", "Location", "Medication"}
	// patient85 is patient 85's app: patient/*.rs.
	patient85 = access.NewPolicy(access.ParseScopes([]string{"patient/*.rs"}), access.PolicyOptions{Patient: "85", Readable: readable})
	// nurse reads everything and writes Observations.
	nurse = access.NewPolicy(access.ParseScopes([]string{"user/*.rs", "user/Observation.cu"}), access.PolicyOptions{})
	// physician does everything but the audit trail.
	physician = access.NewPolicy(access.ParseScopes([]string{"user/*.cruds"}), access.PolicyOptions{})
	// lab85 sees patient 85's laboratory results only (a v2 constraint).
	lab85 = access.NewPolicy(access.ParseScopes([]string{"patient/Observation.rs?category=laboratory"}), access.PolicyOptions{Patient: "85"})
	// nobody has no scope.
	nobody = access.NewPolicy(nil, access.PolicyOptions{})
	// writer85 writes patient 85's record: patient/*.cruds.
	writer85 = access.NewPolicy(access.ParseScopes([]string{"patient/*.cruds"}), access.PolicyOptions{Patient: "85", Readable: readable})
)

// outsideCompartment are the types of the test data that the R4
// CompartmentDefinition for Patient does not list: no resource of theirs is
// in a patient's compartment. Every other resource of a patient's Bundle
// refers to the patient.
var outsideCompartment = map[string]bool{
	"Location": true, "Organization": true, "Practitioner": true, "PractitionerRole": true, "Endpoint": true, "Medication": true,
	"Device": true, // listed without a parameter: no Device is a member
}

// as is h behind a policy, as the authz plugin hands requests on.
func as(h http.Handler, p *access.Policy) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(access.WithPolicy(r.Context(), p)))
	})
}

// accessFixture is a server holding the Synthea Bundles of patients 85,
// 355 and 888, with what the files say about them.
type accessFixture struct {
	h *Handler
	// refs are the "Type/id" the server gave each entry of a patient's
	// Bundle, in entry order; res the entries' resources as in the file.
	refs map[string][]string
	res  map[string][]map[string]any
	// owner maps "Type/id" to the patient whose Bundle holds it.
	owner map[string]string
}

var syntheaFiles = map[string]string{
	"85": "uscore_bundle_patient_85.json", "355": "uscore_bundle_patient_355.json", "888": "carin_bundle_patient_888.json",
}

// newAccessFixture loads the Bundles, without schema validation (they are
// valid; access control does not depend on it, and it is slow under the
// race detector).
func newAccessFixture(t *testing.T, mod ...func(*Config)) *accessFixture {
	t.Helper()
	off := false
	h := newTestServer(t, append([]func(*Config){func(c *Config) { c.SchemaValidation = &off }}, mod...)...)
	return loadAccessFixture(t, h, "85", "355", "888")
}

// loadAccessFixture loads the Bundles of patients into h.
func loadAccessFixture(t testing.TB, h *Handler, patients ...string) *accessFixture {
	t.Helper()
	f := &accessFixture{
		h:     h,
		refs:  map[string][]string{},
		res:   map[string][]map[string]any{},
		owner: map[string]string{},
	}
	for _, patient := range patients {
		r := do(t, f.h, "POST", "/fhir/R4", sharedExample(t, syntheaFiles[patient]))
		mustStatus(t, r, 200)
		f.res[patient] = syntheaResources(t, syntheaFiles[patient])
		for i, rs := range responses(t, r.json(t)) {
			loc, _ := rs["location"].(string)
			parts := strings.Split(loc, "/")
			if len(parts) < 2 {
				t.Fatalf("%s entry %d: location %q", patient, i, loc)
			}
			ref := parts[0] + "/" + parts[1]
			if ref[:strings.IndexByte(ref, '/')] != f.res[patient][i]["resourceType"] {
				t.Fatalf("%s entry %d: %s for a %v", patient, i, ref, f.res[patient][i]["resourceType"])
			}
			f.refs[patient] = append(f.refs[patient], ref)
			f.owner[ref] = patient
		}
	}
	return f
}

// members returns the "Type/id" of patient's compartment members of typ
// ("" for every type), sorted.
func (f *accessFixture) members(patient, typ string) []string {
	var out []string
	for _, ref := range f.refs[patient] {
		t := ref[:strings.IndexByte(ref, '/')]
		if !outsideCompartment[t] && (typ == "" || t == typ) {
			out = append(out, ref)
		}
	}
	sort.Strings(out)
	return out
}

// all returns the "Type/id" of every loaded resource of typ, sorted.
func (f *accessFixture) all(typ string) []string {
	var out []string
	for _, refs := range f.refs {
		for _, ref := range refs {
			if strings.HasPrefix(ref, typ+"/") {
				out = append(out, ref)
			}
		}
	}
	sort.Strings(out)
	return out
}

// lab returns patient's Observations with a laboratory category, sorted.
func (f *accessFixture) lab(patient string) []string {
	var out []string
	for i, r := range f.res[patient] {
		if r["resourceType"] != "Observation" {
			continue
		}
		cats, _ := r["category"].([]any)
		for _, c := range cats {
			if hasCoding(c, "http://terminology.hl7.org/CodeSystem/observation-category", "laboratory") {
				out = append(out, f.refs[patient][i])
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// secrets are strings only patient 355's and 888's compartments hold:
// their ids, and references to those patients.
func (f *accessFixture) secrets() []string {
	out := []string{`"Patient/355"`, `"Patient/888"`}
	for _, p := range []string{"355", "888"} {
		for _, ref := range f.members(p, "") {
			if id := ref[strings.IndexByte(ref, '/')+1:]; id != p {
				out = append(out, id)
			}
		}
	}
	return out
}

// noLeak fails if body holds anything of patients 355 and 888 but what
// the request itself named (the id in "Observation/x is not known").
func (f *accessFixture) noLeak(t *testing.T, what string, body []byte, named ...string) {
	t.Helper()
	for _, s := range f.secrets() {
		if strings.Contains(string(body), s) && !slices.ContainsFunc(named, func(n string) bool { return strings.Contains(n, s) }) {
			t.Errorf("%s: the answer holds %s of another patient", what, s)
			return
		}
	}
}

// searchset is what a search answered.
type searchset struct {
	total    int // -1 when absent
	matches  []string
	included []string
	next     string
}

func readSearchset(t *testing.T, r resp) searchset {
	t.Helper()
	b := r.json(t)
	s := searchset{total: -1}
	if n, ok := b["total"].(float64); ok {
		s.total = int(n)
	}
	es, _ := b["entry"].([]any)
	for _, e := range es {
		m := e.(map[string]any)
		res := m["resource"].(map[string]any)
		ref := res["resourceType"].(string) + "/" + res["id"].(string)
		if m["search"].(map[string]any)["mode"] == "include" {
			s.included = append(s.included, ref)
		} else {
			s.matches = append(s.matches, ref)
		}
	}
	links, _ := b["link"].([]any)
	for _, l := range links {
		if m := l.(map[string]any); m["relation"] == "next" {
			s.next = m["url"].(string)
		}
	}
	sort.Strings(s.matches)
	sort.Strings(s.included)
	return s
}

// linkPath strips the scheme and host of a link.
func linkPath(link string) string {
	u, err := url.Parse(link)
	if err != nil {
		panic(err)
	}
	return u.RequestURI()
}

// outcomeOf returns an OperationOutcome's first issue code and
// diagnostics.
func outcomeOf(t *testing.T, r resp) (code, diagnostics string) {
	t.Helper()
	b := r.json(t)
	if b["resourceType"] != "OperationOutcome" {
		t.Fatalf("status %d: not an OperationOutcome: %s", r.status, truncateBody(r.body))
	}
	is := b["issue"].([]any)[0].(map[string]any)
	d, _ := is["diagnostics"].(string)
	return is["code"].(string), d
}

// sameAsMissing checks that r, the answer for the existing resource ref,
// is the answer for a resource of its type that does not exist, but for
// the id: no existence leak.
func sameAsMissing(t *testing.T, h http.Handler, r resp, ref, suffix string) {
	t.Helper()
	typ, id, _ := strings.Cut(ref, "/")
	missing := do(t, h, "GET", "/fhir/R4/"+typ+"/no-such-id"+suffix, nil)
	if r.status != http.StatusNotFound || missing.status != http.StatusNotFound {
		t.Fatalf("%s%s: %d, a missing one %d", ref, suffix, r.status, missing.status)
	}
	got := strings.ReplaceAll(string(r.body), id, "ID")
	want := strings.ReplaceAll(string(missing.body), "no-such-id", "ID")
	if got != want {
		t.Errorf("%s%s answers\n%s\nwhere a missing one answers\n%s", ref, suffix, got, want)
	}
}

// TestAccessRead reads, vreads and reads the history of every loaded
// resource as patient 85, and samples of them as the other identities.
func TestAccessRead(t *testing.T) {
	f := newAccessFixture(t)
	laboratory := map[string]bool{}
	for _, ref := range f.lab("85") {
		laboratory[ref] = true
	}
	// want is the status of a read of ref by each identity.
	want := func(p *access.Policy, ref string) int {
		typ := ref[:strings.IndexByte(ref, '/')]
		owner := f.owner[ref]
		switch p {
		case patient85:
			switch {
			case slices.Contains(readable, typ):
				return 200
			case outsideCompartment[typ]:
				return 403 // PractitionerRole, Endpoint, Device: not granted
			case owner == "85":
				return 200
			}
			return 404
		case nurse, physician:
			return 200
		case lab85:
			switch {
			case typ != "Observation":
				return 403
			case laboratory[ref]:
				return 200
			}
			return 404
		}
		return 403
	}
	// Every resource as patient 85; one of each type of each Bundle as
	// the others.
	sample := map[string]bool{}
	for _, p := range []string{"85", "355", "888"} {
		for _, ref := range f.refs[p] {
			typ := ref[:strings.IndexByte(ref, '/')]
			if !sample[p+typ] {
				sample[p+typ] = true
				sample[ref] = true
			}
		}
	}
	for _, ref := range f.lab("85")[:1] {
		sample[ref] = true
	}
	for _, id := range []struct {
		name string
		p    *access.Policy
	}{{"patient85", patient85}, {"nurse", nurse}, {"physician", physician}, {"lab85", lab85}, {"nobody", nobody}} {
		t.Run(id.name, func(t *testing.T) {
			h := as(f.h, id.p)
			for _, patient := range []string{"85", "355", "888"} {
				for _, ref := range f.refs[patient] {
					if id.p != patient85 && !sample[ref] {
						continue
					}
					status := want(id.p, ref)
					for _, suffix := range []string{"", "/_history/1", "/_history"} {
						r := do(t, h, "GET", "/fhir/R4/"+ref+suffix, nil)
						st := status
						if suffix == "/_history" && id.p == lab85 {
							st = 403 // no history under a constrained scope
						}
						if r.status != st {
							t.Errorf("GET %s%s: %d, want %d\n%s", ref, suffix, r.status, st, truncateBody(r.body))
							continue
						}
						switch st {
						case 404:
							sameAsMissing(t, h, r, ref, suffix)
						case 403:
							if code, diag := outcomeOf(t, r); code != "forbidden" || diag == "" {
								t.Errorf("GET %s%s: 403 with %q %q", ref, suffix, code, diag)
							}
						}
						if id.p == patient85 || id.p == lab85 {
							f.noLeak(t, "GET "+ref+suffix, r.body, ref)
						}
					}
				}
			}
		})
	}
	t.Run("metadata and SMART configuration are public", func(t *testing.T) {
		mustStatus(t, do(t, as(f.h, nobody), "GET", "/fhir/R4/metadata", nil), 200)
		// Not configured here: 404, but to anyone, never 401.
		mustStatus(t, do(t, as(f.h, nobody), "GET", "/fhir/R4/.well-known/smart-configuration", nil), 404)
	})
}

// TestAccessSearch checks what searches find, count and page through
// under each identity, against what the data says.
func TestAccessSearch(t *testing.T) {
	f := newAccessFixture(t)
	p85 := as(f.h, patient85)
	types := map[string]bool{}
	for _, ref := range f.members("85", "") {
		types[ref[:strings.IndexByte(ref, '/')]] = true
	}
	t.Run("every type in patient 85's compartment", func(t *testing.T) {
		for typ := range types {
			want := f.members("85", typ)
			s := readSearchset(t, do(t, p85, "GET", "/fhir/R4/"+typ+"?_count=1000", nil))
			if !slices.Equal(s.matches, want) || s.total != len(want) {
				t.Errorf("%s: %d matches (total %d), the compartment holds %d", typ, len(s.matches), s.total, len(want))
			}
			c := readSearchset(t, do(t, p85, "GET", "/fhir/R4/"+typ+"?_summary=count", nil))
			if c.total != len(want) {
				t.Errorf("%s?_summary=count: %d, want %d", typ, c.total, len(want))
			}
		}
	})
	for _, tc := range []struct {
		name   string
		p      *access.Policy
		method string
		path   string
		body   string
		status int
		want   []string // matches, when the status is 200
	}{
		{"another patient's parameter finds nothing", patient85, "GET", "/fhir/R4/Observation?patient=355", "", 200, nil},
		{"another patient's reference finds nothing", patient85, "GET", "/fhir/R4/Encounter?subject=Patient/355&_total=accurate", "", 200, nil},
		{"Patient finds the patient", patient85, "GET", "/fhir/R4/Patient", "", 200, []string{"Patient/85"}},
		{"a readable type is searched whole", patient85, "GET", "/fhir/R4/Practitioner?_count=100", "", 200, f.all("Practitioner")},
		{"a type not granted", patient85, "GET", "/fhir/R4/PractitionerRole", "", 403, nil},
		{"the patient's compartment search", patient85, "GET", "/fhir/R4/Patient/85/Observation?_count=1000", "", 200, f.members("85", "Observation")},
		{"POST _search", patient85, "POST", "/fhir/R4/Observation/_search", "_count=1000", 200, f.members("85", "Observation")},
		{"POST _search for another patient", patient85, "POST", "/fhir/R4/Observation/_search", "patient=355", 200, nil},
		{"the nurse searches every patient", nurse, "GET", "/fhir/R4/Observation?_count=1000", "", 200, f.all("Observation")},
		{"the nurse's compartment search", nurse, "GET", "/fhir/R4/Patient/355/Observation?_count=1000", "", 200, f.members("355", "Observation")},
		{"laboratory results only", lab85, "GET", "/fhir/R4/Observation?_count=1000", "", 200, f.lab("85")},
		{"laboratory results only, POST _search", lab85, "POST", "/fhir/R4/Observation/_search", "_count=1000", 200, f.lab("85")},
		{"laboratory scope, another type", lab85, "GET", "/fhir/R4/Condition", "", 403, nil},
		{"no scope", nobody, "GET", "/fhir/R4/Observation", "", 403, nil},
		{"no scope, POST _search", nobody, "POST", "/fhir/R4/Observation/_search", "", 403, nil},
		{"system search, within the compartment", patient85, "GET", "/fhir/R4?_type=Observation&_count=1000", "", 200, f.members("85", "Observation")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body any
			var hdr []string
			if tc.body != "" || tc.method == "POST" {
				body, hdr = tc.body, []string{"Content-Type", "application/x-www-form-urlencoded"}
			}
			r := do(t, as(f.h, tc.p), tc.method, tc.path, body, hdr...)
			mustStatus(t, r, tc.status)
			if tc.status != 200 {
				return
			}
			s := readSearchset(t, r)
			if !slices.Equal(s.matches, tc.want) || s.total != len(tc.want) {
				t.Errorf("%d matches (total %d), want %d: %v", len(s.matches), s.total, len(tc.want), s.matches)
			}
			if tc.p == patient85 || tc.p == lab85 {
				f.noLeak(t, tc.path, r.body)
			}
		})
	}
	t.Run("another patient's compartment search answers as a read of that patient", func(t *testing.T) {
		r := do(t, p85, "GET", "/fhir/R4/Patient/355/Observation", nil)
		read := do(t, p85, "GET", "/fhir/R4/Patient/355", nil)
		if r.status != 404 || read.status != 404 || string(r.body) != string(read.body) {
			t.Errorf("compartment search %d %s; read %d %s", r.status, r.body, read.status, read.body)
		}
	})
	t.Run("pages and _total count the compartment", func(t *testing.T) {
		for _, c := range []struct {
			h    http.Handler
			want []string
		}{{p85, f.members("85", "Observation")}, {as(f.h, lab85), f.lab("85")}} {
			var got []string
			link, total := "/fhir/R4/Observation?_count=7&_total=accurate", -2
			for pages := 0; link != "" && pages < 100; pages++ {
				s := readSearchset(t, do(t, c.h, "GET", link, nil))
				if total != -2 && s.total != total {
					t.Errorf("total %d on one page, %d on another", total, s.total)
				}
				total = s.total
				got = append(got, s.matches...)
				link = s.next
				if link != "" {
					link = linkPath(link)
				}
			}
			sort.Strings(got)
			if !slices.Equal(got, c.want) || total != len(c.want) {
				t.Errorf("paged through %d (total %d), want %d", len(got), total, len(c.want))
			}
		}
	})
}

// TestAccessIncludes: what _include and _revinclude add passes the policy,
// and only it leads on to :iterate.
func TestAccessIncludes(t *testing.T) {
	f := newAccessFixture(t)
	// An Observation of patient 85 that lists one of patient 355's among
	// its members: a reference across compartments.
	other := f.members("355", "Observation")[0]
	put(t, f.h, "Observation", "cross", `"status":"final","code":{"text":"panel"},"subject":{"reference":"Patient/85"},"hasMember":[{"reference":"`+other+`"}]`)
	// Patient 85's Encounters that name a practitioner, from the file.
	fullURLs := map[string]string{}
	var b struct {
		Entry []struct {
			FullURL string `json:"fullUrl"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(sharedExample(t, syntheaFiles["85"]), &b); err != nil {
		t.Fatal(err)
	}
	for i, e := range b.Entry {
		fullURLs[e.FullURL] = f.refs["85"][i]
	}
	var encounters []string
	for i, r := range f.res["85"] {
		if r["resourceType"] != "Encounter" {
			continue
		}
		ps, _ := r["participant"].([]any)
		for _, p := range ps {
			ind, _ := p.(map[string]any)["individual"].(map[string]any)
			ref, _ := ind["reference"].(string)
			if strings.HasPrefix(fullURLs[ref], "Practitioner/") {
				encounters = append(encounters, f.refs["85"][i])
				break
			}
		}
	}
	sort.Strings(encounters)
	if len(encounters) == 0 {
		t.Fatal("no Encounter of patient 85 names a practitioner")
	}
	p85 := patient85
	for _, tc := range []struct {
		name     string
		p        *access.Policy
		path     string
		matches  []string
		included []string
	}{
		{"revinclude through a readable type keeps to the compartment", p85,
			"/fhir/R4/Practitioner?_count=100&_revinclude=Encounter:practitioner", f.all("Practitioner"), encounters},
		{"iterate goes on from what was included only", p85,
			"/fhir/R4/Practitioner?_count=100&_revinclude=Encounter:practitioner&_include:iterate=Encounter:subject", f.all("Practitioner"),
			sortedCopy(append(slices.Clone(encounters), "Patient/85"))},
		{"a type the policy does not grant is left out", p85,
			"/fhir/R4/Practitioner?_count=100&_revinclude=PractitionerRole:practitioner", f.all("Practitioner"), nil},
		{"a reference out of the compartment is not followed", p85,
			"/fhir/R4/Observation?_id=cross&_include=Observation:has-member", []string{"Observation/cross"}, nil},
		{"the nurse follows it", nurse,
			"/fhir/R4/Observation?_id=cross&_include=Observation:has-member", []string{"Observation/cross"}, []string{other}},
		{"a constrained scope includes no other type", lab85,
			"/fhir/R4/Observation?_count=100&_include=Observation:subject", f.lab("85"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, as(f.h, tc.p), "GET", tc.path, nil)
			mustStatus(t, r, 200)
			s := readSearchset(t, r)
			if !slices.Equal(s.matches, tc.matches) || !slices.Equal(s.included, tc.included) {
				t.Errorf("matches %v\nincluded %v\nwant %v\nand %v", s.matches, s.included, tc.matches, tc.included)
			}
			if tc.p != nurse {
				// The cross reference is patient 85's own data.
				f.noLeak(t, tc.path, r.body, `"reference":"`+other+`"`)
			}
		})
	}
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	return out
}

// TestAccessPaging: a paging link made under one policy, followed under
// another, shows the second only what it may see.
func TestAccessPaging(t *testing.T) {
	f := newAccessFixture(t)
	next := func(h http.Handler) string {
		s := readSearchset(t, do(t, h, "GET", "/fhir/R4/Observation?_count=5", nil))
		if s.next == "" || !strings.Contains(s.next, "_page=") {
			t.Fatalf("no snapshot link: %+v", s)
		}
		return linkPath(s.next)
	}
	for _, tc := range []struct {
		name      string
		from, use *access.Policy
		want      []string
	}{
		{"the nurse's link followed by patient 85", nurse, patient85, f.members("85", "Observation")},
		{"patient 85's link followed by the lab scope", patient85, lab85, f.lab("85")},
		{"patient 85's link followed by the nurse", patient85, nurse, f.all("Observation")},
		{"a link made without a policy followed by patient 85", nil, patient85, f.members("85", "Observation")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var src http.Handler = f.h
			if tc.from != nil {
				src = as(f.h, tc.from)
			}
			link := next(src)
			h := as(f.h, tc.use)
			r := do(t, h, "GET", link, nil)
			mustStatus(t, r, 200)
			s := readSearchset(t, r)
			if s.total != len(tc.want) {
				t.Errorf("total %d, want %d", s.total, len(tc.want))
			}
			for _, m := range s.matches {
				if !slices.Contains(tc.want, m) {
					t.Errorf("%s served through another's link", m)
				}
			}
			// The page is the one the identity's own search has there.
			own := readSearchset(t, do(t, h, "GET", "/fhir/R4/Observation?_count=5&_offset=5", nil))
			if !slices.Equal(own.matches, s.matches) {
				t.Errorf("page %v, the identity's own second page %v", s.matches, own.matches)
			}
			if tc.use == patient85 || tc.use == lab85 {
				f.noLeak(t, link, r.body)
			}
		})
	}
}

// historyOf reads a history Bundle: its total and the "Type/id/version"
// of its entries.
func historyOf(t *testing.T, r resp) (int, []string) {
	t.Helper()
	mustStatus(t, r, 200)
	b := r.json(t)
	var out []string
	es, _ := b["entry"].([]any)
	for _, e := range es {
		m := e.(map[string]any)
		full := m["fullUrl"].(string)
		full = full[strings.Index(full, "/fhir/R4/")+len("/fhir/R4/"):]
		out = append(out, full+"/"+strings.Trim(m["response"].(map[string]any)["etag"].(string), `W/"`))
	}
	return int(b["total"].(float64)), out
}

// TestAccessHistory: instance, type and system histories show a patient
// only the versions that were in their compartment.
func TestAccessHistory(t *testing.T) {
	f := newAccessFixture(t)
	// An Observation of 355 moved to 85 (a misfiled result corrected), a
	// resource of 85 deleted, and an AuditEvent about 85.
	moved := f.members("355", "Observation")[0]
	movedID := moved[strings.IndexByte(moved, '/')+1:]
	put(t, f.h, "Observation", movedID, `"status":"final","code":{"text":"moved"},"subject":{"reference":"Patient/85"}`)
	deleted := f.members("85", "Condition")[0]
	mustStatus(t, do(t, f.h, "DELETE", "/fhir/R4/"+deleted, nil), 204)
	mustStatus(t, do(t, f.h, "POST", "/fhir/R4/AuditEvent", `{"resourceType":"AuditEvent","type":{"code":"rest"},"recorded":"2024-06-01T12:00:00Z","agent":[{"requestor":true}],"source":{"observer":{"display":"gateway"}},"entity":[{"what":{"reference":"Patient/85"}}]}`), 201)

	p85 := as(f.h, patient85)
	compartment := f.members("85", "")
	versions := len(compartment) + 2 // the moved version, the deletion
	total, got := historyOf(t, do(t, p85, "GET", "/fhir/R4/_history?_count=1000", nil))
	if total != versions || len(got) != versions {
		t.Errorf("system history: %d entries, total %d; want %d", len(got), total, versions)
	}
	for _, e := range got {
		if strings.HasPrefix(e, "AuditEvent/") || e == moved+"/1" {
			t.Errorf("system history shows %s", e)
		}
	}
	if !slices.Contains(got, moved+"/2") || !slices.Contains(got, deleted+"/2") {
		t.Errorf("system history lacks the moved version or the deletion")
	}
	obs := len(f.members("85", "Observation")) + 1
	if total, _ := historyOf(t, do(t, p85, "GET", "/fhir/R4/Observation/_history?_count=1000", nil)); total != obs {
		t.Errorf("Observation history: total %d, want %d", total, obs)
	}
	if _, got := historyOf(t, do(t, p85, "GET", "/fhir/R4/"+moved+"/_history", nil)); !slices.Equal(got, []string{moved + "/2"}) {
		t.Errorf("history of the moved Observation: %v", got)
	}
	// Paging stays in the compartment.
	var paged []string
	link := "/fhir/R4/_history?_count=50"
	for link != "" {
		r := do(t, p85, "GET", link, nil)
		_, page := historyOf(t, r)
		paged = append(paged, page...)
		f.noLeak(t, link, r.body, moved) // moved to patient 85
		link = ""
		for _, l := range r.json(t)["link"].([]any) {
			if m := l.(map[string]any); m["relation"] == "next" {
				link = linkPath(m["url"].(string))
			}
		}
	}
	if len(paged) != versions {
		t.Errorf("paged through %d versions, want %d", len(paged), versions)
	}
	for _, tc := range []struct {
		name   string
		p      *access.Policy
		path   string
		status int
	}{
		{"another patient's resource", patient85, "/fhir/R4/" + f.members("355", "Encounter")[0] + "/_history", 404},
		{"another patient", patient85, "/fhir/R4/Patient/355/_history", 404},
		{"a type not granted", patient85, "/fhir/R4/PractitionerRole/_history", 403},
		{"a constrained scope, instance", lab85, "/fhir/R4/" + f.lab("85")[0] + "/_history", 403},
		{"a constrained scope, type", lab85, "/fhir/R4/Observation/_history", 403},
		{"a constrained scope, system", lab85, "/fhir/R4/_history", 403},
		{"no scope", nobody, "/fhir/R4/_history", 403},
		{"the audit trail", nurse, "/fhir/R4/AuditEvent/_history", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, as(f.h, tc.p), "GET", tc.path, nil)
			mustStatus(t, r, tc.status)
			f.noLeak(t, tc.path, r.body, tc.path)
		})
	}
	t.Run("deletions answer 410 only to who could see the resource", func(t *testing.T) {
		mustStatus(t, do(t, p85, "GET", "/fhir/R4/"+deleted, nil), 410)
		mustStatus(t, do(t, p85, "GET", "/fhir/R4/"+deleted+"/_history/2", nil), 410)
		gone := f.members("355", "Condition")[0]
		mustStatus(t, do(t, f.h, "DELETE", "/fhir/R4/"+gone, nil), 204)
		for _, suffix := range []string{"", "/_history/2", "/_history/1"} {
			sameAsMissing(t, p85, do(t, p85, "GET", "/fhir/R4/"+gone+suffix, nil), gone, suffix)
		}
		// A scope constraint cannot be checked on a deletion.
		lab := f.lab("85")[1]
		mustStatus(t, do(t, f.h, "DELETE", "/fhir/R4/"+lab, nil), 204)
		l85 := as(f.h, lab85)
		sameAsMissing(t, l85, do(t, l85, "GET", "/fhir/R4/"+lab, nil), lab, "")
		sameAsMissing(t, l85, do(t, l85, "GET", "/fhir/R4/"+lab+"/_history/1", nil), lab, "/_history/1")
		mustStatus(t, do(t, f.h, "GET", "/fhir/R4/"+lab, nil), 410)
	})
	t.Run("the nurse's system history leaves out the audit trail", func(t *testing.T) {
		all, _ := historyOf(t, do(t, f.h, "GET", "/fhir/R4/_history?_count=1", nil))
		total, got := historyOf(t, do(t, as(f.h, nurse), "GET", "/fhir/R4/_history?_count=1000", nil))
		if total != all-1 {
			t.Errorf("total %d, want %d", total, all-1)
		}
		for _, e := range got {
			if strings.HasPrefix(e, "AuditEvent/") {
				t.Errorf("shows %s", e)
			}
		}
	})
}

// countOf is the number of resources an unrestricted search finds.
func countOf(t *testing.T, h http.Handler, query string) int {
	t.Helper()
	return readSearchset(t, do(t, h, "GET", "/fhir/R4/"+query+"&_summary=count", nil)).total
}

func observation(patient, category string) string {
	return fmt.Sprintf(`{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":%q}]}],"code":{"text":"t"},"subject":{"reference":"Patient/%s"}}`, category, patient)
}

func versionOf(t *testing.T, h http.Handler, ref string) string {
	t.Helper()
	r := do(t, h, "GET", "/fhir/R4/"+ref, nil)
	mustStatus(t, r, 200)
	return r.json(t)["meta"].(map[string]any)["versionId"].(string)
}

// TestAccessWrites: who may create, update, patch and delete what.
func TestAccessWrites(t *testing.T) {
	f := newAccessFixture(t)
	// Patient 85's Observations that are not laboratory results: what the
	// constrained scope below does not match.
	var own []string
	for _, ref := range f.members("85", "Observation") {
		if !slices.Contains(f.lab("85"), ref) {
			own = append(own, ref)
		}
	}
	other := f.members("355", "Observation")
	idOf := func(ref string) string { return ref[strings.IndexByte(ref, '/')+1:] }
	body := func(ref, patient string) string {
		return fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"amended","code":{"text":"t"},"subject":{"reference":"Patient/%s"}}`, idOf(ref), patient)
	}
	patch := `[{"op":"replace","path":"/status","value":"amended"}]`
	audit := `{"resourceType":"AuditEvent","type":{"code":"rest"},"recorded":"2024-06-01T12:00:00Z","agent":[{"requestor":true}],"source":{"observer":{"display":"x"}}}`
	auditor := access.NewPolicy(access.ParseScopes([]string{"user/AuditEvent.cruds"}), access.PolicyOptions{})
	lab85w := access.NewPolicy(access.ParseScopes([]string{"patient/Observation.cruds?category=laboratory"}), access.PolicyOptions{Patient: "85"})
	for _, tc := range []struct {
		name   string
		p      *access.Policy
		method string
		path   string
		body   string
		hdr    []string
		status int
		// unchanged is a resource the request must leave as it was.
		unchanged string
	}{
		{"patient reads only", patient85, "POST", "/fhir/R4/Observation", observation("85", "laboratory"), nil, 403, ""},
		{"patient reads only: update", patient85, "PUT", "/fhir/R4/" + own[0], body(own[0], "85"), nil, 403, own[0]},
		{"patient reads only: delete", patient85, "DELETE", "/fhir/R4/" + own[0], "", nil, 403, own[0]},
		{"nurse creates an Observation", nurse, "POST", "/fhir/R4/Observation", observation("355", "laboratory"), nil, 201, ""},
		{"nurse updates an Observation", nurse, "PUT", "/fhir/R4/" + other[1], body(other[1], "355"), nil, 200, ""},
		{"nurse cannot create a Condition", nurse, "POST", "/fhir/R4/Condition", `{"resourceType":"Condition","subject":{"reference":"Patient/85"}}`, nil, 403, ""},
		{"nurse cannot delete", nurse, "DELETE", "/fhir/R4/" + other[2], "", nil, 403, other[2]},
		{"nurse cannot delete conditionally", nurse, "DELETE", "/fhir/R4/Observation?_id=" + idOf(other[2]), "", nil, 403, other[2]},
		{"nurse cannot patch (no update of Condition)", nurse, "PATCH", "/fhir/R4/" + f.members("85", "Condition")[0], patch, []string{"Content-Type", "application/json-patch+json"}, 403, f.members("85", "Condition")[0]},
		{"physician deletes", physician, "DELETE", "/fhir/R4/" + other[3], "", nil, 204, ""},
		{"physician cannot write the audit trail", physician, "POST", "/fhir/R4/AuditEvent", audit, nil, 403, ""},
		{"nor can an auditor", auditor, "POST", "/fhir/R4/AuditEvent", audit, nil, 403, ""},
		{"no scope", nobody, "POST", "/fhir/R4/Observation", observation("85", "laboratory"), nil, 403, ""},

		// patient/*.cruds: writes stay in the compartment.
		{"create in the compartment", writer85, "POST", "/fhir/R4/Observation", observation("85", "laboratory"), nil, 201, ""},
		{"create outside the compartment", writer85, "POST", "/fhir/R4/Observation", observation("355", "laboratory"), nil, 403, ""},
		{"update of another patient's resource", writer85, "PUT", "/fhir/R4/" + other[4], body(other[4], "85"), nil, 403, other[4]},
		{"update that moves a resource out", writer85, "PUT", "/fhir/R4/" + own[1], body(own[1], "355"), nil, 403, own[1]},
		{"update in the compartment", writer85, "PUT", "/fhir/R4/" + own[2], body(own[2], "85"), nil, 200, ""},
		{"update that creates", writer85, "PUT", "/fhir/R4/Observation/new85", strings.Replace(observation("85", "x"), `{`, `{"id":"new85",`, 1), nil, 201, ""},
		{"patch of another patient's resource", writer85, "PATCH", "/fhir/R4/" + other[5], patch, []string{"Content-Type", "application/json-patch+json"}, 403, other[5]},
		{"patch that moves a resource out", writer85, "PATCH", "/fhir/R4/" + own[3], `[{"op":"replace","path":"/subject/reference","value":"Patient/355"}]`, []string{"Content-Type", "application/json-patch+json"}, 403, own[3]},
		{"patch in the compartment", writer85, "PATCH", "/fhir/R4/" + own[4], patch, []string{"Content-Type", "application/json-patch+json"}, 200, ""},
		{"delete of another patient's resource: as if missing", writer85, "DELETE", "/fhir/R4/" + other[6], "", nil, 404, other[6]},
		{"delete of what does not exist", writer85, "DELETE", "/fhir/R4/Observation/no-such-id", "", nil, 404, ""},
		{"delete in the compartment", writer85, "DELETE", "/fhir/R4/" + own[5], "", nil, 204, ""},
		{"delete of a deletion in the compartment", writer85, "DELETE", "/fhir/R4/" + own[5], "", nil, 204, ""},

		// Conditional writes: criteria never select outside the compartment.
		{"conditional update whose criteria match another patient's resource creates in the compartment", writer85, "PUT", "/fhir/R4/Observation?_id=" + idOf(other[7]), observation("85", "x"), nil, 201, other[7]},
		{"conditional update naming another patient's resource by id", writer85, "PUT", "/fhir/R4/Observation?_id=" + idOf(other[8]), body(other[8], "85"), nil, 403, other[8]},
		{"conditional delete whose criteria match another patient's resource", writer85, "DELETE", "/fhir/R4/Observation?_id=" + idOf(other[9]), "", nil, 204, other[9]},
		{"conditional patch whose criteria match another patient's resource", writer85, "PATCH", "/fhir/R4/Observation?_id=" + idOf(other[10]), patch, []string{"Content-Type", "application/json-patch+json"}, 404, other[10]},
		{"conditional create whose criteria match another patient's resource", writer85, "POST", "/fhir/R4/Observation", observation("85", "x"), []string{"If-None-Exist", "_id=" + idOf(other[11])}, 201, other[11]},
		{"conditional create finds its own", writer85, "POST", "/fhir/R4/Observation", observation("85", "x"), []string{"If-None-Exist", "_id=" + idOf(own[6])}, 200, own[6]},
		{"an unknown parameter in the criteria is refused", writer85, "DELETE", "/fhir/R4/Observation?_id=" + idOf(own[7]) + "&bogus=1", "", nil, 400, own[7]},
		{"the patient role cannot delete conditionally", patient85, "DELETE", "/fhir/R4/Observation?_id=" + idOf(own[7]), "", nil, 403, own[7]},

		// A constrained write scope: the new content must match it.
		{"constrained create that matches", lab85w, "POST", "/fhir/R4/Observation", observation("85", "laboratory"), nil, 201, ""},
		{"constrained create that does not", lab85w, "POST", "/fhir/R4/Observation", observation("85", "vital-signs"), nil, 403, ""},
		{"constrained update of what it does not match", lab85w, "PUT", "/fhir/R4/" + own[8], body(own[8], "85"), nil, 403, own[8]},
		{"constrained delete of what it does not match", lab85w, "DELETE", "/fhir/R4/" + own[9], "", nil, 404, own[9]},

		// $validate writes nothing; the server does not implement others.
		{"$validate", physician, "POST", "/fhir/R4/Observation/$validate", observation("85", "x"), nil, 200, ""},
		{"$validate of a deletion", patient85, "POST", "/fhir/R4/" + own[10] + "/$validate?mode=delete", "", nil, 200, own[10]},
		{"$meta-add", physician, "POST", "/fhir/R4/Observation/$meta-add", observation("85", "x"), nil, 404, ""},
		{"$lastn", patient85, "GET", "/fhir/R4/Observation/$lastn", "", nil, 404, ""},
		{"an unknown endpoint", patient85, "GET", "/fhir/R4/Patient/85/Observation/x", "", nil, 403, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := ""
			if tc.unchanged != "" {
				before = versionOf(t, f.h, tc.unchanged)
			}
			audits := countOf(t, f.h, "AuditEvent?_id:missing=false")
			var body any
			if tc.body != "" {
				body = tc.body
			}
			r := do(t, as(f.h, tc.p), tc.method, tc.path, body, tc.hdr...)
			mustStatus(t, r, tc.status)
			if tc.status == 403 {
				if code, diag := outcomeOf(t, r); code != "forbidden" || diag == "" {
					t.Errorf("403 with %q %q", code, diag)
				}
			}
			if tc.unchanged != "" {
				if after := versionOf(t, f.h, tc.unchanged); after != before {
					t.Errorf("%s went from version %s to %s", tc.unchanged, before, after)
				}
			}
			if n := countOf(t, f.h, "AuditEvent?_id:missing=false"); n != audits {
				t.Errorf("%d AuditEvents, %d before", n, audits)
			}
			if tc.p == writer85 && tc.status < 300 && r.status != 204 && len(r.body) > 0 {
				f.noLeak(t, tc.path, r.body)
			}
		})
	}
}

// TestAccessBundles: batch entries are decided one by one; one entry the
// policy refuses refuses a transaction whole.
func TestAccessBundles(t *testing.T) {
	f := newAccessFixture(t)
	own := f.members("85", "Observation")
	other := f.members("355", "Observation")
	obsMap := func(patient, system, value string) map[string]any {
		var m map[string]any
		json.Unmarshal([]byte(observation(patient, "laboratory")), &m)
		m["identifier"] = []any{map[string]any{"system": system, "value": value}}
		return m
	}
	statuses := func(t *testing.T, r resp) []string {
		t.Helper()
		mustStatus(t, r, 200)
		var out []string
		for _, rs := range responses(t, r.json(t)) {
			out = append(out, strings.Fields(rs["status"].(string))[0])
		}
		return out
	}
	audit := map[string]any{"resourceType": "AuditEvent", "type": map[string]any{"code": "rest"}, "recorded": "2024-06-01T12:00:00Z",
		"agent": []any{map[string]any{"requestor": true}}, "source": map[string]any{"observer": map[string]any{"display": "x"}}}

	t.Run("batch: the nurse's denied DELETE and audit write, the rest done", func(t *testing.T) {
		r := do(t, as(f.h, nurse), "POST", "/fhir/R4", txBundle("batch",
			postEntry("urn:uuid:a", obsMap("85", "urn:test", "batch-1")),
			reqEntry("DELETE", other[0], nil),
			postEntry("urn:uuid:b", audit),
			reqEntry("GET", "Patient/355", nil),
		))
		if got := statuses(t, r); !slices.Equal(got, []string{"201", "403", "403", "200"}) {
			t.Errorf("statuses %v", got)
		}
		if countOf(t, f.h, "Observation?identifier=urn:test|batch-1") != 1 {
			t.Error("the allowed create was not done")
		}
		versionOf(t, f.h, other[0]) // still there
		if countOf(t, f.h, "AuditEvent?_id:missing=false") != 0 {
			t.Error("an AuditEvent was written")
		}
	})
	t.Run("batch: patient 85's reads answer as their own requests would", func(t *testing.T) {
		r := do(t, as(f.h, patient85), "POST", "/fhir/R4", txBundle("batch",
			reqEntry("GET", "Patient/85", nil),
			reqEntry("GET", "Patient/355", nil),
			reqEntry("GET", other[1], nil),
			reqEntry("GET", "Observation?patient=355", nil),
			reqEntry("GET", "Patient/355/Observation", nil),
			reqEntry("GET", "_history", nil),
			reqEntry("DELETE", own[0], nil),
		))
		if got := statuses(t, r); !slices.Equal(got, []string{"200", "404", "404", "200", "404", "200", "403"}) {
			t.Errorf("statuses %v", got)
		}
		f.noLeak(t, "batch", r.body, other[1])
		versionOf(t, f.h, own[0])
	})
	t.Run("batch: no scope", func(t *testing.T) {
		r := do(t, as(f.h, nobody), "POST", "/fhir/R4", txBundle("batch", reqEntry("GET", "Patient/85", nil), reqEntry("GET", "metadata", nil)))
		if got := statuses(t, r); !slices.Equal(got, []string{"403", "200"}) {
			t.Errorf("statuses %v", got)
		}
	})
	for _, tc := range []struct {
		name    string
		p       *access.Policy
		entries []map[string]any
		denied  string // the entry the 403 names
	}{
		{"a denied DELETE", nurse, []map[string]any{
			postEntry("urn:uuid:c", obsMap("85", "urn:test", "tx-1")),
			reqEntry("DELETE", other[2], nil),
		}, "entry[1] (DELETE " + other[2] + ")"},
		{"an AuditEvent", physician, []map[string]any{
			postEntry("urn:uuid:d", obsMap("85", "urn:test", "tx-2")),
			postEntry("urn:uuid:e", audit),
		}, "entry[1] (POST AuditEvent)"},
		{"a read of a type not granted", patient85, []map[string]any{
			reqEntry("GET", "Patient/85", nil),
			reqEntry("GET", "PractitionerRole?_count=1", nil),
		}, "entry[1] (GET PractitionerRole?_count=1)"},
		{"a create outside the compartment", writer85, []map[string]any{
			reqEntry("PUT", own[1], obsMap("85", "urn:test", "tx-3")),
			postEntry("urn:uuid:f", obsMap("355", "urn:test", "tx-4")),
		}, "entry[1] (POST Observation)"},
		{"an update of another patient's resource", writer85, []map[string]any{
			postEntry("urn:uuid:g", obsMap("85", "urn:test", "tx-5")),
			reqEntry("PUT", other[3], func() map[string]any {
				m := obsMap("85", "urn:test", "tx-6")
				m["id"] = other[3][strings.IndexByte(other[3], '/')+1:]
				return m
			}()),
		}, "entry[1] (PUT " + other[3] + ")"},
		{"a conditional update that would select another patient's resource", writer85, []map[string]any{
			postEntry("urn:uuid:h", obsMap("85", "urn:test", "tx-7")),
			reqEntry("PUT", "Observation?_id="+other[4][strings.IndexByte(other[4], '/')+1:], func() map[string]any {
				m := obsMap("85", "urn:test", "tx-8")
				m["id"] = other[4][strings.IndexByte(other[4], '/')+1:]
				return m
			}()),
		}, "entry[1] (PUT Observation?_id="},
	} {
		t.Run("transaction refused whole: "+tc.name, func(t *testing.T) {
			var touched []string
			before := map[string]string{}
			for _, e := range tc.entries {
				if u := e["request"].(map[string]any)["url"].(string); strings.Count(u, "/") == 1 && !strings.Contains(u, "?") {
					if r := do(t, f.h, "GET", "/fhir/R4/"+u, nil); r.status == 200 {
						touched = append(touched, u)
						before[u] = versionOf(t, f.h, u)
					}
				}
			}
			obs := countOf(t, f.h, "Observation?_id:missing=false")
			r := do(t, as(f.h, tc.p), "POST", "/fhir/R4", txBundle("transaction", tc.entries...))
			mustStatus(t, r, 403)
			code, diag := outcomeOf(t, r)
			if code != "forbidden" || !strings.HasPrefix(diag, tc.denied) {
				t.Errorf("outcome %q %q, want it to name %s", code, diag, tc.denied)
			}
			if n := countOf(t, f.h, "Observation?_id:missing=false"); n != obs {
				t.Errorf("%d Observations after, %d before", n, obs)
			}
			for _, u := range touched {
				if v := versionOf(t, f.h, u); v != before[u] {
					t.Errorf("%s went from version %s to %s", u, before[u], v)
				}
			}
			if countOf(t, f.h, "AuditEvent?_id:missing=false") != 0 {
				t.Error("an AuditEvent was written")
			}
		})
	}
	t.Run("transaction in the compartment", func(t *testing.T) {
		r := do(t, as(f.h, writer85), "POST", "/fhir/R4", txBundle("transaction",
			postEntry("urn:uuid:i", obsMap("85", "urn:test", "tx-9")),
			reqEntry("GET", "Observation?identifier=urn:test|tx-9", nil),
		))
		if got := statuses(t, r); !slices.Equal(got, []string{"201", "200"}) {
			t.Errorf("statuses %v", got)
		}
	})
}
