package authz

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// A reason that passes is what gets logged and listed: trimmed, bounded,
// printable.
func FuzzCheckReason(f *testing.F) {
	for _, s := range []string{"code blue", "  trimmed  ", "", "a\x00b", "\u202e", "\xff", strings.Repeat("é", 30)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := checkReason(s, 40)
		if err != nil {
			return
		}
		if got == "" || len(got) > 40 || got != strings.TrimSpace(got) || !utf8.ValidString(got) {
			t.Fatalf("%q accepted as %q", s, got)
		}
		for _, r := range got {
			if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
				t.Fatalf("%q accepted with %U", s, r)
			}
		}
	})
}

// Whatever an upstream answers, the filtered Bundle holds nothing the
// policy does not admit, and filtering it again removes nothing.
func FuzzFilterBundle(f *testing.F) {
	f.Add([]byte(`{"resourceType":"Bundle","type":"searchset","total":2,"entry":[
	 {"resource":{"resourceType":"Observation","id":"a","subject":{"reference":"Patient/85"}},"search":{"mode":"match"}},
	 {"resource":{"resourceType":"Observation","id":"b","subject":{"reference":"Patient/355"}},"search":{"mode":"match"}},
	 {"resource":{"resourceType":"Practitioner","id":"p"},"search":{"mode":"include"}},
	 {"resource":{"resourceType":"Patient","id":"355"},"search":{"mode":"include"}},
	 {"request":{"method":"DELETE","url":"Observation/c"}}]}`))
	f.Add([]byte(`{"resourceType":"Bundle","entry":[{"resource":null}],"total":"x"}`))
	f.Add([]byte(`{"resourceType":"Bundle","resourceType":"Bundle"}`))
	pol := access.NewPolicy(access.ParseScopes([]string{"patient/*.rs"}), access.PolicyOptions{Patient: "85", Readable: []string{"Practitioner"}})
	decide := func(typ, mode string) access.Decision { return pol.Decide(access.Read, typ) }
	f.Fuzz(func(t *testing.T, body []byte) {
		out, st, err := filterBundle(body, decide, nil)
		if err != nil {
			return
		}
		if st.match+st.include+st.bare == 0 && !bytes.Equal(out, body) {
			t.Fatal("changed a Bundle it removed nothing from")
		}
		var b struct {
			Total json.RawMessage `json:"total"`
			Entry []struct {
				Resource json.RawMessage `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(out, &b); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out)
		}
		if bytes.HasPrefix(b.Total, []byte("-")) && st.match > 0 {
			t.Fatalf("total %s", b.Total)
		}
		for _, e := range b.Entry {
			res, err := access.DecodeResource(e.Resource)
			if err != nil {
				t.Fatalf("kept an entry without a readable resource: %s", e.Resource)
			}
			if ok, _ := decide(res.Type, "").Admits(res); !ok && res.Type != "OperationOutcome" {
				t.Fatalf("kept %s/%s", res.Type, res.ID)
			}
		}
		again, st2, err := filterBundle(out, decide, nil)
		if err != nil || st2.match+st2.include+st2.bare != 0 || !bytes.Equal(again, out) {
			t.Fatalf("filtering twice changed it: %v %+v", err, st2)
		}
	})
}

// However a search is written, narrowing it to patient 85 either confines
// it to the compartment or refuses it.
func FuzzNarrow(f *testing.F) {
	f.Add("Observation", "code=x&subject=Patient/355", true)
	f.Add("Patient", "_id=355", false)
	f.Add("", "_type=Observation", true)
	f.Add("Observation", "patient:missing=true&patient=Patient/355", false)
	pol := access.NewPolicy(access.ParseScopes([]string{"patient/*.rs", "patient/Observation.rs?category=laboratory"}), access.PolicyOptions{Patient: "85"})
	f.Fuzz(func(t *testing.T, typ, rawQuery string, compartmentForm bool) {
		if typ != "" && !access.IsResourceType(typ) || !access.InCompartment(typ) && typ != "" {
			return
		}
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			return
		}
		form := NarrowParameter
		if compartmentForm {
			form = NarrowCompartment
		}
		c := &call{pol: pol, p: &Plugin{cfg: Defaults()}}
		dec := pol.Decide(access.Search, typ)
		x := &exchange{req: fhirreq.Request{Interaction: fhirreq.SearchType, Type: typ}, path: typ, query: q}
		before := cloneValues(q)
		if why := c.narrow(x, typ, dec, form); why != "" {
			return
		}
		for k, vs := range before { // nothing the client asked is dropped
			if len(x.query[k]) < len(vs) {
				t.Fatalf("narrowing dropped %s", k)
			}
		}
		switch {
		case typ == "Patient":
			if !contains(x.query["_id"], "85") {
				t.Fatalf("Patient search not confined: %v", x.query)
			}
		case strings.HasPrefix(x.path, "Patient/85/"):
		default:
			if !contains(x.query[compartmentParam(typ)], "Patient/85") {
				t.Fatalf("%s search not confined: %s %v", typ, x.path, x.query)
			}
		}
	})
}

func contains(vs []string, v string) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}

// An object read in order and written back reads the same.
func FuzzMembers(f *testing.F) {
	f.Add([]byte(`{"resourceType":"Bundle","entry":[{"a":1}],"total":3}`))
	f.Add([]byte(`{"a":"\u00e9","b":{"c":[1,2,{"d":null}]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ms, err := members(body)
		if err != nil {
			return
		}
		out := writeObject(ms)
		var a, b any
		if json.Unmarshal(body, &a) != nil {
			t.Fatalf("members accepted what encoding/json does not: %q", body)
		}
		if err := json.Unmarshal(out, &b); err != nil {
			t.Fatalf("wrote invalid JSON %q: %v", out, err)
		}
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if !bytes.Equal(ja, jb) {
			t.Fatalf("%s became %s", ja, jb)
		}
	})
}

// Alternatives that can be expressed become a search no wider than the
// alternatives together: every parameter it adds comes from them.
func FuzzExpressFilters(f *testing.F) {
	f.Add("category=laboratory", "category=vital-signs", "status=final")
	f.Add("category=a&status=final", "category=b&status=final", "")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		var fs []url.Values
		for _, s := range []string{a, b, c} {
			if s == "" {
				continue
			}
			q, err := url.ParseQuery(s)
			if err != nil || len(q) == 0 {
				return
			}
			fs = append(fs, q)
		}
		if len(fs) == 0 {
			return
		}
		got, ok := expressFilters(fs)
		if !ok {
			return
		}
		for k := range got {
			found := false
			for _, f := range fs {
				if _, ok := f[k]; ok {
					found = true
				}
			}
			if !found {
				t.Fatalf("%v from %v", got, fs)
			}
		}
		if len(fs) == 1 && len(got) != len(fs[0]) {
			t.Fatalf("one alternative changed: %v", got)
		}
	})
}
