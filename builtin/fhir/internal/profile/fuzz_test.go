package profile

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"testing"
)

// FuzzParse reads arbitrary package files: Parse errors or keeps what it
// read, and whatever it kept compiles or is refused, and validates
// without failing.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"resourceType":"StructureDefinition","url":"http://x/p","type":"Patient","kind":"resource","snapshot":{"element":[{"path":"Patient"},{"id":"Patient.extension:a","path":"Patient.extension","sliceName":"a","min":1,"type":[{"code":"Extension","profile":["http://x/e"]}]},{"path":"Patient.gender","min":1,"max":"1","fixedCode":"male"}]}}`))
	f.Add([]byte(`[{"resourceType":"ValueSet","url":"v","compose":{"include":[{"system":"c","filter":[{"property":"concept","op":"is-a","value":"a"}]}]}},{"resourceType":"CodeSystem","url":"c","content":"complete","concept":[{"code":"a"}]}]`))
	f.Add([]byte(`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"StructureDefinition","url":"u","snapshot":{"element":[{"path":"Observation","constraint":[{"key":"k","severity":"error","expression":"status.exists() implies (value > 3)"}]},{"path":"Observation.value[x]","max":"x"}]}}}]}`))
	f.Add([]byte(`{"resourceType":"StructureDefinition","url":"q","snapshot":{"element":[{"path":"Questionnaire"},{"path":"Questionnaire.item","contentReference":"#Questionnaire.item","slicing":{"discriminator":[{"type":"value","path":"linkId"}],"rules":"closed"}},{"id":"Questionnaire.item:x","path":"Questionnaire.item","sliceName":"x","patternCoding":{"code":"a"}}]}}`))
	if data, err := os.ReadFile("../../testdata/us-core/uscore-v5.0.1-structuredefinitions.json.gz"); err == nil {
		if zr, err := gzip.NewReader(bytes.NewReader(data)); err == nil {
			var b bytes.Buffer
			b.ReadFrom(zr)
			f.Add(b.Bytes()[:min(b.Len(), 60000)])
		}
	}
	base := core(f)
	resources := []map[string]any{
		decode(f, `{"resourceType":"Patient","meta":{"profile":["http://x/p","q","u"]},"gender":"female","extension":[{"url":"http://x/e","valueString":"a"}]}`),
		decode(f, `{"resourceType":"Observation","meta":{"profile":["u"]},"status":"final","valueQuantity":{"value":2}}`),
		decode(f, `{"resourceType":"Questionnaire","meta":{"profile":["q"]},"item":[{"linkId":"a","item":[{"linkId":"b"}]}]}`),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var res Resources
		if err := Parse(data, &res); err != nil {
			return
		}
		s, err := base.With(&res)
		if err != nil {
			return
		}
		for _, r := range resources {
			s.Validate(r, Options{Core: true, Profiles: true, Extra: s.Profiles()})
		}
	})
}

// FuzzLoadTarGz reads arbitrary archives: an error or what they hold,
// never a failure.
func FuzzLoadTarGz(f *testing.F) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	body := []byte(`{"resourceType":"ValueSet","url":"v","expansion":{"contains":[{"system":"s","code":"c"}]}}`)
	tw.WriteHeader(&tar.Header{Name: "package/ValueSet-v.json", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
	tw.Write(body)
	tw.Close()
	zw.Close()
	f.Add(buf.Bytes())
	f.Add([]byte("\x1f\x8b\x08\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var res Resources
		LoadTarGz(bytes.NewReader(data), &res)
	})
}

// FuzzValidate validates arbitrary JSON against the core definitions:
// issues or none, never a failure.
func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1},"_status":{"extension":[{"url":"u","valueString":"x"}]}}`,
		`{"resourceType":"Patient","contained":[{"resourceType":"Patient","contained":[{"resourceType":"Basic"}]}],"extension":[{}],"_birthDate":[null,{}]}`,
		`{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Observation"}}]}`,
		`{"resourceType":"Encounter","period":{"start":"2020","end":"2019"},"class":{"code":"x"},"status":"planned"}`,
		`{"resourceType":"Questionnaire","item":[{"item":[{"item":[{"linkId":1}]}]}]}`,
	} {
		f.Add([]byte(s))
	}
	s := core(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeValue(data)
		if err != nil {
			return
		}
		if m, ok := v.(map[string]any); ok {
			s.Validate(m, Options{Core: true, Profiles: true})
		}
	})
}
