package external

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	pb "github.com/omnigate/omnigate/sdk/external/proto"
)

func TestCheckDecision(t *testing.T) {
	reply := func(status int32, deny bool) *pb.Reply { return &pb.Reply{Status: status, Deny: deny} }
	change := func(op pb.HeaderChange_Op, name, value string) []*pb.HeaderChange {
		return []*pb.HeaderChange{{Op: op, Name: name, Value: value}}
	}
	for _, tc := range []struct {
		name     string
		d        *pb.Decision
		phase    string
		bodySent bool
		err      string
	}{
		{"continue", &pb.Decision{}, phaseRequest, false, ""},
		{"skip in request", &pb.Decision{Action: pb.Action_ACTION_SKIP_RESPONSE}, phaseRequest, false, ""},
		{"skip in response", &pb.Decision{Action: pb.Action_ACTION_SKIP_RESPONSE}, phaseResponse, false, "skip_response in the response phase"},
		{"unknown action", &pb.Decision{Action: 7}, phaseRequest, false, "unknown action 7"},
		{"stop without reply", &pb.Decision{Action: pb.Action_ACTION_STOP}, phaseRequest, false, "stop without a reply"},
		{"reply 200", &pb.Decision{Action: pb.Action_ACTION_STOP, Reply: reply(200, false)}, phaseRequest, false, ""},
		{"deny 200", &pb.Decision{Action: pb.Action_ACTION_STOP, Reply: reply(200, true)}, phaseRequest, false, "out of range 400-599"},
		{"reply 600", &pb.Decision{Action: pb.Action_ACTION_STOP, Reply: reply(600, false)}, phaseRequest, false, "out of range 200-599"},
		{"reply header with a newline", &pb.Decision{Action: pb.Action_ACTION_STOP,
			Reply: &pb.Reply{Status: 401, Headers: []*pb.Header{{Name: "X-A", Values: []string{"a\nb"}}}}}, phaseRequest, false, "value of header X-A"},
		{"set", &pb.Decision{HeaderChanges: change(pb.HeaderChange_SET, "X-A", "1")}, phaseRequest, false, ""},
		{"bad name", &pb.Decision{HeaderChanges: change(pb.HeaderChange_ADD, "X A", "1")}, phaseRequest, false, `header name "X A"`},
		{"framing header", &pb.Decision{HeaderChanges: change(pb.HeaderChange_REMOVE, "content-length", "")}, phaseResponse, false, "belongs to the gateway"},
		{"unknown op", &pb.Decision{HeaderChanges: change(9, "X-A", "")}, phaseRequest, false, "unknown header operation"},
		{"status in request", &pb.Decision{Status: 201}, phaseRequest, false, "status or body change in the request phase"},
		{"status in response", &pb.Decision{Status: 201}, phaseResponse, false, ""},
		{"status 99", &pb.Decision{Status: 99}, phaseResponse, false, "status 99 out of range"},
		{"body without body", &pb.Decision{ReplaceBody: true}, phaseResponse, false, "not given the body"},
		{"body", &pb.Decision{ReplaceBody: true}, phaseResponse, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkDecision(tc.d, tc.phase, tc.bodySent)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	min, max := 100*time.Millisecond, 2*time.Second
	for _, tc := range []struct {
		attempt int
		base    time.Duration
	}{{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {3, 800 * time.Millisecond}, {5, 2 * time.Second}, {60, 2 * time.Second}} {
		for range 20 {
			d := backoff(tc.attempt, min, max)
			if d < tc.base*8/10 || d > tc.base*12/10 {
				t.Errorf("attempt %d: %v, want %v ±20%%", tc.attempt, d, tc.base)
			}
		}
	}
}

type logSink struct{ strings.Builder }

func TestLineLogger(t *testing.T) {
	var out logSink
	l := newLineLogger(slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug})), "stderr", 2)
	for _, chunk := range []string{
		`{"level":"WARN","msg":"from slog","b":2,"a":1,"plugin":"x","time":"t"}` + "\n",
		`{"@level":"debug","@message":"from hclog","@timestamp":"t","k":"v"}` + "\n{\"not\":\"a log record\"}\n",
		"plain ", "line in pieces\r\n\n",
		"panic: boom\n", "goroutine 1 [running]:\n",
	} {
		l.Write([]byte(chunk))
	}
	want := []string{
		`"level":"WARN","msg":"from slog","stream":"stderr","a":1,"b":2}`,
		`"level":"DEBUG","msg":"from hclog","stream":"stderr","k":"v"}`,
		`"level":"INFO","msg":"plugin output","stream":"stderr","line":"{\"not\":\"a log record\"}"}`,
		`"level":"INFO","msg":"plugin output","stream":"stderr","line":"plain line in pieces"}`,
		`"level":"ERROR","msg":"plugin output","stream":"stderr","line":"panic: boom"}`,
		`"level":"ERROR","msg":"plugin output","stream":"stderr","line":"goroutine 1 [running]:"}`,
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d records, want %d:\n%s", len(lines), len(want), out.String())
	}
	for i, w := range want {
		if !strings.HasSuffix(lines[i], w) {
			t.Errorf("record %d:\n got %s\nwant …%s", i, lines[i], w)
		}
	}
	if got := l.tail(); len(got) != 2 || got[0] != "panic: boom" {
		t.Errorf("tail %q", got)
	}
	long := strings.Repeat("x", maxLine+10)
	out.Reset()
	l.Write([]byte(long + "\n"))
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Errorf("a line over %d bytes gave %d records, want 2", maxLine, n)
	}
}

func FuzzLineLogger(f *testing.F) {
	for _, s := range []string{`{"msg":"m","level":"error","x":[1,{"y":null}]}` + "\n", "a\nb\r\n", "{", `{"msg":1}` + "\n", "panic: x\n"} {
		f.Add([]byte(s))
	}
	l := newLineLogger(slog.New(slog.DiscardHandler), "stderr", 4)
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, err := l.Write(b); n != len(b) || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
	})
}
