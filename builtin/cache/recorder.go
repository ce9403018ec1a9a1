package cache

import (
	"bytes"
	"net/http"
)

// recorder buffers a response so it can be stored (or replaced by a stale
// entry) before the client sees it. A body larger than max is not stored:
// the recorder then writes what it has and streams the rest.
type recorder struct {
	w         http.ResponseWriter
	header    http.Header
	status    int
	buf       bytes.Buffer
	max       int
	streaming bool
}

func newRecorder(w http.ResponseWriter, max int) *recorder {
	return &recorder{w: w, header: http.Header{}, max: max}
}

func (r *recorder) Header() http.Header {
	if r.streaming {
		return r.w.Header()
	}
	return r.header
}

func (r *recorder) WriteHeader(code int) {
	if r.streaming {
		r.w.WriteHeader(code)
		return
	}
	if r.status == 0 {
		r.status = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if r.streaming {
		return r.w.Write(b)
	}
	if r.buf.Len()+len(b) > r.max {
		r.header.Set("X-Cache", "MISS")
		r.flushTo(r.w)
		r.streaming = true
		return r.w.Write(b)
	}
	return r.buf.Write(b)
}

// Flush passes flushes through once streaming; before that the response
// is being buffered.
func (r *recorder) Flush() {
	if r.streaming {
		http.NewResponseController(r.w).Flush()
	}
}

// failed reports a response a stale entry may replace.
func (r *recorder) failed() bool { return r.status >= 500 || r.status == 0 }

// flushTo writes the recorded response to w.
func (r *recorder) flushTo(w http.ResponseWriter) {
	h := w.Header()
	for k, vs := range r.header {
		h[k] = vs
	}
	status := r.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	if r.buf.Len() > 0 {
		w.Write(r.buf.Bytes())
	}
}

// teeWriter passes a response through and keeps its status and the first
// max bytes of its body (to learn what a write created).
type teeWriter struct {
	http.ResponseWriter
	status int
	buf    bytes.Buffer
	max    int
}

func (t *teeWriter) WriteHeader(code int) {
	if t.status == 0 {
		t.status = code
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *teeWriter) Write(b []byte) (int, error) {
	if t.status == 0 {
		t.status = http.StatusOK
	}
	if room := t.max - t.buf.Len(); room > 0 {
		t.buf.Write(b[:min(room, len(b))])
	}
	return t.ResponseWriter.Write(b)
}

func (t *teeWriter) Flush() { http.NewResponseController(t.ResponseWriter).Flush() }

func (t *teeWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }
