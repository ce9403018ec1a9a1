package wasmtest

import (
	"errors"
	"strings"
	"testing"
)

func TestDiff(t *testing.T) {
	for _, tc := range []struct {
		name, want, got, out string
	}{
		{"JSON, indented", `{"a":1,"b":[1,2]}`, `{"a":1,"b":[1,3]}`,
			"  {\n    \"a\": 1,\n    \"b\": [\n      1,\n-     2\n+     3\n    ]\n  }"},
		{"one line of text", "hello there", "hello world",
			"- \"hello there\"\n+ \"hello world\"\n  (first difference at byte 6)"},
		{"lines added and removed", "a\nb\nc", "a\nc\nd", "  a\n- b\n  c\n+ d"},
		{"empty want", "", "x", "- \"\"\n+ \"x\"\n  (first difference at byte 0)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(diff(tc.want, tc.got), "\n"); got != tc.out {
				t.Errorf("diff:\n%s\nwant:\n%s", got, tc.out)
			}
		})
	}
}

func TestCheckBodyJSON(t *testing.T) {
	body := `{"resourceType":"Patient","id":"1","name":[{"family":"Doe"}],"active":true,"n":3}`
	for _, tc := range []struct {
		name string
		want any
		bad  string
	}{
		{"members present", map[string]any{"resourceType": "Patient", "active": true, "n": 3}, ""},
		{"nested object members", map[string]any{"name": []any{map[string]any{"family": "Doe"}}}, ""},
		{"a different value", map[string]any{"id": "2"}, `body.id = "1", want "2"`},
		{"an absent member", map[string]any{"gender": "f"}, `body.gender is absent, want "f"`},
		{"a number", map[string]any{"n": 4}, `body.n = 3, want 4`},
		{"not an object", []any{1}, `body = {`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := strings.Join(checkBodyJSON(tc.want, body), "\n")
			if tc.bad == "" && bad != "" || tc.bad != "" && !strings.Contains(bad, tc.bad) {
				t.Errorf("got %q, want %q", bad, tc.bad)
			}
		})
	}
	if bad := checkBodyJSON(map[string]any{"a": 1}, "not json"); len(bad) != 1 || !strings.Contains(bad[0], "body is not JSON") {
		t.Errorf("not JSON: %v", bad)
	}
}

// FuzzParseCases: a cases file is untrusted input of the command line;
// decoding it returns a value or an error wrapping ErrBadCases, never
// panics.
func FuzzParseCases(f *testing.F) {
	f.Add([]byte("config: {header: X-Tenant}\ncases:\n  - name: a\n    request: {path: /fhir/R4/Patient/1}\n    expect: {decision: deny, status: 400, body: x, body_json: {a: [1]}}\n"))
	f.Add([]byte("config: X-Org\ncases: [{request: {path: /}, advance: 1h}]\n"))
	f.Add([]byte("cases:\n  - expect: {statsu: 1}\n"))
	f.Add([]byte("timeout: -1s\ncases: [{}]\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cs, err := ParseCases(data)
		if err != nil {
			if !errors.Is(err, ErrBadCases) {
				t.Fatalf("error does not wrap ErrBadCases: %v", err)
			}
			return
		}
		if len(cs.Cases) == 0 {
			t.Fatal("no cases, no error")
		}
	})
}
