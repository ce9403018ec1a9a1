package cache

import (
	"bytes"
	"context"
	"net/http"

	"github.com/omnigate/omnigate/gateway"
)

// captureStep is how much of the gateway's body budget a capture reserves
// at a time.
const captureStep = 64 << 10

// recorder buffers a response so it can be stored (or replaced by a stale
// entry) before the client sees it. A body larger than max, or one that
// does not fit the gateway's body budget, is not stored: the recorder then
// writes what it has and streams the rest.
type recorder struct {
	ctx       context.Context
	w         http.ResponseWriter
	header    http.Header
	status    int
	buf       bytes.Buffer
	max       int
	reserved  int // of the body budget
	streaming bool
}

func newRecorder(ctx context.Context, w http.ResponseWriter, max int) *recorder {
	return &recorder{ctx: ctx, w: w, header: http.Header{}, max: max}
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
	if r.buf.Len()+len(b) > r.max || !reserve(r.ctx, &r.reserved, r.buf.Len()+len(b), r.max) {
		r.header.Set("X-Cache", "MISS")
		r.flushTo(r.w)
		r.streaming = true
		return r.w.Write(b)
	}
	return r.buf.Write(b)
}

// reserve makes sure *reserved covers need bytes of a capture of at most
// limit, reserving the body budget in steps; it reports whether it does.
func reserve(ctx context.Context, reserved *int, need, limit int) bool {
	if need <= *reserved {
		return true
	}
	step := min(max(need-*reserved, captureStep), limit-*reserved)
	if step <= 0 || !gateway.TryReserveBody(ctx, int64(step)) {
		return false
	}
	*reserved += step
	return true
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
// max bytes of its body (to learn what a write created), within the
// gateway's body budget; cut says the body kept is not the whole body.
type teeWriter struct {
	http.ResponseWriter
	ctx      context.Context
	status   int
	buf      bytes.Buffer
	max      int
	reserved int
	cut      bool
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
	if !t.cut {
		keep := min(t.max-t.buf.Len(), len(b))
		if keep < len(b) || !reserve(t.ctx, &t.reserved, t.buf.Len()+keep, t.max) {
			t.cut = true
		}
		if keep > 0 && t.buf.Len()+keep <= t.reserved {
			t.buf.Write(b[:keep])
		}
	}
	return t.ResponseWriter.Write(b)
}

func (t *teeWriter) Flush() { http.NewResponseController(t.ResponseWriter).Flush() }

func (t *teeWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }
