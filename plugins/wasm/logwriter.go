package wasm

import (
	"bytes"
	"context"
	"log/slog"
)

// lineWriter logs what a guest writes to stdout or stderr, a line per
// record, tagged with the stream. Lines longer than maxLogLine are cut.
// Lines over the plugin's log rate are dropped, and counted. An instance
// runs one call at a time, so it needs no lock.
type lineWriter struct {
	log    *slog.Logger
	limit  *logLimiter
	stream string
	level  slog.Level
	buf    []byte
}

func newLineWriter(log *slog.Logger, limit *logLimiter, stream string) *lineWriter {
	level := slog.LevelInfo
	if stream == "stderr" {
		level = slog.LevelWarn
	}
	return &lineWriter{log: log, limit: limit, stream: stream, level: level}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if room := maxLogLine - len(w.buf); room > 0 {
				w.buf = append(w.buf, p[:min(room, len(p))]...)
			}
			break
		}
		if room := maxLogLine - len(w.buf); room > 0 {
			w.buf = append(w.buf, p[:min(room, i)]...)
		}
		w.emit()
		p = p[i+1:]
	}
	return n, nil
}

func (w *lineWriter) emit() {
	if w.log.Enabled(context.Background(), w.level) && w.limit.allow() {
		w.log.Log(context.Background(), w.level, string(w.buf), slog.String("stream", w.stream))
	}
	w.buf = w.buf[:0]
}

// Flush logs a partial last line.
func (w *lineWriter) Flush() {
	if len(w.buf) > 0 {
		w.emit()
	}
}
