package wasm

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestEcho(t *testing.T) {
	p, logs, reg := newPlugin(t, guest(t, "testguest"), nil)
	w := serve(p, "GET", "/fhir/R4/Patient/p1/Observation", withHeader("X-Test", "echo"))
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	want := map[string]string{
		"X-Seen-Method": "GET", "X-Seen-Path": "/fhir/R4/Patient/p1/Observation", "X-Seen-Route": "fhir",
		"X-Seen-User": "u1/nurse", "X-Seen-FHIR": "search-type Observation  Patient/p1", "X-Hits": "1",
	}
	for k, v := range want {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	w = serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "echo"))
	if got := w.Header().Get("X-Hits"); got != "2" {
		t.Errorf("second X-Hits = %q", got)
	}
	if !strings.Contains(logs.String(), `"msg":"echo /fhir/R4/Patient/p1"`) {
		t.Errorf("guest log missing:\n%s", logs)
	}
	if got := counterValue(t, reg, MetricCounter, map[string]string{"plugin": "test", "name": "echoes"}); got != 2 {
		t.Errorf("echoes counter = %v", got)
	}
}

func TestFailures(t *testing.T) {
	for _, tc := range []struct{ name, kind, log string }{
		{"panic", "trap", "testguest panics"},
		{"trap", "trap", "nil pointer dereference"},
		{"loop", "deadline", "deadline exceeded"},
		{"membomb", "trap", "out of memory"},
		{"deadlock", "trap", "deadlock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, logs, reg := newPlugin(t, guest(t, "testguest"), func(o *Options) {
				// membomb is stopped by the cap, never by the (generous)
				// deadline; a small cap keeps its growing memory, copied
				// on each growth, quick to fill under the race detector.
				o.MemoryLimit = 16 << 20
				if tc.name == "loop" {
					o.Timeout = 20 * time.Millisecond // it loops forever: cut at any deadline
				}
			})
			w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", tc.name))
			if w.Code != http.StatusInternalServerError || !strings.Contains(w.Body.String(), "OperationOutcome") {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": tc.kind}); got != 1 {
				t.Errorf("failures{kind=%s} = %v\n%s", tc.kind, got, logs)
			}
			// The calls below are not about the deadline: give them a
			// generous one. No other goroutine reads the timeout here (the
			// replacement instance starts under StartTimeout).
			p.opts.Timeout = generousTimeout
			// The gateway keeps serving: every instance still answers.
			for i := 0; i < 4; i++ {
				if w := serve(p, "GET", "/fhir/R4/Patient/p1"); w.Code != 200 {
					t.Fatalf("after %s: status %d: %s", tc.name, w.Code, w.Body)
				}
			}
			if !strings.Contains(logs.String(), tc.log) {
				t.Errorf("log lacks %q:\n%s", tc.log, logs)
			}
		})
	}
}
