package external

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// maxLine caps one logged line of plugin output; longer ones are split.
const maxLine = 16 << 10

// lineLogger turns what a plugin writes to one of its streams into gateway
// log records, a line each. JSON lines with a level and a message (slog's
// "level"/"msg", hclog's "@level"/"@message") keep their level and fields;
// other lines are logged at info, or at error from a Go panic or fatal
// error on. It keeps the last few lines for start errors.
type lineLogger struct {
	log    *slog.Logger
	stream string

	mu      sync.Mutex
	buf     []byte
	inPanic bool
	keep    int
	last    []string
}

func newLineLogger(l *slog.Logger, stream string, keep int) *lineLogger {
	return &lineLogger{log: l, stream: stream, keep: keep}
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.buf = append(l.buf, p...)
			if len(l.buf) >= maxLine {
				l.emit(l.buf)
				l.buf = l.buf[:0]
			}
			break
		}
		l.buf = append(l.buf, p[:i]...)
		l.emit(l.buf)
		l.buf = l.buf[:0]
		p = p[i+1:]
	}
	return n, nil
}

// tail returns the last lines kept.
func (l *lineLogger) tail() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.last...)
}

func (l *lineLogger) emit(b []byte) {
	for len(b) > maxLine {
		l.emitLine(b[:maxLine])
		b = b[maxLine:]
	}
	l.emitLine(b)
}

func (l *lineLogger) emitLine(b []byte) {
	b = bytes.TrimRight(b, "\r")
	if len(bytes.TrimSpace(b)) == 0 {
		return
	}
	line := string(b)
	if l.keep > 0 {
		if len(l.last) == l.keep {
			l.last = append(l.last[:0], l.last[1:]...)
		}
		l.last = append(l.last, line)
	}
	if b[0] == '{' {
		if l.emitJSON(b) {
			return
		}
	}
	level := slog.LevelInfo
	if strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ") {
		l.inPanic = true
	}
	if l.inPanic {
		level = slog.LevelError
	}
	l.log.LogAttrs(context.Background(), level, "plugin output",
		slog.String("stream", l.stream), slog.String("line", line))
}

// emitJSON logs a structured line; it reports false for JSON it does not
// recognize as a log record.
func (l *lineLogger) emitJSON(b []byte) bool {
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return false
	}
	msg, ok := pick(m, "msg", "@message")
	if !ok {
		return false
	}
	lvl, _ := pick(m, "level", "@level")
	attrs := make([]slog.Attr, 0, len(m)+1)
	attrs = append(attrs, slog.String("stream", l.stream))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch k {
		case "msg", "@message", "level", "@level", "time", "@timestamp", "@module", "plugin":
			continue
		}
		attrs = append(attrs, slog.Any(k, m[k]))
	}
	l.log.LogAttrs(context.Background(), parseLevel(lvl), fmt.Sprint(msg), attrs...)
	return true
}

func pick(m map[string]any, keys ...string) (any, bool) {
	for _, k := range keys {
		if v, ok := m[k]; ok {
			return v, true
		}
	}
	return nil, false
}

func parseLevel(v any) slog.Level {
	s, _ := v.(string)
	switch strings.ToLower(s) {
	case "trace", "debug":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error", "fatal", "panic":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// hcLogger is the hclog.Logger go-plugin gets. Its own messages are
// logged at debug (the plugin logs its events itself); the exit status of
// the process is kept for the restart message. The sub-logger go-plugin
// names after the executable, through which it would relay the plugin's
// stderr a second time, is off: the lineLogger relays it.
type hcLogger struct {
	log  *slog.Logger
	bin  string
	pr   *process
	name string
	off  bool
	args []any
}

var _ hclog.Logger = (*hcLogger)(nil)

func newHCLogger(l *slog.Logger, bin string, pr *process) *hcLogger {
	return &hcLogger{log: l, bin: bin, pr: pr, name: "go-plugin"}
}

func (h *hcLogger) Log(level hclog.Level, msg string, args ...any) {
	if h.off {
		return
	}
	if msg == "plugin process exited" {
		status := "exit status 0"
		for i := 0; i+1 < len(args); i += 2 {
			if args[i] == "error" {
				status = fmt.Sprint(args[i+1])
			}
		}
		h.pr.exit.Store(&status)
	}
	if !h.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	all := append(append([]any{"source", h.name, "level", level.String()}, h.args...), args...)
	h.log.Debug(msg, all...)
}

func (h *hcLogger) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hcLogger) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hcLogger) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hcLogger) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hcLogger) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *hcLogger) IsTrace() bool { return false }
func (h *hcLogger) IsDebug() bool { return !h.off }
func (h *hcLogger) IsInfo() bool  { return !h.off }
func (h *hcLogger) IsWarn() bool  { return !h.off }
func (h *hcLogger) IsError() bool { return !h.off }

func (h *hcLogger) ImpliedArgs() []any { return h.args }

func (h *hcLogger) With(args ...any) hclog.Logger {
	c := *h
	c.args = append(append([]any(nil), h.args...), args...)
	return &c
}

func (h *hcLogger) Name() string { return h.name }

func (h *hcLogger) Named(name string) hclog.Logger {
	c := *h
	c.name = h.name + "." + name
	if name == h.bin {
		c.off = true
	}
	return &c
}

func (h *hcLogger) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	c.off = name == h.bin
	return &c
}

func (h *hcLogger) SetLevel(hclog.Level) {}

func (h *hcLogger) GetLevel() hclog.Level {
	if h.off {
		return hclog.Off
	}
	return hclog.Debug
}

func (h *hcLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *hcLogger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer { return io.Discard }
