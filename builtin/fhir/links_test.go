package fhir

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// A transaction rewrites fullUrls in references, uri-typed elements
// (wherever they are: contained resources, extensions, backbone elements,
// the extensions of primitives) and narrative links, and conditional
// references in references only; never a string of another type, nor a
// canonical (R4 http.html, transaction processing rules).
func TestRewriteLinks(t *testing.T) {
	const in = `{"resourceType":"Observation",
 "text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"urn:uuid:p\">patient</a> <img src='urn:uuid:p'/> <area href=\"urn:uuid:p\"/> urn:uuid:p <!-- <a href=\"urn:uuid:p\"> --></div>"},
 "identifier":[{"system":"urn:ietf:rfc:3986","value":"urn:uuid:p"}],
 "status":"final",
 "code":{"text":"urn:uuid:p","coding":[{"system":"urn:uuid:p","code":"urn:uuid:p"}]},
 "subject":{"reference":"urn:uuid:p","display":"urn:uuid:p","type":"urn:uuid:p"},
 "performer":[{"reference":"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1"},{"reference":"Practitioner/known"},{"reference":"urn:uuid:other"}],
 "valueString":"urn:uuid:p",
 "component":[{"code":{"text":"c"},"valueString":"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1"}],
 "extension":[{"url":"http://example.org/x","valueReference":{"reference":"urn:uuid:p"}},{"url":"http://example.org/y","valueUri":"urn:uuid:p"},{"url":"http://example.org/z","valueString":"urn:uuid:p"}],
 "_status":{"extension":[{"url":"http://example.org/w","valueUrl":"urn:uuid:p"},{"url":"http://example.org/v","valueCanonical":"urn:uuid:p"}]},
 "contained":[{"resourceType":"Patient","id":"c1","identifier":[{"value":"urn:uuid:p"}],"link":[{"other":{"reference":"urn:uuid:p"},"type":"seealso"}]}],
 "meta":{"source":"urn:uuid:p","profile":["urn:uuid:p"],"tag":[{"code":"urn:uuid:p"}]}}`
	const want = `{"resourceType":"Observation",
 "text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"Patient/1\">patient</a> <img src='Patient/1'/> <area href=\"urn:uuid:p\"/> urn:uuid:p <!-- <a href=\"urn:uuid:p\"> --></div>"},
 "identifier":[{"system":"urn:ietf:rfc:3986","value":"urn:uuid:p"}],
 "status":"final",
 "code":{"text":"urn:uuid:p","coding":[{"system":"Patient/1","code":"urn:uuid:p"}]},
 "subject":{"reference":"Patient/1","display":"urn:uuid:p","type":"Patient/1"},
 "performer":[{"reference":"Practitioner/9"},{"reference":"Practitioner/known"},{"reference":"urn:uuid:other"}],
 "valueString":"urn:uuid:p",
 "component":[{"code":{"text":"c"},"valueString":"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1"}],
 "extension":[{"url":"http://example.org/x","valueReference":{"reference":"Patient/1"}},{"url":"http://example.org/y","valueUri":"Patient/1"},{"url":"http://example.org/z","valueString":"urn:uuid:p"}],
 "_status":{"extension":[{"url":"http://example.org/w","valueUrl":"Patient/1"},{"url":"http://example.org/v","valueCanonical":"urn:uuid:p"}]},
 "contained":[{"resourceType":"Patient","id":"c1","identifier":[{"value":"urn:uuid:p"}],"link":[{"other":{"reference":"Patient/1"},"type":"seealso"}]}],
 "meta":{"source":"Patient/1","profile":["urn:uuid:p"],"tag":[{"code":"urn:uuid:p"}]}}`
	tree, err := decodeJSON([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	p := &parsed{typ: "Observation", raw: []byte(in), tree: tree}
	p.links = collectLinks(p.raw, p.typ, map[string]bool{"urn:uuid:p": true, "urn:uuid:q": true})
	var locs []string
	for _, s := range p.links {
		locs = append(locs, formatPath(p.raw, p.typ, s.path))
	}
	wantLocs := []string{
		"Observation.text.div", "Observation.code.coding[0].system", "Observation.subject.reference", "Observation.subject.type",
		"Observation.performer[0].reference", "Observation.extension[0].valueReference.reference", "Observation.extension[1].valueUri",
		"Observation._status.extension[0].valueUrl", "Observation.contained[0].link[0].other.reference", "Observation.meta.source",
	}
	if !slices.Equal(locs, wantLocs) {
		t.Errorf("links at\n%v\nwant\n%v", locs, wantLocs)
	}
	refs := map[string]string{"urn:uuid:p": "Patient/1"}
	cond := map[string]string{"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1": "Practitioner/9"}
	p.rewriteLinks(refs, cond)
	if string(p.raw) != want {
		t.Errorf("rewritten\n%s\nwant\n%s", p.raw, want)
	}
	wantTree, _ := decodeJSON([]byte(want))
	if !reflect.DeepEqual(p.tree, wantTree) {
		t.Errorf("tree\n%v\nwant\n%v", p.tree, wantTree)
	}
	// Rewriting again (a transaction that runs again) starts from the
	// bytes as sent.
	p.rewriteLinks(map[string]string{"urn:uuid:p": "Patient/2"}, cond)
	again := strings.ReplaceAll(want, "Patient/1", "Patient/2")
	wantTree, _ = decodeJSON([]byte(again))
	if string(p.raw) != again || !reflect.DeepEqual(p.tree, wantTree) {
		t.Errorf("second rewrite\n%s", p.raw)
	}
}

func TestNarrativeLinks(t *testing.T) {
	refs := map[string]string{"urn:uuid:p": "Patient/1", "urn:x&y": "Patient/<2>"}
	for _, c := range []struct{ in, want string }{
		{`<div><a href="urn:uuid:p">x</a></div>`, `<div><a href="Patient/1">x</a></div>`},
		{`<div><a  title = 'urn:uuid:p'  href = 'urn:uuid:p' >x</a></div>`, `<div><a  title = 'urn:uuid:p'  href = 'Patient/1' >x</a></div>`},
		{`<div><img alt="" src="urn:uuid:p"/><img src="urn:uuid:q"/></div>`, `<div><img alt="" src="Patient/1"/><img src="urn:uuid:q"/></div>`},
		{`<div><h:a href="urn:uuid:p"/></div>`, `<div><h:a href="Patient/1"/></div>`},
		{`<div><a href="urn:x&amp;y">x</a></div>`, `<div><a href="Patient/&lt;2&gt;">x</a></div>`},
		{`<div><link href="urn:uuid:p"/><img href="urn:uuid:p"/><a src="urn:uuid:p"/></div>`, ``},
		{`<div>urn:uuid:p <![CDATA[<a href="urn:uuid:p">]]> <!-- <a href="urn:uuid:p"> --> <?pi <a href="urn:uuid:p">?></div>`, ``},
		{`<div><a href="urn:uuid:p"`, `<div><a href="Patient/1"`},
		{`<div><a href="urn:uuid:p`, ``},
		{`<div><a href=urn:uuid:p>`, ``},
	} {
		got, changed := rewriteNarrative(c.in, refs)
		want := c.want
		if want == "" {
			want = c.in
		}
		if got != want || changed != (c.want != "") {
			t.Errorf("%s:\n got %s (%v)\nwant %s", c.in, got, changed, want)
		}
	}
}

// FuzzLinks walks arbitrary resources: every string is visited once, a
// rewrite of every link keeps the JSON valid, and the tree stays equal to
// what the bytes decode to.
func FuzzLinks(f *testing.F) {
	for _, s := range []string{
		`{"resourceType":"Observation","subject":{"reference":"urn:uuid:a"},"valueUri":"urn:uuid:a","identifier":[{"value":"urn:uuid:a"}]}`,
		`{"resourceType":"Patient","contained":[{"resourceType":"Organization","endpoint":[{"reference":"urn:uuid:a"}]}],"text":{"div":"<div><a href=\"urn:uuid:a\">x</a></div>"}}`,
		`{"resourceType":"Patient","generalPractitioner":[{"reference":"Practitioner?identifier=a|b"}],"_birthDate":{"extension":[{"url":"u","valueUri":"urn:uuid:a"}]}}`,
		`{"resourceType":"Questionnaire","item":[{"linkId":"1","definition":"urn:uuid:a","item":[{"linkId":"2","definition":"urn:uuid:a"}]}]}`,
		`{"resourceType":"Patient","link":[{"other":{"reference":"urn:\u0075uid:a"}}],"n\u0061me":[{"text":"urn:uuid:a"}]}`,
		`{"resourceType":"Bundle","entry":[{"fullUrl":"urn:uuid:a","resource":{"resourceType":"Patient","managingOrganization":{"reference":"urn:uuid:a"}}}]}`,
		`{"resourceType":"Patient","x":[1,true,null,{"reference":"urn:uuid:a"}],"active":true}`,
		`{ "resourceType" : "Patient" , "link" : [ { "other" : { "reference" : "urn:uuid:a" } } ] }`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		tree, err := decodeJSON(raw)
		if err != nil {
			return
		}
		typ, _ := tree["resourceType"].(string)
		// Every string is visited, once, with its decoded value.
		var visited []string
		walkLinks(raw, typ, true, func(w *linkWalker, kind linkKind, start, end int) {
			visited = append(visited, decodeString(raw[start:end]))
		})
		var want []string
		var collect func(v any)
		collect = func(v any) {
			switch x := v.(type) {
			case string:
				want = append(want, x)
			case map[string]any:
				for _, e := range x {
					collect(e)
				}
			case []any:
				for _, e := range x {
					collect(e)
				}
			}
		}
		if !hasDuplicateKeys(raw) {
			collect(tree)
			slices.Sort(want)
			got := slices.Clone(visited)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("visited %q, the document holds %q", got, want)
			}
		}
		// Rewrite every link to a value that needs escaping.
		fulls := map[string]bool{}
		refs := map[string]string{}
		cond := map[string]string{}
		for _, v := range visited {
			fulls[v] = true
			refs[v] = `X/"` + v + `"<>`
			cond[v] = "Y/1"
		}
		p := &parsed{typ: typ, raw: raw, tree: tree}
		p.links = collectLinks(raw, typ, fulls)
		p.rewriteLinks(refs, cond)
		back, err := decodeJSON(p.raw)
		if err != nil {
			t.Fatalf("rewritten JSON does not decode: %v\n%s", err, p.raw)
		}
		if !hasDuplicateKeys(raw) && !reflect.DeepEqual(back, p.tree) {
			t.Fatalf("tree and bytes differ:\n%s", p.raw)
		}
	})
}

// hasDuplicateKeys reports whether an object of raw repeats a key (the
// tree then holds only the last).
func hasDuplicateKeys(raw []byte) bool {
	d := json.NewDecoder(strings.NewReader(string(raw)))
	type frame struct {
		obj  bool
		keys map[string]bool
		key  bool // the next token is a key
	}
	var stack []*frame
	for {
		tok, err := d.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				if top != nil && top.obj {
					top.key = true
				}
				stack = append(stack, &frame{obj: v == '{', keys: map[string]bool{}, key: v == '{'})
				continue
			default:
				stack = stack[:len(stack)-1]
				continue
			}
		case string:
			if top != nil && top.obj && top.key {
				if top.keys[v] {
					return true
				}
				top.keys[v] = true
				top.key = false
				continue
			}
		}
		if top != nil && top.obj {
			top.key = true
		}
	}
}

// FuzzNarrativeLinks rewrites arbitrary narratives: what it replaces, a
// second reading finds.
func FuzzNarrativeLinks(f *testing.F) {
	for _, s := range []string{
		`<div><a href="urn:uuid:p">x</a><img src='a&amp;b'/></div>`,
		`<div><!-- <a href="x"> --><a href="y"`,
		`<a href=`, `<img src="&#x41;&#66;&bogus;"/>`, `<<<a a a="">`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, div string) {
		var found []string
		out, changed := narrativeLinks(div, func(v string) (string, bool) {
			found = append(found, v)
			return "R<" + v + ">", true
		})
		if !changed {
			if len(found) > 0 || out != div {
				t.Fatalf("%q: links %q reported unchanged", div, found)
			}
			return
		}
		var again []string
		narrativeLinks(out, func(v string) (string, bool) {
			again = append(again, v)
			return "", false
		})
		for i := range found {
			found[i] = "R<" + found[i] + ">"
		}
		if !slices.Equal(again, found) {
			t.Fatalf("%q became %q: links %q, want %q", div, out, again, found)
		}
	})
}
