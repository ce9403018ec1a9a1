package access

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

func TestParseScope(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" for no scope
	}{
		// v2
		{"patient/Observation.rs", "patient/Observation.rs"},
		{"user/*.cruds", "user/*.cruds"},
		{"system/Patient.r", "system/Patient.r"},
		{"user/Encounter.cud", "user/Encounter.cud"},
		{"patient/Observation.rs?category=laboratory", "patient/Observation.rs?category=laboratory"},
		{"patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
			"patient/Observation.rs?category=http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Cvital-signs"},
		// v1
		{"patient/Observation.read", "patient/Observation.rs"},
		{"user/*.write", "user/*.cud"},
		{"patient/*.*", "patient/*.cruds"},
		// not resource scopes, or malformed: nothing
		{"openid", ""},
		{"fhirUser", ""},
		{"launch/patient", ""},
		{"offline_access", ""},
		{"patient/Observation", ""},
		{"patient/Observation.", ""},
		{"patient/Observation.sr", ""},  // letters out of order
		{"patient/Observation.rrs", ""}, // a letter twice
		{"patient/Observation.x", ""},
		{"patient/Nonsense.rs", ""},
		{"admin/Patient.rs", ""},
		{"patient/Observation.read?category=x", ""}, // v1 has no constraints
		{"patient/Observation.rs?", ""},
		{"patient/Observation.rs?%zz", ""},
	} {
		sc, ok := ParseScope(tc.in)
		got := ""
		if ok {
			got = sc.String()
		}
		if got != tc.want {
			t.Errorf("ParseScope(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPerm(t *testing.T) {
	for _, s := range []string{"c", "r", "rs", "cud", "cruds", "ds"} {
		p, ok := ParsePerm(s)
		if !ok || p.String() != s {
			t.Errorf("ParsePerm(%q) = %v %v", s, p, ok)
		}
	}
	if (Read|Search).String() != "rs" || All.String() != "cruds" || Perm(0).String() != "" {
		t.Error("Perm.String")
	}
}

func scopes(ss ...string) []Scope {
	out := ParseScopes(ss)
	if len(out) != len(ss) {
		panic("bad test scope")
	}
	return out
}

func strs(ss []Scope) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.String())
	}
	slices.Sort(out)
	return out
}

func TestNarrow(t *testing.T) {
	for _, tc := range []struct {
		name          string
		granted, role []string
		want          []string
	}{
		{"same", []string{"user/*.cruds"}, []string{"user/*.cruds"}, []string{"user/*.cruds"}},
		{"a token narrows the role", []string{"user/Observation.rs"}, []string{"user/*.cruds"}, []string{"user/Observation.rs"}},
		{"a token cannot widen the role", []string{"user/*.cruds"}, []string{"user/*.rs"}, []string{"user/*.rs"}},
		{"patient context wins", []string{"user/*.rs"}, []string{"patient/*.rs"}, []string{"patient/*.rs"}},
		{"other types give nothing", []string{"user/Patient.rs"}, []string{"user/Observation.rs"}, nil},
		{"no common permission", []string{"user/Patient.c"}, []string{"user/Patient.rs"}, nil},
		{"constraints add up", []string{"patient/Observation.rs?category=laboratory"}, []string{"patient/*.rs?status=final"},
			[]string{"patient/Observation.rs?category=laboratory&status=final"}},
		{"the wildcard does not reach AuditEvent", []string{"user/AuditEvent.rs"}, []string{"user/*.cruds"}, nil},
		{"AuditEvent named on both sides", []string{"user/AuditEvent.rs"}, []string{"user/AuditEvent.rs"}, []string{"user/AuditEvent.rs"}},
		{"system and system", []string{"system/*.rs"}, []string{"system/*.r"}, []string{"system/*.r"}},
		{"system and user", []string{"system/*.rs"}, []string{"user/*.r"}, []string{"user/*.r"}},
		{"several", []string{"user/Patient.rs", "user/Observation.cruds"}, []string{"user/*.rs"},
			[]string{"user/Observation.rs", "user/Patient.rs"}},
	} {
		got := strs(Narrow(scopes(tc.granted...), scopes(tc.role...)))
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: Narrow(%v, %v) = %v, want %v", tc.name, tc.granted, tc.role, got, tc.want)
		}
	}
}

func TestDecide(t *testing.T) {
	patient := NewPolicy(scopes("patient/*.rs"), PolicyOptions{Patient: "85", Readable: []string{"Practitioner", "Organization"}})
	nurse := NewPolicy(scopes("user/*.rs", "user/Observation.cu"), PolicyOptions{})
	lab := NewPolicy(scopes("patient/Observation.rs?category=laboratory", "patient/Observation.rs?category=vital-signs"), PolicyOptions{Patient: "85"})
	orphan := NewPolicy(scopes("patient/*.rs"), PolicyOptions{})
	confined := NewPolicy(scopes("user/*.cruds"), PolicyOptions{Patient: "7", ConfineToPatient: true})
	auditor := NewPolicy(scopes("user/AuditEvent.rs", "user/*.cruds"), PolicyOptions{})
	type want struct {
		allowed     bool
		compartment string
		filters     int
	}
	for _, tc := range []struct {
		name string
		p    *Policy
		perm Perm
		typ  string
		want want
	}{
		{"patient reads an Observation in the compartment", patient, Read, "Observation", want{true, "85", 0}},
		{"patient searches Patients: their own", patient, Search, "Patient", want{true, "85", 0}},
		{"patient cannot create", patient, Create, "Observation", want{}},
		{"patient cannot delete", patient, Delete, "Patient", want{}},
		{"patient reads a Practitioner (readable)", patient, Read, "Practitioner", want{true, "", 0}},
		{"patient cannot write a Practitioner", patient, Update, "Practitioner", want{}},
		{"patient cannot read an unlisted type outside the compartment", patient, Read, "Location", want{}},
		{"patient system search is confined", patient, Search, "", want{true, "85", 0}},
		{"patient scopes without a patient give nothing", orphan, Read, "Observation", want{}},
		{"nurse reads anything", nurse, Read, "Condition", want{true, "", 0}},
		{"nurse updates Observations", nurse, Update, "Observation", want{true, "", 0}},
		{"nurse cannot update Conditions", nurse, Update, "Condition", want{}},
		{"nurse cannot delete", nurse, Delete, "Observation", want{}},
		{"nurse needs both for a conditional update", nurse, Update | Search, "Observation", want{true, "", 0}},
		{"nurse cannot conditionally delete", nurse, Delete | Search, "Observation", want{}},
		{"two constraints are alternatives", lab, Search, "Observation", want{true, "85", 2}},
		{"constraints on another type give nothing", lab, Search, "Condition", want{}},
		{"the patient role confines user scopes", confined, Delete, "Observation", want{true, "7", 0}},
		{"the wildcard does not read AuditEvent", nurse, Read, "AuditEvent", want{}},
		{"an audit scope reads AuditEvent", auditor, Search, "AuditEvent", want{true, "", 0}},
		{"nobody writes AuditEvent", auditor, Create, "AuditEvent", want{}},
		{"nil policy", nil, Read, "Patient", want{}},
	} {
		d := tc.p.Decide(tc.perm, tc.typ)
		got := want{d.Allowed, d.Compartment, len(d.Filters)}
		if got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, d, tc.want)
		}
		if !d.Allowed && d.Reason == "" {
			t.Errorf("%s: refused without a reason", tc.name)
		}
	}
	if d := lab.Decide(Search, "Observation"); !reflect.DeepEqual(d.Filters, []url.Values{{"category": {"laboratory"}}, {"category": {"vital-signs"}}}) {
		t.Errorf("filters %v", d.Filters)
	}
}

func TestDecideInteraction(t *testing.T) {
	p := NewPolicy(scopes("user/Patient.r"), PolicyOptions{})
	for _, tc := range []struct {
		interaction string
		allowed     bool
	}{
		{"read", true}, {"vread", true}, {"history-instance", true},
		{"search-type", false}, {"history-type", false}, {"create", false},
		{"capabilities", true}, {"batch", false}, {"operation", false},
	} {
		if d := p.DecideInteraction(tc.interaction, "Patient"); d.Allowed != tc.allowed {
			t.Errorf("%s: %+v, want allowed %v", tc.interaction, d, tc.allowed)
		}
	}
}

func TestCompartments(t *testing.T) {
	for _, tc := range []struct {
		typ, id, body string
		want          []string
	}{
		{"Patient", "85", `{"resourceType":"Patient","id":"85"}`, []string{"85"}},
		{"Patient", "9", `{"resourceType":"Patient","id":"9","link":[{"other":{"reference":"Patient/85"},"type":"seealso"}]}`, []string{"85", "9"}},
		{"Observation", "o", `{"resourceType":"Observation","status":"final","code":{},"subject":{"reference":"Patient/85"},"performer":[{"reference":"Patient/86"},{"reference":"Practitioner/1"}]}`, []string{"85", "86"}},
		{"Observation", "o", `{"resourceType":"Observation","status":"final","code":{},"subject":{"reference":"Group/1"}}`, nil},
		{"Practitioner", "1", `{"resourceType":"Practitioner"}`, nil},
	} {
		got, err := Compartments(tc.typ, tc.id, []byte(tc.body))
		slices.Sort(got)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s/%s: %v %v, want %v", tc.typ, tc.id, got, err, tc.want)
		}
	}
	if _, err := Compartments("Observation", "x", []byte(`{`)); err == nil {
		t.Error("no error for bad JSON")
	}
	if !InCompartment("Observation") || !InCompartment("Patient") || InCompartment("Practitioner") {
		t.Error("InCompartment")
	}
	if !slices.Contains(CompartmentParams("Observation"), "subject") {
		t.Error("CompartmentParams(Observation)")
	}
}

func TestContext(t *testing.T) {
	ctx := context.Background()
	if FromContext(ctx) != nil {
		t.Fatal("policy on an empty context")
	}
	p := NewPolicy(nil, PolicyOptions{BreakGlass: "code blue"})
	if got := FromContext(WithPolicy(ctx, p)); got != p || got.BreakGlass() != "code blue" {
		t.Fatal("policy not carried")
	}
}

func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"patient/Observation.rs?category=laboratory", "user/*.write", "system/Patient.cruds", "openid"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sc, ok := ParseScope(s)
		if !ok {
			return
		}
		// What a scope prints parses back to the same scope.
		again, ok := ParseScope(sc.String())
		if !ok || again.String() != sc.String() {
			t.Fatalf("%q -> %q -> %q %v", s, sc.String(), again.String(), ok)
		}
		if sc.Perms == 0 || sc.Perms&^All != 0 {
			t.Fatalf("%q: perms %b", s, sc.Perms)
		}
	})
}

func TestRecord(t *testing.T) {
	var none *Record
	none.Set(RecordData{Allowed: true}) // a nil record ignores what it is told
	if none.Get().Decided {
		t.Fatal("nil record")
	}
	ctx, r := WithRecord(context.Background())
	if RecordFrom(ctx) != r || RecordFrom(context.Background()) != nil {
		t.Fatal("record not carried")
	}
	r.Set(RecordData{Decided: true, Interaction: "batch", Entries: []EntryDecision{{Index: 0, Allowed: true}}})
	got := r.Get()
	got.Entries[0].Allowed = false
	if !r.Get().Entries[0].Allowed || !r.Get().Decided {
		t.Fatal("Get must return a copy")
	}
}

// TestCompartmentElements: every compartment parameter's expression starts
// from elements the fast decoding keeps, for every type of the
// compartment: decoding only them gives the same compartments as the whole
// resource would.
func TestCompartmentElements(t *testing.T) {
	for typ := range spec.PatientCompartment {
		if len(compartmentElements(typ)) == 0 {
			t.Errorf("%s: no element found in its compartment parameters' expressions", typ)
		}
	}
	if got := compartmentElements("Observation"); !slices.Contains(got, "subject") || !slices.Contains(got, "performer") {
		t.Errorf("Observation: %v", got)
	}
}

// TestCompartmentsMatchFullDecoding: over the Synthea test data, decoding
// only the compartment's elements finds what decoding whole resources
// finds.
func TestCompartmentsMatchFullDecoding(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "testdata", "synthea", "*.json"))
	if len(files) == 0 {
		t.Fatal("no test data")
	}
	n := 0
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var b struct {
			Entry []struct {
				Resource json.RawMessage `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(raw, &b); err != nil {
			t.Fatal(err)
		}
		for _, e := range b.Entry {
			var head struct{ ResourceType, ID string }
			json.Unmarshal(e.Resource, &head)
			// The transaction's urn:uuid references, as a server rewrites them.
			body := []byte(strings.ReplaceAll(string(e.Resource), `"urn:uuid:`, `"Patient/`))
			d := json.NewDecoder(bytes.NewReader(body))
			d.UseNumber()
			var tree any
			if err := d.Decode(&tree); err != nil {
				t.Fatal(err)
			}
			want := search.Compartments(head.ResourceType, head.ID, tree)
			got, err := Compartments(head.ResourceType, head.ID, body)
			slices.Sort(want)
			slices.Sort(got)
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("%s/%s: %v %v, want %v", head.ResourceType, head.ID, got, err, want)
			}
			n++
		}
	}
	if n < 700 {
		t.Errorf("only %d resources checked", n)
	}
}
