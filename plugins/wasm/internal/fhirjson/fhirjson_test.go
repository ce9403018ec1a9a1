package fhirjson

import (
	"encoding/json"
	"strings"
	"testing"
)

const patient = `{"resourceType":"Patient","id":"p1","identifier":[{"value":"MRN1"}],"telecom":[{"value":"555"}],"name":[{"family":"X"}]}`

func TestMask(t *testing.T) {
	bundle := `{"resourceType":"Bundle","type":"searchset","total":2,"entry":[{"fullUrl":"a","resource":` + patient +
		`,"search":{"mode":"match"}},{"resource":{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}}]}`
	tests := []struct {
		name, body, repl, want string
		n                      int
	}{
		{"resource", patient, `"***"`, `{"resourceType":"Patient","id":"p1","identifier":"***","telecom":"***","name":[{"family":"X"}]}`, 2},
		{"remove", patient, ``, `{"resourceType":"Patient","id":"p1","name":[{"family":"X"}]}`, 2},
		{"bundle", bundle, `[]`, `{"resourceType":"Bundle","type":"searchset","total":2,"entry":[{"fullUrl":"a","resource":{"resourceType":"Patient","id":"p1","identifier":[],"telecom":[],"name":[{"family":"X"}]},"search":{"mode":"match"}},{"resource":{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}}]}`, 2},
		{"nothing to mask", `{"resourceType":"Observation","id":"o"}`, `"x"`, `{"resourceType":"Observation","id":"o"}`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n, err := Mask([]byte(tt.body), []string{"identifier", "telecom"}, []byte(tt.repl))
			if err != nil || string(got) != tt.want || n != tt.n {
				t.Errorf("Mask = %s, %d, %v\nwant %s, %d", got, n, err, tt.want, tt.n)
			}
		})
	}
	for _, bad := range []string{`[1]`, `{"a":`, `{"a":1} x`, `nope`} {
		if _, _, err := Mask([]byte(bad), []string{"a"}, nil); err == nil {
			t.Errorf("Mask(%q) succeeded", bad)
		}
	}
	if _, _, err := Mask([]byte(patient), []string{"a"}, []byte("not json")); err == nil {
		t.Error("replacement that is not JSON accepted")
	}
}

func TestExtract(t *testing.T) {
	bundle := `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"},"value":1}},{"resource":` + patient + `}]}`
	got, err := Extract([]byte(bundle), []string{"subject", "patient"})
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}},{"resourceType":"Patient","id":"p1"}]`
	if string(got) != want {
		t.Errorf("Extract = %s", got)
	}
	got, _ = Extract([]byte(patient), nil)
	if string(got) != `[{"resourceType":"Patient","id":"p1"}]` {
		t.Errorf("Extract single = %s", got)
	}
}

func FuzzMask(f *testing.F) {
	f.Add(patient)
	f.Add(`{"resourceType":"Bundle","entry":[{"resource":` + patient + `}]}`)
	f.Fuzz(func(t *testing.T, body string) {
		out, _, err := Mask([]byte(body), []string{"telecom"}, []byte(`"x"`))
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON out of %q: %s", body, out)
		}
		if strings.Contains(string(out), `"telecom":[`) && !strings.Contains(body, `"telecom":[`) {
			t.Fatalf("telecom appeared")
		}
	})
}

func bundle(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"resourceType":"Bundle","type":"searchset","entry":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"fullUrl":"http://example.org/fhir/Patient/p1","resource":` + patient + `,"search":{"mode":"match"}}`)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// BenchmarkMask masks a search Bundle of about 20 KB.
func BenchmarkMask(b *testing.B) {
	body := bundle(150)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Mask(body, []string{"telecom", "address", "identifier"}, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzValid checks the validator against encoding/json.
func FuzzValid(f *testing.F) {
	for _, s := range []string{patient, `[1,-2.5e+3,"a\\u00e9",true,false,null,{}]`, `{"a":01}`, `"\x"`, `1.`, `-`, ` {"a" : [ ] } `} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := valid([]byte(s)), json.Valid([]byte(s)); got != want {
			t.Fatalf("valid(%q) = %v, json.Valid = %v", s, got, want)
		}
	})
}
