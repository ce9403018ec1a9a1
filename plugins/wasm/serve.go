package wasm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasm/abi"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// Phases of a request, as the host functions see them.
const (
	phaseStart    = 0
	phaseRequest  = 1
	phaseResponse = 2
)

// exchange is one request as the guest sees it: what it reads and the
// local reply or response changes it asks for. Exchanges are pooled.
type exchange struct {
	p     *Plugin
	w     http.ResponseWriter
	r     *http.Request
	phase int

	fhirDone bool
	fhirOK   bool
	fhir     fhirreq.Request

	reqBody     []byte
	reqBodyErr  int32 // 0, or abi.ErrAbsent / abi.ErrTooLarge
	reqBodyRead bool
	// guestBody: the guest asked for the request body (PhaseRequestBody).
	// The host also reads the body of a batch for the interactions
	// property, which does not give it to a guest that did not ask.
	guestBody bool

	// The interactions property, worked out on first use.
	interDone bool
	interCode int32
	inter     []byte

	// Local reply.
	replied     bool
	replyStatus int
	replyBody   []byte
	replyHeader http.Header
	denyMsg     string
	deny        bool

	// callErr fails the running call whatever the guest returns (a reply
	// over its size limit).
	callErr error
	// failedCall: a call of this request failed in the guest; neutral: a
	// call could not be made (no free instance, the client went away).
	// For the circuit breaker.
	failedCall bool
	neutral    bool

	// Response phase.
	bw          *bufferWriter
	respBody    []byte
	respTooBig  bool
	extractKey  string
	extractJSON []byte
}

var exchanges = sync.Pool{New: func() any { return new(exchange) }}

func (ex *exchange) reset() {
	*ex = exchange{reqBody: ex.reqBody[:0], inter: ex.inter[:0], respBody: nil}
}

// tooLarge fails the running call: the guest handed the host more than
// limit bytes (n) as what.
func (ex *exchange) tooLarge(what string, n, limit int64) {
	ex.callErr = fmt.Errorf("%w: %s of %d bytes exceeds the limit of %d", errTooLarge, what, n, limit)
}

// fhirRequest parses the FHIR interaction once, on FHIR routes only.
func (ex *exchange) fhirRequest() (fhirreq.Request, bool) {
	if !ex.fhirDone {
		ex.fhirDone = true
		if info, ok := gateway.RouteFrom(ex.r.Context()); ok && info.FHIR {
			ex.fhir, ex.fhirOK = fhirreq.Parse(ex.r.Method, ex.r.URL.Path, basePath(info.Pattern))
		}
	}
	return ex.fhir, ex.fhirOK
}

// basePath is the literal prefix of a route pattern: "/fhir/R4" for
// "/fhir/R4/*path".
func basePath(pattern string) string {
	for i := 0; i < len(pattern); i++ {
		if pattern[i] == ':' || pattern[i] == '*' {
			pattern = pattern[:i]
			break
		}
	}
	for len(pattern) > 1 && pattern[len(pattern)-1] == '/' {
		pattern = pattern[:len(pattern)-1]
	}
	return pattern
}

// readRequestBody buffers the request body up to the cap, before the
// request phase, so that no guest call waits on the network. A larger body
// is left to stream on, and the guest is told it is too large.
func (ex *exchange) readRequestBody() {
	r := ex.r
	ex.reqBodyRead = true
	if r.Body == nil || r.Body == http.NoBody || ex.p.opts.MaxRequestBody < 0 {
		ex.reqBodyErr = abi.ErrAbsent
		return
	}
	max := ex.p.opts.MaxRequestBody
	if r.ContentLength > max {
		ex.reqBodyErr = abi.ErrTooLarge
		return
	}
	buf := bytes.NewBuffer(ex.reqBody[:0])
	_, err := buf.ReadFrom(io.LimitReader(r.Body, max+1))
	ex.reqBody = buf.Bytes()
	rest := r.Body
	switch {
	case err != nil:
		// The client's body failed; let the next handler see the error.
		ex.reqBodyErr = abi.ErrAbsent
		r.Body = readCloser{io.MultiReader(bytes.NewReader(bytes.Clone(ex.reqBody)), errReader{err}), rest}
	case int64(len(ex.reqBody)) > max:
		ex.reqBodyErr = abi.ErrTooLarge
		r.Body = readCloser{io.MultiReader(bytes.NewReader(bytes.Clone(ex.reqBody)), rest), rest}
	default:
		r.Body = readCloser{bytes.NewReader(bytes.Clone(ex.reqBody)), rest}
	}
}

type readCloser struct {
	io.Reader
	io.Closer
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// ServeHTTP runs the guest's request handler, then the rest of the chain,
// then, when the guest has one, its response handler on the buffered
// response.
//
// While the circuit breaker is open the guest is not called: the request
// gets the failure mode at once (503 with Retry-After when failing closed).
func (p *Plugin) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	t, wait, ok := p.breaker.allow()
	if !ok {
		p.rejected(w, r, next, wait)
		return
	}
	m := p.acquire()
	if m == nil {
		p.breaker.done(t, neutral)
		p.failed(w, r, next, phaseRequest, errors.New("plugin closed"))
		return
	}
	defer m.release()
	ex := exchanges.Get().(*exchange)
	defer func() {
		o := success
		switch {
		case ex.failedCall:
			o = failure
		case ex.neutral:
			o = neutral
		}
		p.breaker.done(t, o)
		ex.reset()
		exchanges.Put(ex)
	}()
	ex.p, ex.w, ex.r = p, w, r
	if m.phases&abi.PhaseRequest != 0 && m.phases&abi.PhaseRequestBody != 0 {
		ex.guestBody = true
		ex.readRequestBody()
	} else if ex.isBundlePost() {
		// The entries of a batch or transaction, for the interactions
		// property in either phase: read before the rest of the chain
		// takes the body, and put back for it.
		ex.readRequestBody()
	}
	if m.phases&abi.PhaseRequest != 0 {
		action, err := m.run(ex, phaseRequest)
		if err != nil {
			p.failed(w, r, next, phaseRequest, err)
			return
		}
		switch action {
		case abi.ActionStop:
			p.metrics.reqStop.Inc()
			ex.writeReply(w, r)
			return
		case abi.ActionSkipResponse:
			p.metrics.reqContinue.Inc()
			next.ServeHTTP(w, r)
			return
		}
		p.metrics.reqContinue.Inc()
	}
	if m.phases&abi.PhaseResponse == 0 || p.opts.MaxResponseBody < 0 {
		next.ServeHTTP(w, r)
		return
	}
	bp := respBufs.Get().(*[]byte)
	bw := &bufferWriter{w: w, ex: ex, m: m, max: p.opts.MaxResponseBody, buf: (*bp)[:0]}
	ex.bw = bw
	next.ServeHTTP(bw, r)
	bw.finish()
	if bw.buf != nil && cap(bw.buf) <= 1<<20 {
		*bp = bw.buf[:0]
		respBufs.Put(bp)
	}
}

// respBufs recycles response buffers of the response phase.
var respBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// run calls the guest's handler for phase on a pooled instance.
func (m *module) run(ex *exchange, phase int) (uint32, error) {
	in, err := m.pool.get(ex.r.Context())
	if err != nil {
		ex.neutral = true
		return 0, err
	}
	in.ex, ex.phase, ex.callErr = ex, phase, nil
	fn := in.onReq
	if phase == phaseResponse {
		fn = in.onResp
	}
	action, err := in.call(fn, m.p.opts.Timeout, m.p.opts.WallTimeout)
	if err == nil && ex.callErr != nil {
		err = ex.callErr
	}
	if err != nil {
		ex.failedCall = true
		m.pool.discard(in)
		return 0, err
	}
	m.pool.put(in)
	switch {
	case action == abi.ActionStop && !ex.replied:
		ex.failedCall = true
		return 0, errors.New("guest returned stop without setting a reply: " + errBadAction.Error())
	case action > abi.ActionSkipResponse, action == abi.ActionSkipResponse && phase != phaseRequest:
		ex.failedCall = true
		return 0, errBadAction
	}
	return action, nil
}

// failed counts and logs a failure and answers the request by the
// plugin's failure mode.
func (p *Plugin) failed(w http.ResponseWriter, r *http.Request, next http.Handler, phase int, err error) {
	kind := failureKind(err)
	switch {
	case errors.Is(err, errNoInstance):
		kind = "busy"
	case errors.Is(err, r.Context().Err()) && r.Context().Err() != nil:
		kind = "canceled"
	}
	phaseName := "request"
	if phase == phaseResponse {
		phaseName = "response"
	}
	p.metrics.failures.WithLabelValues(phaseName, kind).Inc()
	mode := "closed"
	if p.opts.FailOpen {
		mode = "open"
	}
	if p.logs.allow() {
		p.log.LogAttrs(r.Context(), slog.LevelError, "wasm plugin failed",
			slog.String("request_id", gateway.RequestID(r.Context())),
			slog.String("phase", phaseName), slog.String("kind", kind), slog.String("fail", mode),
			slog.String("error", describeCallError(err).Error()))
	}
	if p.opts.FailOpen {
		if phase == phaseRequest {
			next.ServeHTTP(w, r)
		}
		return
	}
	gateway.Error(w, r, http.StatusInternalServerError,
		"policy plugin "+p.opts.Name+" failed (request "+gateway.RequestID(r.Context())+")")
}

// rejected answers a request that the open circuit breaker keeps from the
// guest: passed on when failing open, else 503 with Retry-After (the time
// until the breaker lets a probe through, in whole seconds).
func (p *Plugin) rejected(w http.ResponseWriter, r *http.Request, next http.Handler, wait time.Duration) {
	p.metrics.failures.WithLabelValues("request", "breaker").Inc()
	if p.opts.FailOpen {
		next.ServeHTTP(w, r)
		return
	}
	secs := int64((wait + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
	gateway.Error(w, r, http.StatusServiceUnavailable,
		"policy plugin "+p.opts.Name+" is failing: its circuit breaker refuses requests for now (request "+gateway.RequestID(r.Context())+")")
}

// writeReply sends the local reply the guest set.
func (ex *exchange) writeReply(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	for k, v := range ex.replyHeader {
		h[k] = v
	}
	if ex.deny {
		gateway.Error(w, r, ex.replyStatus, ex.denyMsg)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(ex.replyBody)))
	w.WriteHeader(ex.replyStatus)
	w.Write(ex.replyBody)
}

// bufferWriter holds the response for the response phase. Headers go to
// the real writer's map (nothing is sent before WriteHeader on it); status
// and body are kept until the guest has seen them. A body over the cap
// runs the response phase without the body and then streams.
type bufferWriter struct {
	w           http.ResponseWriter
	ex          *exchange
	m           *module
	max         int64
	status      int
	buf         []byte
	passthrough bool // streaming after an oversized body
	done        bool // the response phase ran and its answer was written
}

func (b *bufferWriter) Header() http.Header { return b.w.Header() }

func (b *bufferWriter) WriteHeader(code int) {
	switch {
	case b.passthrough:
		b.w.WriteHeader(code)
	case code >= 100 && code < 200 && code != http.StatusSwitchingProtocols:
		b.w.WriteHeader(code) // informational: send on
	case b.status == 0:
		b.status = code
	}
}

func (b *bufferWriter) Write(p []byte) (int, error) {
	if b.passthrough {
		return b.w.Write(p)
	}
	if b.done {
		return len(p), nil // replaced by the plugin's answer: drop
	}
	if b.status == 0 {
		b.status = http.StatusOK
	}
	if int64(len(b.buf)+len(p)) <= b.max {
		b.buf = append(b.buf, p...)
		return len(p), nil
	}
	b.ex.respTooBig = true
	if !b.respond() {
		return len(p), nil
	}
	b.passthrough = true
	b.w.WriteHeader(b.status)
	if _, err := b.w.Write(b.buf); err != nil {
		return 0, err
	}
	b.buf = nil
	return b.w.Write(p)
}

// Flush is honoured once the response streams; while it is buffered for the
// response phase there is nothing to flush.
func (b *bufferWriter) Flush() {
	if b.passthrough {
		if f, ok := b.w.(http.Flusher); ok {
			f.Flush()
		}
	}
}

// Unwrap gives http.ResponseController the real writer.
func (b *bufferWriter) Unwrap() http.ResponseWriter { return b.w }

func (b *bufferWriter) finish() {
	if b.passthrough || b.done {
		return
	}
	if b.status == 0 {
		b.status = http.StatusOK
	}
	if !b.respond() {
		return
	}
	body := b.buf
	if b.ex.respBody != nil {
		body = b.ex.respBody
	}
	switch {
	case b.status == http.StatusNoContent || b.status == http.StatusNotModified:
		b.w.Header().Del("Content-Length")
	case b.ex.r.Method == http.MethodHead && b.ex.respBody == nil:
		// The length of the body a GET would get: leave it.
	default:
		b.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	b.w.WriteHeader(b.status)
	b.w.Write(body)
}

// respond runs the response phase. It reports whether the (possibly
// changed) response is to be sent; when not, the plugin's reply or the
// failure answer has been written instead.
func (b *bufferWriter) respond() bool {
	ex := b.ex
	r := ex.r
	action, err := b.m.run(ex, phaseResponse)
	if err != nil {
		b.done = true
		if ex.p.opts.FailOpen {
			ex.p.failed(b.w, r, nil, phaseResponse, err)
			b.done = false
			return true
		}
		clearHeaders(b.w.Header())
		ex.p.failed(b.w, r, nil, phaseResponse, err)
		return false
	}
	if action == abi.ActionStop {
		b.done = true
		ex.p.metrics.respStop.Inc()
		clearHeaders(b.w.Header())
		ex.writeReply(b.w, r)
		return false
	}
	ex.p.metrics.respContinue.Inc()
	return true
}

// clearHeaders drops the response's headers, but the request id, before a
// reply replaces the response.
func clearHeaders(h http.Header) {
	id := h.Get(gateway.RequestIDHeader)
	clear(h)
	if id != "" {
		h.Set(gateway.RequestIDHeader, id)
	}
}
