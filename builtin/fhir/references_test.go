package fhir

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// exampleSets are what TestExamplesIntegrity loads into a store: the three
// example Bundles; the Synthea-style pair with conditional references (the
// information Bundle first), which holds patient 85 again.
var exampleSets = [][]string{
	{"synthea/uscore_bundle_patient_85.json", "synthea/uscore_bundle_patient_355.json", "synthea/carin_bundle_patient_888.json"},
	{conditionalInfo, conditionalPatient},
}

// bundleFile is one example Bundle as the file has it.
type bundleFile struct {
	name    string
	entries []struct {
		FullURL  string         `json:"fullUrl"`
		Resource map[string]any `json:"resource"`
	}
}

func readBundleFile(t testing.TB, name string) *bundleFile {
	t.Helper()
	var b struct {
		Entry []struct {
			FullURL  string         `json:"fullUrl"`
			Resource map[string]any `json:"resource"`
		} `json:"entry"`
	}
	d := json.NewDecoder(bytes.NewReader(testdataFile(t, name)))
	d.UseNumber()
	if err := d.Decode(&b); err != nil {
		t.Fatal(err)
	}
	return &bundleFile{name: name, entries: b.Entry}
}

// identifiers lists the "system|value" of the resource's identifiers
// (searchable ones: the type has an identifier parameter).
func identifiersOf(res map[string]any) [][2]string {
	typ, _ := res["resourceType"].(string)
	if _, ok := search.Lookup(typ, "identifier"); !ok {
		return nil
	}
	var list []any
	switch x := res["identifier"].(type) {
	case []any:
		list = x
	case map[string]any:
		list = []any{x}
	}
	var out [][2]string
	for _, x := range list {
		m, _ := x.(map[string]any)
		sys, _ := m["system"].(string)
		val, _ := m["value"].(string)
		if val != "" {
			out = append(out, [2]string{sys, val})
		}
	}
	return out
}

// storedResources reads the current version of every resource of the
// store.
func storedResources(t testing.TB, h *Handler) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	seen := map[string]bool{}
	q := store.HistoryQuery{Count: 1000}
	for {
		vs, _, err := h.store.History(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			k := v.Type + "/" + v.ID
			if seen[k] {
				continue
			}
			seen[k] = true
			if v.Deleted {
				continue
			}
			tree, err := decodeJSON(v.Body)
			if err != nil {
				t.Fatal(err)
			}
			out[k] = tree
		}
		if len(vs) < q.Count {
			return out
		}
		q.Before = vs[len(vs)-1].Seq
	}
}

// referencesIn lists the values of the "reference" members of v (in the
// example data, the Reference.reference elements), with their paths.
func referencesIn(v any, path string, out map[string]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok && k == "reference" {
				out[path+".reference"] = s
				continue
			}
			referencesIn(e, path+"."+k, out)
		}
	case []any:
		for i, e := range x {
			referencesIn(e, fmt.Sprintf("%s[%d]", path, i), out)
		}
	}
}

// containsID reports whether the contained resources hold one with id.
func containsID(contained any, id string) bool {
	cs, _ := contained.([]any)
	for _, c := range cs {
		if m, _ := c.(map[string]any); m["id"] == id {
			return true
		}
	}
	return false
}

// checkIntegrity walks every stored resource: each reference is "Type/id"
// of a resource that exists, and every identifier of the loaded files
// finds its resource. It returns the stored resources.
func checkIntegrity(t *testing.T, h *Handler, files []*bundleFile) map[string]map[string]any {
	t.Helper()
	stored := storedResources(t, h)
	refs := 0
	for k, res := range stored {
		found := map[string]string{}
		referencesIn(res, k, found)
		for where, ref := range found {
			refs++
			if id, ok := strings.CutPrefix(ref, "#"); ok {
				if !containsID(res["contained"], id) {
					t.Errorf("%s: %q names no contained resource", where, ref)
				}
				continue
			}
			if _, ok := stored[ref]; !ok {
				t.Errorf("%s: %q leads to no stored resource", where, ref)
			}
		}
	}
	if refs < 1000 {
		t.Errorf("%d references walked", refs)
	}
	wantResources := 0
	for _, f := range files {
		wantResources += len(f.entries)
	}
	if len(stored) != wantResources {
		t.Errorf("%d resources stored, the files hold %d", len(stored), wantResources)
	}
	// Each identifier finds a resource of its type holding it, as sent.
	n := 0
	for _, f := range files {
		for _, e := range f.entries {
			typ := e.Resource["resourceType"].(string)
			for _, id := range identifiersOf(e.Resource) {
				n++
				q := typ + "?identifier=" + url.QueryEscape(escapeSearch(id[0])+"|"+escapeSearch(id[1]))
				got := ids(t, h, q)
				if len(got) == 0 {
					t.Errorf("%s (%s entry %s): no match", q, f.name, e.FullURL)
					continue
				}
				ok := false
				for _, g := range got {
					for _, have := range identifiersOf(stored[typ+"/"+g]) {
						ok = ok || have == id
					}
				}
				if !ok {
					t.Errorf("%s: matches %v, none holds the identifier as sent", q, got)
				}
			}
		}
	}
	if n < 100 {
		t.Errorf("%d identifiers searched", n)
	}
	// The store's own check agrees.
	if _, err := h.Check(context.Background(), func(f Finding) { t.Errorf("check: %v", f) }); err != nil {
		t.Fatal(err)
	}
	return stored
}

// The example Bundles and the Synthea-style Bundles with conditional
// references load through POST and through Import with every reference
// resolved and every identifier as sent; through POST, each stored resource
// is the one sent but for its links to other entries and its conditional
// references (see keepsStrings).
func TestExamplesIntegrity(t *testing.T) {
	off := false
	for n, set := range exampleSets {
		var files []*bundleFile
		for _, name := range set {
			files = append(files, readBundleFile(t, name))
		}
		t.Run("POST "+strings.Join(set, "+"), func(t *testing.T) {
			h := newTestServer(t, func(c *Config) { c.SchemaValidation = &off })
			locs := map[*bundleFile][]string{}
			for _, f := range files {
				r := do(t, h, "POST", "/fhir/R4", testdataFile(t, f.name))
				mustStatus(t, r, 200)
				for i, rs := range responses(t, r.json(t)) {
					if s := rs["status"].(string); s != "201 Created" {
						t.Fatalf("%s entry %d: %s", f.name, i, s)
					}
					parts := strings.Split(rs["location"].(string), "/")
					locs[f] = append(locs[f], parts[0]+"/"+parts[1])
				}
			}
			stored := checkIntegrity(t, h, files)
			kept := 0
			for _, f := range files {
				kept += keepsStrings(t, stored, f, locs[f])
			}
			if n == 0 && kept != 45 {
				t.Errorf("%d identifiers equal to a fullUrl, the example Bundles hold 45", kept)
			}
		})
		t.Run("Import "+strings.Join(set, "+"), func(t *testing.T) {
			h := newTestServer(t, func(c *Config) { c.SchemaValidation = &off })
			for _, f := range files {
				sum, err := h.Import(context.Background(), bytes.NewReader(testdataFile(t, f.name)), nil)
				if err != nil || sum.Failed > 0 || sum.Created != len(f.entries) {
					t.Fatalf("%s: %+v, %v", f.name, sum, err)
				}
			}
			checkIntegrity(t, h, files)
		})
	}
}

// keepsStrings checks that a transaction changed nothing of the resources
// of f (stored at locs, in entry order) but their links: each is the one
// sent, but for the references to fullUrls, which lead to the entries'
// resources, and the conditional references, which lead to a resource of
// their type holding the identifier they name. It returns how many
// identifiers equal to a fullUrl it found kept.
func keepsStrings(t *testing.T, stored map[string]map[string]any, f *bundleFile, locs []string) int {
	t.Helper()
	target := map[string]string{} // fullUrl → Type/id
	for i, e := range f.entries {
		if e.FullURL != "" {
			target[e.FullURL] = locs[i]
		}
	}
	resolved := func(from, to string) bool {
		if want, ok := target[from]; ok {
			return to == want
		}
		typ, query, ok := strings.Cut(from, "?")
		crit, err := url.ParseQuery(query)
		if !ok || err != nil || !strings.HasPrefix(to, typ+"/") || len(crit["identifier"]) != 1 {
			return false
		}
		for _, id := range identifiersOf(stored[to]) {
			if escapeSearch(id[0])+"|"+escapeSearch(id[1]) == crit["identifier"][0] {
				return true
			}
		}
		return false
	}
	kept := 0
	for i, e := range f.entries {
		// Compare as JSON numbers are sent: through a decoder keeping them.
		var have map[string]any
		d := json.NewDecoder(bytes.NewReader(mustJSON(t, stored[locs[i]])))
		d.UseNumber()
		if err := d.Decode(&have); err != nil {
			t.Fatal(err)
		}
		sent := copyMap(e.Resource)
		for _, m := range []map[string]any{have, sent} {
			delete(m, "meta")
			delete(m, "id")
		}
		diffResource(t, locs[i], sent, have, resolved)
		for _, id := range identifiersOf(e.Resource) {
			if target[id[1]] != "" {
				kept++
			}
		}
	}
	return kept
}

// copyMap returns a shallow copy of m.
func copyMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// diffResource reports the differences between sent and stored other than
// references that resolved(sent, stored) accepts.
func diffResource(t *testing.T, where string, sent, stored any, resolved func(from, to string) bool) {
	t.Helper()
	switch s := sent.(type) {
	case map[string]any:
		st, ok := stored.(map[string]any)
		if !ok {
			t.Errorf("%s: %v stored as %v", where, sent, stored)
			return
		}
		keys := map[string]bool{}
		for k := range s {
			keys[k] = true
		}
		for k := range st {
			keys[k] = true
		}
		for k := range keys {
			if k == "reference" {
				from, _ := s[k].(string)
				to, _ := st[k].(string)
				if from != to {
					if !resolved(from, to) {
						t.Errorf("%s.reference: %q stored as %q", where, from, to)
					}
					continue
				}
			}
			diffResource(t, where+"."+k, s[k], st[k], resolved)
		}
	case []any:
		st, ok := stored.([]any)
		if !ok || len(st) != len(s) {
			t.Errorf("%s: %v stored as %v", where, sent, stored)
			return
		}
		for i := range s {
			diffResource(t, fmt.Sprintf("%s[%d]", where, i), s[i], st[i], resolved)
		}
	default:
		if !reflect.DeepEqual(sent, stored) {
			t.Errorf("%s: %v stored as %v", where, sent, stored)
		}
	}
}

// oneOutcome returns the status, diagnostics and expression of the first
// issue of an OperationOutcome.
func oneOutcome(t *testing.T, r resp) (status int, diagnostics, expression string) {
	t.Helper()
	b := r.json(t)
	if b["resourceType"] != "OperationOutcome" {
		t.Fatalf("status %d: not an OperationOutcome: %s", r.status, truncateBody(r.body))
	}
	is := b["issue"].([]any)[0].(map[string]any)
	diagnostics, _ = is["diagnostics"].(string)
	if ex, ok := is["expression"].([]any); ok && len(ex) > 0 {
		expression, _ = ex[0].(string)
	}
	return r.status, diagnostics, expression
}

func TestConditionalReferences(t *testing.T) {
	h := newTestServer(t)
	put(t, h, "Practitioner", "pr1", `"identifier":[{"system":"urn:npi","value":"1"}]`)
	put(t, h, "Practitioner", "pr2", `"identifier":[{"system":"urn:npi","value":"dup"}]`)
	put(t, h, "Practitioner", "pr3", `"identifier":[{"system":"urn:npi","value":"dup"}]`)
	obs := func(performer string) map[string]any {
		return map[string]any{"resourceType": "Observation", "status": "final", "code": map[string]any{"text": "x"},
			"subject":   map[string]any{"reference": "urn:uuid:pat"},
			"performer": []any{map[string]any{"reference": performer}}}
	}
	patient := postEntry("urn:uuid:pat", map[string]any{"resourceType": "Patient"})
	countAll := func() int {
		return countOf(t, h, "Observation?_id:missing=false") + countOf(t, h, "Patient?_id:missing=false")
	}

	t.Run("one match", func(t *testing.T) {
		r := do(t, h, "POST", "/fhir/R4", txBundle("transaction", patient,
			postEntry("urn:uuid:o1", obs("Practitioner?identifier=urn:npi|1")),
			postEntry("urn:uuid:o2", obs("Practitioner?identifier=urn:npi%7C1"))))
		mustStatus(t, r, 200)
		rs := responses(t, r.json(t))
		for _, x := range rs[1:] {
			loc := strings.TrimSuffix(x["location"].(string), "/_history/1")
			b := do(t, h, "GET", "/fhir/R4/"+loc, nil).json(t)
			if ref := b["performer"].([]any)[0].(map[string]any)["reference"]; ref != "Practitioner/pr1" {
				t.Errorf("%s: performer %v", loc, ref)
			}
		}
		if got := ids(t, h, "Observation?performer=Practitioner/pr1"); len(got) != 2 {
			t.Errorf("the resolved reference is not indexed: %v", got)
		}
	})
	for _, tc := range []struct {
		name, ref string
		status    int
		says      string
	}{
		{"no match", "Practitioner?identifier=urn:npi|404", 404, "no Practitioner matches"},
		{"several matches", "Practitioner?identifier=urn:npi|dup", 412, "matches more than one Practitioner"},
		{"unknown parameter", "Practitioner?identifier=urn:npi|1&identifer=x", 400, "identifer: unknown search parameter"},
		{"a result parameter", "Practitioner?identifier=urn:npi|1&_count=1", 400, "_count: shapes the result"},
		{"no criteria", "Practitioner?_format=json", 400, "has no search criteria"},
		{"bad value", "Practitioner?birthdate=yesterday", 400, "birthdate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := countAll()
			r := do(t, h, "POST", "/fhir/R4", txBundle("transaction", patient, postEntry("urn:uuid:o3", obs(tc.ref))))
			status, diag, expr := oneOutcome(t, r)
			if status != tc.status || !strings.Contains(diag, tc.says) ||
				!strings.HasPrefix(diag, `entry[1] (fullUrl urn:uuid:o3): the conditional reference "`+tc.ref+`" at Observation.performer[0].reference: `) ||
				expr != "Bundle.entry[1].resource.performer[0].reference" {
				t.Errorf("%d %q at %q", status, diag, expr)
			}
			if n := countAll(); n != before {
				t.Errorf("%d resources, %d before", n, before)
			}
		})
	}
	t.Run("the conditional create of the same transaction", func(t *testing.T) {
		r := do(t, h, "POST", "/fhir/R4", txBundle("transaction",
			postEntry("urn:uuid:o4", obs("Practitioner?identifier=urn:npi|new")),
			postEntry("urn:uuid:pr", map[string]any{"resourceType": "Practitioner", "identifier": []any{map[string]any{"system": "urn:npi", "value": "new"}}},
				"ifNoneExist", "identifier=urn:npi|new"),
			patient))
		mustStatus(t, r, 200)
		rs := responses(t, r.json(t))
		pr := strings.TrimSuffix(rs[1]["location"].(string), "/_history/1")
		o := do(t, h, "GET", "/fhir/R4/"+strings.TrimSuffix(rs[0]["location"].(string), "/_history/1"), nil).json(t)
		if ref := o["performer"].([]any)[0].(map[string]any)["reference"]; ref != pr {
			t.Errorf("performer %v, the transaction created %s", ref, pr)
		}
	})
	t.Run("batch: the entry fails alone", func(t *testing.T) {
		before := countOf(t, h, "Observation?_id:missing=false")
		obsB := func(performer string) map[string]any {
			o := obs(performer)
			o["subject"] = map[string]any{"reference": "Practitioner/pr1"}
			return o
		}
		r := do(t, h, "POST", "/fhir/R4", txBundle("batch",
			postEntry("urn:uuid:b1", obsB("Practitioner?identifier=urn:npi|1")),
			postEntry("urn:uuid:b2", obsB("Practitioner?identifier=urn:npi|404")),
			postEntry("urn:uuid:b3", obsB("Practitioner?identifier=urn:npi|dup"))))
		mustStatus(t, r, 200)
		out := r.json(t)
		var codes []string
		for _, x := range responses(t, out) {
			codes = append(codes, x["status"].(string)[:3])
		}
		if !slices.Equal(codes, []string{"201", "404", "412"}) {
			t.Fatalf("statuses %v", codes)
		}
		oo := out["entry"].([]any)[1].(map[string]any)["response"].(map[string]any)["outcome"].(map[string]any)
		diag := oo["issue"].([]any)[0].(map[string]any)["diagnostics"].(string)
		if !strings.HasPrefix(diag, "entry[1] (fullUrl urn:uuid:b2): ") {
			t.Errorf("outcome %q", diag)
		}
		if n := countOf(t, h, "Observation?_id:missing=false"); n != before+1 {
			t.Errorf("%d observations, %d before", n, before)
		}
		if got := ids(t, h, "Observation?performer=Practitioner/pr1&subject=Practitioner/pr1"); len(got) != 1 {
			t.Errorf("the batch entry's reference: %v", got)
		}
	})
	t.Run("a plain create keeps it", func(t *testing.T) {
		// Conditional references are a transaction's (R4 http.html
		// "Transaction processing rules").
		r := do(t, h, "POST", "/fhir/R4/Observation", obs("Practitioner?identifier=urn:npi|1"))
		mustStatus(t, r, 201)
		if ref := r.json(t)["performer"].([]any)[0].(map[string]any)["reference"]; ref != "Practitioner?identifier=urn:npi|1" {
			t.Errorf("performer %v", ref)
		}
	})
}

// A conditional reference only finds what the caller may search: outside
// it, it answers as if nothing matched, whatever exists.
func TestConditionalReferencesAccess(t *testing.T) {
	f := newAccessFixture(t)
	id355 := identifiersOf(f.res["355"][0])[0]
	patient355 := "Patient?identifier=" + escapeSearch(id355[0]) + "|" + escapeSearch(id355[1])
	practitioner := ""
	for _, res := range f.res["85"] {
		if res["resourceType"] == "Practitioner" {
			id := identifiersOf(res)[0]
			practitioner = "Practitioner?identifier=" + escapeSearch(id[0]) + "|" + escapeSearch(id[1])
			break
		}
	}
	obs := func(performer string) map[string]any {
		var m map[string]any
		json.Unmarshal([]byte(observation("85", "laboratory")), &m)
		m["performer"] = []any{map[string]any{"reference": performer}}
		return m
	}
	obsOnly := access.NewPolicy(access.ParseScopes([]string{"patient/Observation.cu"}), access.PolicyOptions{Patient: "85"})
	var missing string
	for _, tc := range []struct {
		name   string
		p      *access.Policy
		ref    string
		status int
	}{
		{"writer85 resolves a practitioner it may read", writer85, practitioner, 201},
		{"writer85 cannot find patient 355", writer85, patient355, 404},
		{"nor a patient that does not exist", writer85, "Patient?identifier=urn:none|none", 404},
		{"the nurse finds patient 355", nurse, patient355, 201},
		{"without search on Practitioner", obsOnly, practitioner, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := countOf(t, f.h, "Observation?_id:missing=false")
			r := do(t, as(f.h, tc.p), "POST", "/fhir/R4", txBundle("transaction", postEntry("urn:uuid:c1", obs(tc.ref))))
			if tc.status == 201 {
				mustStatus(t, r, 200)
				if s := responses(t, r.json(t))[0]["status"]; s != "201 Created" {
					t.Fatalf("status %v", s)
				}
				return
			}
			status, diag, _ := oneOutcome(t, r)
			if status != tc.status || !strings.HasPrefix(diag, "entry[0] (fullUrl urn:uuid:c1): the conditional reference") {
				t.Errorf("%d %q", status, diag)
			}
			if n := countOf(t, f.h, "Observation?_id:missing=false"); n != before {
				t.Errorf("%d observations, %d before", n, before)
			}
			if tc.status == 404 {
				// The same answer, but for the reference, as for a
				// patient that does not exist.
				body := strings.ReplaceAll(string(r.body), tc.ref, "X")
				if missing == "" {
					missing = body
				} else if body != missing {
					t.Errorf("answer %s\ndiffers from %s", body, missing)
				}
			}
		})
	}
}
