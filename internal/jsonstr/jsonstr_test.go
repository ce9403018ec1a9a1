package jsonstr

import (
	"bytes"
	"encoding/json"
	"testing"
)

func FuzzAppend(f *testing.F) {
	for _, s := range []string{"", "plain", "a<b>&c", "\"\\\n\r\t\b\f\x01\x7f", "\u2028\u2029", "\xff\xfe", "é漢"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s) // HTML-escaping, as Append with html
		if got := Append(nil, s, true); !bytes.Equal(got, want) {
			t.Fatalf("Append(%q, html)\n got %s\nwant %s", s, got, want)
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.Encode(s)
		if got := Append(nil, s, false); !bytes.Equal(got, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))) {
			t.Fatalf("Append(%q)\n got %s\nwant %s", s, got, buf.Bytes())
		}
	})
}
