package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestAccessLogLinesAreJSON(t *testing.T) {
	var out bytes.Buffer
	a := newAccessLog(&out, "json")
	weird := "/fhir/R4/a\"b\\c\x01\n\t\xffé☃"
	a.log(time.Date(2026, 11, 26, 1, 2, 3, 4000, time.UTC), &entry{requestID: "r1", method: "GET", route: "fhir",
		path: weird, status: 200, bytes: 42, dur: 1500 * time.Microsecond, user: "u\"1", remote: "127.0.0.1:5"})
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	want := map[string]any{"time": "2026-11-26T01:02:03.000004Z", "level": "INFO", "msg": "request", "request_id": "r1",
		"method": "GET", "route": "fhir", "path": strings.ToValidUTF8(weird, "\uFFFD"), "status": 200.0, "bytes": 42.0,
		"duration_ms": 1.5, "user": "u\"1", "remote": "127.0.0.1:5"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	if !strings.HasSuffix(out.String(), "}\n") || strings.Count(out.String(), "\n") != 1 {
		t.Errorf("not one line: %q", out.String())
	}
}

func TestAccessLogText(t *testing.T) {
	var out bytes.Buffer
	newAccessLog(&out, "text").log(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), &entry{requestID: "r1", method: "GET",
		route: "my route", path: "/a", status: 404, user: "", remote: "1.2.3.4:5"})
	want := `time=2026-01-02T03:04:05Z level=INFO msg=request request_id=r1 method=GET route="my route" path=/a status=404 bytes=0 duration_ms=0 user="" remote=1.2.3.4:5` + "\n"
	if out.String() != want {
		t.Errorf("got  %q\nwant %q", out.String(), want)
	}
}

// TestAccessLogThroughServer checks the production path (LogOutput, the
// buffered line encoder): one line per request, flushed at shutdown, no
// secrets.
func TestAccessLogThroughServer(t *testing.T) {
	cfg, err := Parse("t.yaml", []byte("plugins:\n  who: {type: recorder, label: whoami}\nroutes:\n  - fhir: true\n    plugins: [who]\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	out := &logBuffer{}
	srv, err := New(context.Background(), cfg, Options{LogOutput: out})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/fhir/R4/Patient?name=Jane+Doe", nil)
	req.Header.Set("Authorization", "Bearer sekrit-token-value")
	req.Header.Set("X-User", "7")
	srv.ServeHTTP(httptest.NewRecorder(), req)
	srv.Shutdown(context.Background()) // flushes the buffer
	var line map[string]any
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.Contains(l, `"msg":"request"`) {
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatalf("bad line %q: %v", l, err)
			}
		}
	}
	if line == nil || line["user"] != "u-7" || line["path"] != "/fhir/R4/Patient" || line["status"] != 200.0 {
		t.Fatalf("access line %v in\n%s", line, out)
	}
	if strings.Contains(out.String(), "sekrit") || strings.Contains(out.String(), "Jane") {
		t.Errorf("secret or query in the log:\n%s", out)
	}
}

func BenchmarkAccessLog(b *testing.B) {
	a := newAccessLog(discardW{}, "json")
	e := &entry{requestID: "NJRVFBKU331C1614-1", method: "GET", route: "fhir", path: "/fhir/R4/Patient/example",
		status: 200, bytes: 300, dur: 812 * time.Microsecond, user: "alice", remote: "127.0.0.1:40000"}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		a.log(now, e)
	}
}

type discardW struct{}

func (discardW) Write(p []byte) (int, error) { return len(p), nil }
