package fhir

import (
	"encoding/json"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
)

func loadSynthea(t testing.TB, h *Handler) {
	t.Helper()
	for _, f := range []string{"uscore_bundle_patient_85.json", "uscore_bundle_patient_355.json", "carin_bundle_patient_888.json"} {
		r := do(t, h, "POST", "/fhir/R4", sharedExample(t, f))
		mustStatus(t, r, 200)
		for i, rs := range responses(t, r.json(t)) {
			if s := rs["status"].(string); s != "201 Created" {
				t.Fatalf("%s entry %d: %s", f, i, s)
			}
		}
	}
}

// syntheaResources reads a Bundle file: its resources, and the map of each
// entry's fullUrl to the patient the bundle is about.
func syntheaResources(t testing.TB, name string) []map[string]any {
	var b struct {
		Entry []struct {
			Resource map[string]any `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(sharedExample(t, name), &b); err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, e := range b.Entry {
		out = append(out, e.Resource)
	}
	return out
}

func hasCoding(v any, system, code string) bool {
	m, _ := v.(map[string]any)
	cs, _ := m["coding"].([]any)
	for _, c := range cs {
		cm := c.(map[string]any)
		if cm["system"] == system && cm["code"] == code {
			return true
		}
	}
	return false
}

// The searches of the server agree with what the Bundles' data says,
// counted independently of the server's indexing.
func TestSyntheaSearches(t *testing.T) {
	h := newTestServer(t)
	loadSynthea(t, h)
	b85 := syntheaResources(t, "uscore_bundle_patient_85.json")
	b355 := syntheaResources(t, "uscore_bundle_patient_355.json")

	t.Run("Observation?patient=85&code=loinc|72166-2", func(t *testing.T) {
		want := 0
		for _, r := range b85 {
			if r["resourceType"] == "Observation" && hasCoding(r["code"], "http://loinc.org", "72166-2") {
				want++
			}
		}
		b := do(t, h, "GET", "/fhir/R4/Observation?patient=85&code="+url.QueryEscape("http://loinc.org|72166-2")+"&_count=100", nil).json(t)
		got := entries(t, b)
		if want == 0 || len(got) != want || int(b["total"].(float64)) != want {
			t.Fatalf("got %d (total %v), the data has %d", len(got), b["total"], want)
		}
		for _, o := range got {
			if o["subject"].(map[string]any)["reference"] != "Patient/85" || !hasCoding(o["code"], "http://loinc.org", "72166-2") {
				t.Errorf("wrong match %v", o["id"])
			}
		}
	})

	t.Run("Encounter?patient=355&date=ge2015-01-01&_sort=-date", func(t *testing.T) {
		var want []string // period ends, newest first
		for _, r := range b355 {
			if r["resourceType"] != "Encounter" {
				continue
			}
			p := r["period"].(map[string]any)
			end, _ := p["end"].(string)
			_, hi, err := search.ParseDate(end)
			if err != nil {
				t.Fatal(err)
			}
			_, cut, _ := search.ParseDate("2015-01-01")
			if hi > cut {
				want = append(want, end)
			}
		}
		sort.Slice(want, func(i, j int) bool {
			_, a, _ := search.ParseDate(want[i])
			_, b, _ := search.ParseDate(want[j])
			return a > b
		})
		b := do(t, h, "GET", "/fhir/R4/Encounter?patient=355&date=ge2015-01-01&_sort=-date&_count=100", nil).json(t)
		var got []string
		for _, e := range entries(t, b) {
			got = append(got, e["period"].(map[string]any)["end"].(string))
		}
		if len(want) == 0 || !slices.Equal(got, want) {
			t.Errorf("got %v\nwant %v", got, want)
		}
	})

	t.Run("Condition?patient=85&_include=Condition:encounter", func(t *testing.T) {
		want := 0
		for _, r := range b85 {
			if r["resourceType"] == "Condition" {
				want++
			}
		}
		b := do(t, h, "GET", "/fhir/R4/Condition?patient=85&_include=Condition:encounter&_count=100", nil).json(t)
		matches, included := 0, map[string]bool{}
		wantEnc := map[string]bool{}
		for _, e := range b["entry"].([]any) {
			m := e.(map[string]any)
			res := m["resource"].(map[string]any)
			switch m["search"].(map[string]any)["mode"] {
			case "match":
				matches++
				if enc, ok := res["encounter"].(map[string]any); ok {
					wantEnc[enc["reference"].(string)] = true
				}
			case "include":
				if res["resourceType"] != "Encounter" {
					t.Errorf("included a %v", res["resourceType"])
				}
				included["Encounter/"+res["id"].(string)] = true
			}
		}
		if matches != want || len(included) == 0 || len(included) != len(wantEnc) {
			t.Errorf("%d conditions (data: %d), %d encounters included for %d referenced", matches, want, len(included), len(wantEnc))
		}
		for ref := range wantEnc {
			if !included[ref] {
				t.Errorf("%s referenced but not included", ref)
			}
		}
	})

	t.Run("compartment", func(t *testing.T) {
		want := 0
		for _, r := range b85 {
			if r["resourceType"] == "Observation" {
				want++
			}
		}
		b := do(t, h, "GET", "/fhir/R4/Patient/85/Observation?_summary=count", nil).json(t)
		if int(b["total"].(float64)) != want {
			t.Errorf("Patient/85/Observation: %v, the data has %d", b["total"], want)
		}
		b = do(t, h, "GET", "/fhir/R4/ExplanationOfBenefit?patient=888&_summary=count", nil).json(t)
		if b["total"].(float64) != 5 {
			t.Errorf("EOB for 888: %v", b["total"])
		}
	})

	t.Run("no reference left unresolved", func(t *testing.T) {
		b := do(t, h, "GET", "/fhir/R4/Observation?patient=355&_count=1000", nil).json(t)
		if strings.Contains(string(mustJSON(t, b)), "urn:uuid:") {
			t.Error("a urn:uuid reference was stored")
		}
	})
}

func mustJSON(t testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
