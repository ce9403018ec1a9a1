package gateway

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestNodeJSON(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want, err string
	}{
		{name: "absent", want: "null"},
		{name: "mapping", yaml: "{header: X-Tenant, status: 401, list: [a, 1, true]}", want: `{"header":"X-Tenant","list":["a",1,true],"status":401}`},
		{name: "scalar", yaml: "hello", want: `"hello"`},
		{name: "non-string keys", yaml: "{1: a}", err: "cannot be given as JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n yaml.Node
			if tc.yaml != "" {
				var doc yaml.Node
				if err := yaml.Unmarshal([]byte(tc.yaml), &doc); err != nil {
					t.Fatal(err)
				}
				n = *doc.Content[0]
			}
			got, err := NodeJSON(&n)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %s %v, want %s", got, err, tc.want)
			}
		})
	}
}
