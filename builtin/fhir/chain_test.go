package fhir

import (
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/access"
)

// bundleIndex is what the example Bundles say, with the "Type/id" the
// fixture's server gave each entry: the expectations of the chain, _has
// and composite tests are computed from it, not from the server.
type bundleIndex struct {
	// ref maps each entry's fullUrl to its "Type/id" on the server.
	ref map[string]string
	// res are every entry's resource with its "Type/id".
	res []indexed
}

type indexed struct {
	ref string
	r   map[string]any
}

func newBundleIndex(t *testing.T, f *accessFixture) *bundleIndex {
	t.Helper()
	x := &bundleIndex{ref: map[string]string{}}
	for _, p := range []string{"85", "355", "888"} {
		var b struct {
			Entry []struct {
				FullURL  string         `json:"fullUrl"`
				Resource map[string]any `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(sharedExample(t, syntheaFiles[p]), &b); err != nil {
			t.Fatal(err)
		}
		for i, e := range b.Entry {
			ref := f.refs[p][i]
			if e.FullURL != "" {
				x.ref[e.FullURL] = ref
			}
			x.res = append(x.res, indexed{ref, e.Resource})
		}
	}
	return x
}

// target returns the "Type/id" a Reference element points at within the
// Bundles ("" for none).
func (x *bundleIndex) target(v any) string {
	m, _ := v.(map[string]any)
	s, _ := m["reference"].(string)
	if r, ok := x.ref[s]; ok {
		return r
	}
	return s
}

// where returns the "Type/id" of the resources of typ for which keep
// holds, sorted.
func (x *bundleIndex) where(typ string, keep func(r map[string]any) bool) []string {
	out := []string{}
	for _, e := range x.res {
		if e.r["resourceType"] == typ && keep(e.r) {
			out = append(out, e.ref)
		}
	}
	sort.Strings(out)
	return out
}

func codes(v any) []string {
	m, _ := v.(map[string]any)
	cs, _ := m["coding"].([]any)
	var out []string
	for _, c := range cs {
		cm, _ := c.(map[string]any)
		s, _ := cm["system"].(string)
		k, _ := cm["code"].(string)
		out = append(out, s+"|"+k)
	}
	return out
}

func quantity(m map[string]any) (float64, bool) {
	q, ok := m["valueQuantity"].(map[string]any)
	if !ok {
		return 0, false
	}
	v, ok := q["value"].(float64)
	return v, ok
}

// matches searches as h and returns the "Type/id" of the matches, sorted.
func matches(t *testing.T, h http.Handler, query string, hdr ...string) []string {
	t.Helper()
	sep := "?"
	if strings.Contains(query, "?") {
		sep = "&"
	}
	r := do(t, h, "GET", "/fhir/R4/"+query+sep+"_count=1000", nil, hdr...)
	mustStatus(t, r, 200)
	out := readSearchset(t, r).matches
	if out == nil {
		out = []string{}
	}
	return out
}

// The example Bundles searched with chains, _has and composites: each
// answer is what the Bundles say, computed here without the server (the
// same searches were answered with every Observation, 206, or every
// Patient when the server ignored what it did not support).
func TestChainsAndComposites(t *testing.T) {
	f := readOnlyFixture(t)
	x := newBundleIndex(t, f)
	ssn85 := "http://hl7.org/fhir/sid/us-ssn|999-47-5768"
	isPatient := func(p string) func(r map[string]any) bool {
		return func(r map[string]any) bool { return x.target(r["subject"]) == "Patient/"+p }
	}
	// Observations of one patient, and none of another's.
	obs85 := x.where("Observation", isPatient("85"))
	if len(obs85) != 66 {
		t.Fatalf("the Bundle of 85 has %d Observations, want 66", len(obs85))
	}
	// A code only one patient's Observations hold.
	var onlyOne, owner string
	byCode := map[string]map[string]bool{}
	for _, e := range x.res {
		if e.r["resourceType"] != "Observation" {
			continue
		}
		for _, c := range codes(e.r["code"]) {
			if byCode[c] == nil {
				byCode[c] = map[string]bool{}
			}
			byCode[c][x.target(e.r["subject"])] = true
		}
	}
	for c, ps := range byCode {
		if len(ps) == 1 && (onlyOne == "" || c < onlyOne) {
			onlyOne = c
			for p := range ps {
				owner = p
			}
		}
	}
	// And one of those on an Observation of an encounter.
	var withEncounter string
	for _, e := range x.res {
		if e.r["resourceType"] != "Observation" || e.r["encounter"] == nil {
			continue
		}
		for _, c := range codes(e.r["code"]) {
			if len(byCode[c]) == 1 && (withEncounter == "" || c < withEncounter) {
				withEncounter = c
			}
		}
	}
	encounterOf := map[string]string{}
	for _, e := range x.res {
		if e.r["resourceType"] == "Encounter" {
			encounterOf[e.ref] = x.target(e.r["subject"])
		}
	}
	componentQuantity := func(code string, keep func(float64) bool) func(r map[string]any) bool {
		return func(r map[string]any) bool {
			cs, _ := r["component"].([]any)
			for _, c := range cs {
				cm := c.(map[string]any)
				v, ok := quantity(cm)
				if ok && slices.Contains(codes(cm["code"]), code) && keep(v) {
					return true
				}
			}
			return false
		}
	}
	for _, c := range []struct {
		name, query string
		want        []string
	}{
		{"chain", "Observation?patient.identifier=" + ssn85, obs85},
		{"chain with :Type", "Observation?subject:Patient.identifier=" + ssn85, obs85},
		{"chain to several types", "Observation?subject.identifier=" + ssn85, obs85},
		{"chain of two links", "DiagnosticReport?encounter.patient.identifier=" + ssn85,
			x.where("DiagnosticReport", func(r map[string]any) bool { return encounterOf[x.target(r["encounter"])] == "Patient/85" })},
		{"chain through a reference no Patient has", "DiagnosticReport?subject:Patient.general-practitioner.name=a", []string{}},
		{"_has", "Patient?_has:Observation:patient:code=" + onlyOne, []string{owner}},
		{"_has nested", "Patient?_has:Encounter:patient:_has:Observation:encounter:code=" + withEncounter,
			x.where("Patient", func(r map[string]any) bool {
				for _, e := range x.res {
					if e.r["resourceType"] == "Observation" && slices.Contains(codes(e.r["code"]), withEncounter) &&
						encounterOf[x.target(e.r["encounter"])] == "Patient/"+r["id"].(string) {
						return true
					}
				}
				return false
			})},
		{"_has with a chain", "Patient?_has:Observation:patient:encounter.patient.identifier=" + ssn85, []string{"Patient/85"}},
		{"_has and a parameter", "Patient?_has:Observation:patient:code=" + onlyOne + "&gender=female", []string{}},
		{"code-value-quantity", "Observation?code-value-quantity=http://loinc.org|8302-2$gt150",
			x.where("Observation", func(r map[string]any) bool {
				v, ok := quantity(r)
				return ok && v > 150 && slices.Contains(codes(r["code"]), "http://loinc.org|8302-2")
			})},
		{"component-code-value-quantity", "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt100",
			x.where("Observation", componentQuantity("http://loinc.org|8480-6", func(v float64) bool { return v > 100 }))},
		{"component values of one component only", "Observation?component-code-value-quantity=http://loinc.org|8462-4$gt100",
			x.where("Observation", componentQuantity("http://loinc.org|8462-4", func(v float64) bool { return v > 100 }))},
		{"combo of a component", "Observation?combo-code-value-quantity=3150-0$40",
			x.where("Observation", componentQuantity("http://loinc.org|3150-0", func(v float64) bool { return v == 40 }))},
	} {
		t.Run(c.name, func(t *testing.T) {
			if len(c.want) == 0 && !strings.Contains(c.name, "no Patient") && !strings.Contains(c.name, "and a parameter") &&
				!strings.Contains(c.name, "one component only") {
				t.Fatalf("the Bundles give no match: the case proves nothing")
			}
			if got := matches(t, f.h, c.query); !slices.Equal(got, c.want) {
				t.Errorf("%s: %d matches %v, want %d %v", c.query, len(got), got, len(c.want), c.want)
			}
		})
	}
	// The figures the unsupported searches were checked against.
	for q, n := range map[string]int{"Observation?patient.identifier=" + ssn85: 66, "Patient?_has:Observation:patient:code=" + onlyOne: 1,
		"Observation?code-value-quantity=http://loinc.org|8302-2$gt150": 2, "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt100": 2,
		"Observation?component-code-value-quantity=http://loinc.org|8462-4$gt100": 0} {
		if got := len(matches(t, f.h, q)); got != n {
			t.Errorf("%s: %d matches, want %d", q, got, n)
		}
	}
}

// Chains, _has and composites that the server cannot run are a 400
// OperationOutcome naming the parameter.
func TestChainErrors(t *testing.T) {
	f := readOnlyFixture(t)
	for _, c := range []struct{ query, param string }{
		{"Observation?code.name=x", "code.name"},
		{"Observation?subject:Medication.name=x", "subject:Medication.name"},
		{"Observation?subject.nonsense=x", "subject.nonsense"},
		{"Observation?patient.organization.partof.partof.partof.name=x", "patient.organization.partof.partof.partof.name"},
		{"Patient?_has:Observation:patient=x", "_has:Observation:patient"},
		{"Patient?_has:Nothing:patient:code=x", "_has:Nothing:patient:code"},
		{"Patient?_has:Observation:code:code=x", "_has:Observation:code:code"},
		{"Patient?_has:Encounter:service-provider:status=x", "_has:Encounter:service-provider:status"},
		{"Observation?code-value-quantity=1234-5", "code-value-quantity"},
		{"Observation?code-value-quantity=1234-5$x", "code-value-quantity"},
		{"Observation?code-value-quantity=|$5", "code-value-quantity"},
		{"Observation?code-value-quantity:missing=true", "code-value-quantity:missing"},
		{"Observation?_sort=code-value-quantity", "_sort"},
	} {
		t.Run(c.query, func(t *testing.T) {
			status, diag, expr := oneOutcome(t, do(t, f.h, "GET", "/fhir/R4/"+c.query, nil))
			if status != 400 || expr != c.param {
				t.Errorf("%d %q at %q, want 400 at %q", status, diag, expr, c.param)
			}
		})
	}
	// Four references are followed; the fifth is refused (above).
	mustStatus(t, do(t, f.h, "GET", "/fhir/R4/Observation?patient.organization.partof.partof.name=x", nil), 200)
}

// An unknown parameter is a 400 by default; Prefer: handling=lenient, or
// search.unknown_params: lenient, has it ignored (and left out of the self
// link), and handling=strict overrides the configuration.
func TestUnknownSearchParameters(t *testing.T) {
	strict := newTestServer(t)
	lenient := newTestServer(t, func(c *Config) { c.Search.UnknownParams = "lenient" })
	put(t, strict, "Patient", "p1", `"gender":"female"`)
	put(t, lenient, "Patient", "p1", `"gender":"female"`)
	for _, c := range []struct {
		name   string
		h      *Handler
		hdr    []string
		status int
	}{
		{"default", strict, nil, 400},
		{"default, lenient handling", strict, []string{"Prefer", "handling=lenient"}, 200},
		{"default, strict handling", strict, []string{"Prefer", "handling=strict"}, 400},
		{"lenient configuration", lenient, nil, 200},
		{"lenient configuration, strict handling", lenient, []string{"Prefer", "handling=strict"}, 400},
	} {
		t.Run(c.name, func(t *testing.T) {
			// (A search across types refuses what a type lacks, always.)
			for _, path := range []string{"/fhir/R4/Patient?gender=female&nonsense=1", "/fhir/R4/Patient?gender=female&organization.nonsense=1"} {
				r := do(t, c.h, "GET", path, nil, c.hdr...)
				if r.status != c.status {
					t.Fatalf("%s: status %d, want %d: %s", path, r.status, c.status, truncateBody(r.body))
				}
				if c.status == 400 {
					if _, diag, _ := oneOutcome(t, r); !strings.Contains(diag, "nonsense") {
						t.Errorf("%s: %q does not name the parameter", path, diag)
					}
					continue
				}
				b := r.json(t)
				self := b["link"].([]any)[0].(map[string]any)["url"].(string)
				if strings.Contains(self, "nonsense") || len(entries(t, b)) != 1 {
					t.Errorf("%s: self %s, %d entries", path, self, len(entries(t, b)))
				}
			}
		})
	}
}

// A chain or _has never tells a caller anything about what it may not
// read: the inner search sees only the caller's compartment and scope
// constraints for its type, or is refused.
func TestChainAccess(t *testing.T) {
	f := readOnlyFixture(t)
	x := newBundleIndex(t, f)
	ssn355 := "http://hl7.org/fhir/sid/us-ssn|999-61-9797"
	// Oracles on patient 355: the practitioners and organizations of 355's
	// encounters, the Observations of 355's encounters.
	oracles := []string{
		"Practitioner?_has:Encounter:practitioner:patient=Patient/355",
		"Practitioner?_has:Encounter:practitioner:subject:Patient.identifier=" + ssn355,
		"Organization?_has:Encounter:service-provider:patient=Patient/355",
		"Location?_has:Encounter:location:patient.identifier=" + ssn355,
		"Observation?encounter.patient=Patient/355",
		"Patient?_has:Observation:patient:encounter.patient=Patient/355",
	}
	for _, q := range oracles {
		t.Run(q, func(t *testing.T) {
			if n := len(matches(t, as(f.h, physician), q)); n == 0 && !strings.HasPrefix(q, "Patient?") {
				t.Fatalf("physician: no match, the oracle proves nothing")
			}
			r := do(t, as(f.h, patient85), "GET", "/fhir/R4/"+q, nil)
			mustStatus(t, r, 200)
			if got := readSearchset(t, r); len(got.matches) != 0 || got.total > 0 {
				t.Errorf("patient 85 learns %v", got.matches)
			}
			f.noLeak(t, q, r.body, q)
		})
	}
	t.Run("own data", func(t *testing.T) {
		want := x.where("Observation", func(r map[string]any) bool { return x.target(r["subject"]) == "Patient/85" && r["encounter"] != nil })
		if got := matches(t, as(f.h, patient85), "Observation?encounter.patient=Patient/85"); !slices.Equal(got, want) {
			t.Errorf("%d matches, want %d", len(got), len(want))
		}
	})
	t.Run("scope constraints of the inner type", func(t *testing.T) {
		p := access.NewPolicy(access.ParseScopes([]string{"patient/Patient.rs", "patient/Observation.rs?category=laboratory"}),
			access.PolicyOptions{Patient: "85"})
		if got := matches(t, as(f.h, p), "Patient?_has:Observation:patient:category=vital-signs"); len(got) != 0 {
			t.Errorf("vital signs seen through _has: %v", got)
		}
		if got := matches(t, as(f.h, p), "Patient?_has:Observation:patient:category=laboratory"); !slices.Equal(got, []string{"Patient/85"}) {
			t.Errorf("laboratory: %v", got)
		}
	})
	t.Run("refused inner types", func(t *testing.T) {
		patientOnly := access.NewPolicy(access.ParseScopes([]string{"patient/Patient.rs"}), access.PolicyOptions{Patient: "85"})
		obsOnly := access.NewPolicy(access.ParseScopes([]string{"patient/Observation.rs"}), access.PolicyOptions{Patient: "85"})
		for _, c := range []struct {
			p     *access.Policy
			query string
		}{
			{patientOnly, "Patient?_has:Observation:patient:code=x"},
			{obsOnly, "Observation?patient.name=x"},
			{obsOnly, "Observation?subject.name=x"},
			{obsOnly, "Observation?subject:Patient._has:Observation:patient:code=x"},
		} {
			if r := do(t, as(f.h, c.p), "GET", "/fhir/R4/"+c.query, nil); r.status != 403 {
				t.Errorf("%s: status %d, want 403", c.query, r.status)
			}
		}
		// A chain without :Type leaves out the types not granted.
		both := access.NewPolicy(access.ParseScopes([]string{"patient/Observation.rs", "patient/Patient.rs"}), access.PolicyOptions{Patient: "85"})
		if got := matches(t, as(f.h, both), "Observation?subject.identifier=http://hl7.org/fhir/sid/us-ssn|999-47-5768"); len(got) != 66 {
			t.Errorf("subject.identifier: %d matches, want 66", len(got))
		}
	})
	t.Run("paging snapshots are not shared across inner constraints", func(t *testing.T) {
		q := "/fhir/R4/Patient?_has:Observation:patient:category=laboratory,vital-signs&_count=1"
		open := do(t, as(f.h, physician), "GET", q, nil)
		mustStatus(t, open, 200)
		next := readSearchset(t, open).next
		if next == "" {
			t.Skip("one page only")
		}
		p := access.NewPolicy(access.ParseScopes([]string{"user/Patient.rs", "user/Observation.rs?category=social-history"}), access.PolicyOptions{})
		r := do(t, as(f.h, p), "GET", linkPath(next), nil)
		mustStatus(t, r, 200)
		if got := readSearchset(t, r); len(got.matches) != 0 {
			t.Errorf("a page of another caller's snapshot: %v", got.matches)
		}
	})
}
