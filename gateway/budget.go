package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// ErrBodyBudget is the error of a request body read, of ReadBody and of
// ReserveBody when the server's body budget (server.body_budget) is spent.
// A request whose body read fails with it is answered 503 with
// Retry-After by the gateway, whatever the handler then writes (an
// OperationOutcome on FHIR routes).
var ErrBodyBudget = errors.New("gateway: body memory budget exhausted")

// budgetRetryAfter is the Retry-After of answers refused for want of
// memory or capacity: the storm that caused it is usually short.
const budgetRetryAfter = "1"

// budgetWait bounds how long a request waits for room in the body budget
// (see bodyBudget).
const budgetWait = 10 * time.Second

// bodyBudget is the server's byte semaphore for buffered bodies: request
// bodies read into memory, response bodies captured by plugins, the
// working memory of decoding bodies. Every route, plugin and handler of
// the server draws on it.
//
// When an acquire does not fit, one request at a time may wait for room
// (until its context ends, at most wait); while it waits, every
// other acquire that would need room fails at once, so the requests
// holding the budget fail and give it back, or finish, instead of all
// waiting on each other or all failing: under a storm of large bodies one
// gets through at a time and the others get 503 early.
type bodyBudget struct {
	mu      sync.Mutex
	limit   atomic.Int64  // 0: no limit
	used    atomic.Int64  // changed under mu
	waiting bool          // a request waits for room
	room    chan struct{} // closed on release while a request waits
	wait    time.Duration // the longest wait; 0: acquires never wait
	// refused counts acquires that did not fit.
	refused atomic.Int64
}

// acquire takes n bytes, waiting for room when mayWait and no other
// request waits.
func (b *bodyBudget) acquire(ctx context.Context, n int64, mayWait bool) bool {
	b.mu.Lock()
	lim := b.limit.Load()
	if lim == 0 || !b.waiting && b.used.Load()+n <= lim {
		b.used.Add(n)
		b.mu.Unlock()
		return true
	}
	if !mayWait || b.waiting || ctx == nil || b.wait <= 0 {
		b.mu.Unlock()
		b.refused.Add(1)
		return false
	}
	b.waiting = true
	timer := time.NewTimer(b.wait)
	defer timer.Stop()
	for {
		if lim := b.limit.Load(); lim == 0 || b.used.Load()+n <= lim {
			b.used.Add(n)
			b.waiting = false
			b.mu.Unlock()
			return true
		}
		if b.room == nil {
			b.room = make(chan struct{})
		}
		room := b.room
		b.mu.Unlock()
		expired := false
		select {
		case <-room:
		case <-ctx.Done():
			expired = true
		case <-timer.C:
			expired = true
		}
		b.mu.Lock()
		if expired {
			b.waiting = false
			b.mu.Unlock()
			b.refused.Add(1)
			return false
		}
	}
}

func (b *bodyBudget) release(n int64) {
	b.mu.Lock()
	b.used.Add(-n)
	if b.room != nil {
		close(b.room)
		b.room = nil
	}
	b.mu.Unlock()
}

// reservation is what one request holds of the budget. It is released as
// a whole when the request ends; what is charged after that is not
// counted. A request never holds more than three quarters of the budget:
// what it asks beyond that is granted without being counted, so that one
// large request gets through while small ones hold the rest.
type reservation struct {
	mu   sync.Mutex
	b    *bodyBudget
	ctx  context.Context // the request's: waiting for room ends with it
	n    int64
	done bool
	// over is set when memory the request cannot do without did not fit:
	// it is answered 503, and every later charge fails.
	over atomic.Bool
}

// grow charges n more bytes. A charge the request must have may wait for
// room (see bodyBudget) and, when it fails, fails the request; one it can
// do without neither waits nor fails the request.
func (r *reservation) grow(n int64, must bool) error {
	if r == nil || n <= 0 {
		return nil
	}
	if r.over.Load() {
		return ErrBodyBudget
	}
	r.mu.Lock()
	if r.done || r.b == nil {
		r.mu.Unlock()
		return nil
	}
	if share := r.b.limit.Load() / 4 * 3; share > 0 && r.n+n > share {
		if n = share - r.n; n <= 0 {
			r.mu.Unlock()
			return nil
		}
	}
	r.mu.Unlock()
	if !r.b.acquire(r.ctx, n, must) {
		if must {
			r.over.Store(true)
		}
		return ErrBodyBudget
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done { // the request ended meanwhile
		r.b.release(n)
		return nil
	}
	r.n += n
	return nil
}

// end releases the reservation and returns how much it held.
func (r *reservation) end() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.n
	if r.b != nil && n > 0 {
		r.b.release(n)
	}
	r.n, r.done = 0, true
	return n
}

// chargeStep is how much a body read reserves at a time when it does not
// know how much is coming.
const chargeStep = 64 << 10

// requestBody is a request body as the chain sees it: what ReadBody
// buffered (shared by every later ReadBody), then what the client has not
// sent yet. Reads that copy its bytes out are charged to the request's
// reservation as they go (the reader may keep them); a streaming terminal
// (the upstream proxy) reads free.
type requestBody struct {
	st     *reqState // nil: nothing is charged
	buf    []byte    // buffered by ReadBody
	off    int
	src    io.ReadCloser // the rest; nil once read to its end
	remain int64         // bytes src still declares, -1 unknown
	err    error         // src's error, given again to every reader
	credit int64         // charged and not yet read
	closer io.Closer
}

func newRequestBody(st *reqState, src io.ReadCloser, contentLength int64) *requestBody {
	return &requestBody{st: st, src: src, remain: contentLength, closer: src}
}

func (b *requestBody) charged() bool {
	return b.st != nil && !b.st.streamBody.Load()
}

// allow charges for a read of up to want bytes, of which at most known
// are left (-1: unknown), and returns how many may be read.
func (b *requestBody) allow(want int, known int64) (int, error) {
	if !b.charged() {
		return want, nil
	}
	if b.credit == 0 {
		step := int64(chargeStep)
		if known >= 0 {
			step = min(known, max(int64(want), chargeStep))
		}
		if step == 0 {
			return want, nil // at the end: the read gives EOF
		}
		if err := b.st.res.grow(step, true); err != nil {
			b.err = err // every later reader fails too: the request is refused
			return 0, err
		}
		b.credit = step
	}
	return int(min(int64(want), b.credit)), nil
}

func (b *requestBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if b.off < len(b.buf) {
		n, err := b.allow(len(p), int64(len(b.buf)-b.off))
		if err != nil {
			return 0, err
		}
		n = copy(p[:n], b.buf[b.off:])
		b.off += n
		b.spend(n)
		return n, nil
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.src == nil {
		return 0, io.EOF
	}
	n, err := b.allow(len(p), b.remain)
	if err != nil {
		return 0, err
	}
	n, err = b.src.Read(p[:n])
	b.spend(n)
	if b.remain >= 0 {
		b.remain = max(0, b.remain-int64(n))
	}
	switch {
	case err == io.EOF:
		b.src = nil
	case err != nil:
		b.err = err
	}
	return n, err
}

func (b *requestBody) spend(n int) {
	if b.charged() {
		b.credit = max(0, b.credit-int64(n))
	}
}

// Close closes the client's body.
func (b *requestBody) Close() error {
	if b.closer == nil {
		return nil
	}
	return b.closer.Close()
}

// ReadBody reads the whole request body into memory, within limit bytes
// (none with limit < 0; the route's max_body applies anyway), and puts it
// back so the next handler reads the same bytes. The buffer is charged to
// the server's body budget until the request ends, once: later calls of
// ReadBody on the same request return the same bytes without copying or
// charging them again. The caller must not modify them.
//
// Errors: *http.MaxBytesError over limit (413 for the caller to answer; the
// body stays whole for the next reader), ErrBodyBudget when the budget is
// spent (the gateway answers 503), or the client's read error (the next
// reader gets what was read, then the same error).
func ReadBody(ctx context.Context, r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	b, ok := r.Body.(*requestBody)
	if !ok {
		// Replaced by a plugin: buffer what it gives.
		b = &requestBody{st: stateFrom(ctx), src: r.Body, remain: -1, closer: r.Body}
		if r.ContentLength >= 0 {
			b.remain = r.ContentLength
		}
		r.Body = b
	}
	if b.off > 0 {
		b.buf, b.off = b.buf[b.off:], 0
	}
	if b.src == nil && b.err == nil {
		if limit >= 0 && int64(len(b.buf)) > limit {
			return nil, &http.MaxBytesError{Limit: limit}
		}
		return b.buf, nil
	}
	if b.err != nil {
		return nil, b.err
	}
	if limit >= 0 && b.remain > limit-int64(len(b.buf)) {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	if err := b.fill(limit); err != nil {
		return nil, err
	}
	if r.ContentLength < 0 {
		r.ContentLength = int64(len(b.buf))
	}
	return b.buf, nil
}

// fill reads src to its end into buf, charging buf's growth as it goes:
// a client that sends slowly holds little of the budget.
func (b *requestBody) fill(limit int64) error {
	// Credit charged by earlier reads for bytes not read yet counts
	// towards the buffer.
	credit := b.credit
	b.credit = 0
	charge := func(n int64) error {
		use := min(n, credit)
		credit -= use
		if b.st == nil {
			return nil
		}
		if err := b.st.res.grow(n-use, true); err != nil {
			b.err = err // every later reader fails too: the request is refused
			return err
		}
		return nil
	}
	buf := b.buf
	for {
		if len(buf) == cap(buf) {
			// Grow: double, from fillStart, up to what src declares
			// (plus one byte to see its end) and the caller's limit.
			size := max(2*int64(cap(buf)), fillStart)
			if end := int64(len(buf)) + b.remain + 1; b.remain >= 0 && end > int64(cap(buf)) {
				size = min(size, end)
			}
			if limit >= 0 {
				size = min(size, limit+1)
			}
			if size <= int64(cap(buf)) {
				b.buf = buf
				return &http.MaxBytesError{Limit: limit}
			}
			if err := charge(size - int64(cap(buf))); err != nil {
				b.buf = buf
				return err
			}
			nb := make([]byte, len(buf), size)
			copy(nb, buf)
			buf = nb
		}
		n, err := b.src.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if b.remain >= 0 {
			b.remain = max(0, b.remain-int64(n))
		}
		if err == io.EOF {
			b.buf, b.src = buf, nil
			return nil
		}
		if err != nil {
			b.buf, b.err = buf, err
			return err
		}
		if limit >= 0 && int64(len(buf)) > limit {
			// Over the caller's limit: the body stays whole for others.
			b.buf = buf
			return &http.MaxBytesError{Limit: limit}
		}
	}
}

// fillStart is the first buffer of a body read whole.
const fillStart = 64 << 10

// ReserveBody charges n bytes of memory that the request in ctx cannot do
// without (the working memory of decoding its body, say) to the server's
// body budget, until the request ends. When they do not fit it returns
// ErrBodyBudget and the request is answered 503 with Retry-After by the
// gateway, as when its body does not fit. Outside a request served by the
// gateway it charges nothing.
func ReserveBody(ctx context.Context, n int64) error {
	st := stateFrom(ctx)
	if st == nil {
		return nil
	}
	return st.res.grow(n, true)
}

// TryReserveBody charges n bytes of memory that the request in ctx can do
// without (a copy of the response kept to cache it) to the server's body
// budget, until the request ends, and reports whether they fit; when they
// do not, the caller does without and the request goes on.
func TryReserveBody(ctx context.Context, n int64) bool {
	st := stateFrom(ctx)
	return st == nil || st.res.grow(n, false) == nil
}

// Returning memory after bursts. The Go runtime keeps the heap it grew to
// for a while after a burst of large bodies (it shrinks its goal only at
// the next collection, which an idle process makes every two minutes).
// Once trimAfter bytes of bodies have been released and the budget is
// mostly free again (the burst is over), the gateway collects and returns
// the free memory to the operating system, at most once every trimEvery.
const (
	trimAfter = 64 << 20
	trimEvery = 5 * time.Second
)

// trimmer schedules those collections.
type trimmer struct {
	released  atomic.Int64 // bytes released since the last trim
	scheduled atomic.Bool
	last      atomic.Int64 // unix nanoseconds of the last trim
	count     atomic.Int64 // trims made
}

// bodiesReleased is told how much a request held of the body budget when
// it ended.
func (s *Server) bodiesReleased(n int64) {
	t := &s.trim
	if t.released.Add(n) < trimAfter {
		return
	}
	if lim := s.budget.limit.Load(); lim > 0 && s.budget.used.Load() > lim/4 {
		return // still busy: the request that ends the burst trims
	}
	if !t.scheduled.CompareAndSwap(false, true) {
		return
	}
	wait := time.Until(time.Unix(0, t.last.Load()).Add(trimEvery))
	time.AfterFunc(max(wait, 0), func() {
		t.released.Store(0)
		debug.FreeOSMemory()
		t.last.Store(time.Now().UnixNano())
		t.count.Add(1)
		t.scheduled.Store(false)
	})
}
