package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestReport(t *testing.T) {
	in := `{"Action":"run","Package":"a","Test":"TestFast"}
{"Action":"output","Package":"a","Test":"TestFast","Output":"=== RUN   TestFast\n"}
{"Action":"pass","Package":"a","Test":"TestFast","Elapsed":0.1}
{"Action":"output","Package":"a","Test":"TestSlow","Output":"noise of a passing test\n"}
{"Action":"pass","Package":"a","Test":"TestSlow","Elapsed":42.5}
{"Action":"pass","Package":"a","Test":"TestSlow/sub","Elapsed":40}
{"Action":"pass","Package":"a","Elapsed":43}
{"Action":"output","Package":"b","Test":"TestBroken","Output":"    b_test.go:9: want 1, got 2\n"}
{"Action":"fail","Package":"b","Test":"TestBroken","Elapsed":1.5}
{"Action":"output","Package":"b","Output":"FAIL\n"}
{"Action":"fail","Package":"b","Elapsed":2}
`
	var out bytes.Buffer
	code := report(strings.NewReader(in), &out, 1)
	s := out.String()
	for _, want := range []string{"ok   a 43.0s", "b_test.go:9: want 1, got 2", "FAIL b 2.0s", "slowest tests:\n    42.5s  a TestSlow\n", "\nFAIL in "} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
	if code != 1 || strings.Contains(s, "noise of a passing test") || strings.Contains(s, "TestFast\n") {
		t.Errorf("exit %d, report:\n%s", code, s)
	}
	out.Reset()
	if code := report(strings.NewReader(`{"Action":"pass","Package":"a","Elapsed":1}`+"\n"), &out, 5); code != 0 || !strings.Contains(out.String(), "PASS in") {
		t.Errorf("passing run: %d %s", code, out.String())
	}
}
