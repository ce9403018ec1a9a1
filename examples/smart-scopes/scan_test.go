package main

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// allLinkedJSON is the reading of allLinked with encoding/json, the
// reference the scanner must agree with.
func allLinkedJSON(extract []byte, patient string) bool {
	var resources []map[string]json.RawMessage
	if err := json.Unmarshal(extract, &resources); err != nil {
		return false
	}
	for _, res := range resources {
		var typ, id string
		json.Unmarshal(res["resourceType"], &typ)
		json.Unmarshal(res["id"], &id)
		switch {
		case typ == "OperationOutcome":
			continue
		case typ == "Patient" && id == patient:
			continue
		}
		links, ok := compartment[typ]
		if !ok || !linkedJSON(res, links.paths, patient) {
			return false
		}
	}
	return true
}

func linkedJSON(res map[string]json.RawMessage, paths []string, patient string) bool {
	for _, p := range paths {
		top, rest, _ := strings.Cut(p, ".")
		raw, ok := res[top]
		if !ok {
			continue
		}
		var v any
		if json.Unmarshal(raw, &v) != nil {
			continue
		}
		if refersToJSON(v, strings.Split(rest, "."), patient) {
			return true
		}
	}
	return false
}

func refersToJSON(v any, path []string, patient string) bool {
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			if refersToJSON(e, path, patient) {
				return true
			}
		}
		return false
	case map[string]any:
		if len(path) > 0 && path[0] != "" {
			return refersToJSON(x[path[0]], path[1:], patient)
		}
		ref, _ := x["reference"].(string)
		want := "Patient/" + patient
		if i := strings.Index(ref, "/_history/"); i >= 0 {
			ref = ref[:i]
		}
		return ref == want || strings.HasSuffix(ref, "/"+want)
	}
	return false
}

var linkedSeeds = []string{
	`[]`,
	` [ ] `,
	`[{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}]`,
	`[{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p2"}}]`,
	`[{"resourceType":"Observation","id":"o1","performer":[{"reference":"Practitioner/x"},{"reference":"http://h/fhir/Patient/p1/_history/3"}]}]`,
	`[{"resourceType":"Observation","id":"o1","subject":{"reference":"xPatient/p1"}}]`,
	`[{"resourceType":"Appointment","id":"a1","participant":[{"type":[{"text":"x"}],"actor":{"reference":"Patient/p1"}}]}]`,
	`[{"resourceType":"Appointment","id":"a1","participant":[{"actor":{"reference":"Patient/p2"}}],"subject":{"reference":"Patient/p1"}}]`,
	`[{"resourceType":"CarePlan","id":"c1","activity":[{"reference":{"reference":"Patient/p1"}}]}]`,
	`[{"resourceType":"CarePlan","id":"c1","activity":[{"detail":{"performer":[{"reference":"Patient/p1"}]}}]}]`,
	`[{"resourceType":"Patient","id":"p1"},{"resourceType":"OperationOutcome","issue":[]}]`,
	`[{"resourceType":"Patient","id":"p2"}]`,
	`[{"resourceType":"Organization","id":"org"}]`,
	`[{"resourceType":"Observation","subject":{"reference":"Patient/p2"},"subject":{"reference":"Patient/p1"}}]`,
	`[{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"subject":{"reference":"Patient/p2"}}]`,
	`[{"resource\u0054ype":"Observation","sub\u006aect":{"refer\u0065nce":"Patient\/p1"}}]`,
	`[{"resourceType":"Observation","subject":{"reference":"Patient/p1"}},null]`,
	`[{"resourceType":"Observation","subject":{"reference":"Patient/p1"}},]`,
	`[{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}`,
	`[{"resourceType":"Observation","subject":{"reference":"Patient/p1","x":[1,-2.5e3,true,false,null,{}]}}]`,
	`[{"resourceType":"Observation","subject":{"reference":"Patient/p1","x":01}}]`,
	`[{"resourceType":"Observation","subject":[[{"reference":"Patient/p1"}]]}]`,
	`[{"resourceType":1,"subject":{"reference":"Patient/p1"}}]`,
	`{"resourceType":"Observation"}`,
	`[{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}] x`,
	`[{"resourceType":"Observation","subject":{"reference":"Patient/p1\n"}}]`,
}

// The scanner decides as encoding/json would on every valid input, and
// refuses what is not valid JSON.
func FuzzAllLinked(f *testing.F) {
	for _, s := range linkedSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := allLinked(b, "p1")
		if !json.Valid(b) {
			if got {
				t.Fatalf("invalid JSON %q linked", b)
			}
			return
		}
		if !utf8.Valid(b) {
			return // encoding/json replaces invalid UTF-8; the scanner compares bytes
		}
		if want := allLinkedJSON(b, "p1"); got != want {
			t.Fatalf("allLinked(%q) = %v, encoding/json says %v", b, got, want)
		}
	})
}
