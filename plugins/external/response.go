package external

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/external/contract"
	pb "github.com/omnigate/omnigate/sdk/external/proto"
)

// responseWriter holds a response back until the plugin has decided on
// it. Without the body (withBody false) the decision is made when the
// status is written, and the body then streams. With it the body is
// buffered up to MaxResponseBody; a larger one is decided on without its
// body and then streams. Headers live in the real writer's map all along
// (nothing is sent before WriteHeader on it).
type responseWriter struct {
	w        http.ResponseWriter
	p        *Plugin
	r        *http.Request
	fi       *requestFHIR
	withBody bool

	status int
	buf    []byte // the body held back
	body   []byte // the body to send: buf, or the plugin's replacement
	// replacedBody is set when the plugin replaced the body.
	replacedBody bool
	state        int
}

// States of a responseWriter.
const (
	holding   = iota // the plugin has not decided yet
	streaming        // the response goes on to the client
	replaced         // a reply or an error answer was sent instead
)

func (rw *responseWriter) Header() http.Header { return rw.w.Header() }

func (rw *responseWriter) WriteHeader(code int) {
	switch {
	case rw.state == streaming:
		rw.w.WriteHeader(code)
	case rw.state == replaced, rw.status != 0:
	case code >= 100 && code < 200 && code != http.StatusSwitchingProtocols:
		rw.w.WriteHeader(code) // informational: send on
	default:
		rw.status = code
		if !rw.withBody && rw.decide(pb.BodyState_BODY_ABSENT, nil) {
			rw.state = streaming
			rw.w.WriteHeader(rw.status)
		}
	}
}

func (rw *responseWriter) Write(b []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	switch rw.state {
	case streaming:
		return rw.w.Write(b)
	case replaced:
		return len(b), nil // replaced by the plugin's answer: drop
	}
	if int64(len(rw.buf)+len(b)) <= rw.p.opts.MaxResponseBody {
		rw.buf = append(rw.buf, b...)
		return len(b), nil
	}
	if !rw.decide(pb.BodyState_BODY_TOO_LARGE, nil) {
		return len(b), nil
	}
	rw.state = streaming
	rw.w.WriteHeader(rw.status)
	if _, err := rw.w.Write(rw.buf); err != nil {
		return 0, err
	}
	rw.buf = nil
	return rw.w.Write(b)
}

// Flush is honoured once the response streams; while it is held for the
// plugin there is nothing to flush.
func (rw *responseWriter) Flush() {
	if rw.status == 0 && !rw.withBody {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.state == streaming {
		if f, ok := rw.w.(http.Flusher); ok {
			f.Flush()
		}
	}
}

// Unwrap gives http.ResponseController the real writer.
func (rw *responseWriter) Unwrap() http.ResponseWriter { return rw.w }

// finish decides on a response that was held to its end and sends it.
func (rw *responseWriter) finish() {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.state != holding {
		return
	}
	state, sent := pb.BodyState_BODY_PRESENT, rw.buf
	if ce := rw.w.Header().Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		state, sent = pb.BodyState_BODY_ENCODED, nil
	} else if len(rw.buf) == 0 {
		state = pb.BodyState_BODY_ABSENT
	}
	rw.body = rw.buf
	if !rw.decide(state, sent) {
		return
	}
	rw.state = streaming
	if rw.replacedBody || bodyAllowed(rw.r.Method, rw.status) {
		rw.w.Header().Set("Content-Length", strconv.Itoa(len(rw.body)))
	}
	rw.w.WriteHeader(rw.status)
	rw.w.Write(rw.body)
}

// bodyAllowed reports whether a response has a body whose length the
// gateway may state: not for HEAD (the length is the GET's), 204 or 304.
func bodyAllowed(method string, status int) bool {
	return method != http.MethodHead && status != http.StatusNoContent && status != http.StatusNotModified
}

// decide runs the response phase. It reports whether the response, as
// the plugin changed it, is to be sent; when not, the plugin's reply or
// the failure answer has been sent instead.
func (rw *responseWriter) decide(state pb.BodyState, body []byte) bool {
	p, r := rw.p, rw.r
	pr := p.cur.Load()
	if pr == nil {
		return rw.fail(errDown)
	}
	msg := &pb.Response{
		Request:   p.requestMessage(r, false, rw.fi),
		Status:    int32(rw.status),
		Headers:   contract.Headers(rw.w.Header()),
		BodyState: state,
		Body:      body,
	}
	d, err := p.call(r.Context(), pr, phaseResponse, nil, msg)
	if err != nil {
		return rw.fail(err)
	}
	p.count(d)
	if d.Action == pb.Action_ACTION_STOP {
		p.metrics.respStop.Inc()
		rw.state = replaced
		clearHeaders(rw.w.Header())
		writeReply(rw.w, r, d.Reply)
		return false
	}
	p.metrics.respContinue.Inc()
	contract.ApplyHeaderChanges(rw.w.Header(), d.HeaderChanges)
	if d.Status != 0 {
		rw.status = int(d.Status)
	}
	if d.ReplaceBody {
		rw.body, rw.replacedBody = d.Body, true
	}
	return true
}

// fail answers by the failure mode: open sends the response unchanged.
func (rw *responseWriter) fail(err error) bool {
	if rw.p.opts.FailOpen {
		rw.p.failed(rw.w, rw.r, nil, phaseResponse, err)
		return true
	}
	rw.state = replaced
	clearHeaders(rw.w.Header())
	rw.p.failed(rw.w, rw.r, nil, phaseResponse, err)
	return false
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
