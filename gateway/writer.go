package gateway

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"strings"
)

// statusWriter records the status and size of a response. It keeps Flush
// and, through Unwrap, http.ResponseController features (hijacking for
// upgraded connections, deadlines). When a read of the request body found
// the body budget spent, it answers 503 in place of whatever the handler
// writes (see rejectOverBudget).
type statusWriter struct {
	http.ResponseWriter
	st     *reqState
	status int
	bytes  int64
	// replaced: 1 while the 503 is written, 2 after (the handler's own
	// response is dropped).
	replaced uint8
}

func (w *statusWriter) WriteHeader(code int) {
	if w.replaced == 2 {
		return
	}
	if w.status == 0 && code >= 200 && w.replaced == 0 && w.overBudget() {
		w.rejectOverBudget()
		return
	}
	if w.status == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.replaced == 2 {
		return len(b), nil
	}
	if w.status == 0 {
		if w.replaced == 0 && w.overBudget() {
			w.rejectOverBudget()
			return len(b), nil
		}
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) overBudget() bool { return w.st != nil && w.st.res.over.Load() }

// rejectOverBudget answers 503 with Retry-After for a request whose body
// did not fit the body budget, in the route's error format. The handler
// saw the read fail and answers as it does for a failed read (400, 413,
// 502…); that answer is dropped, and of its headers only those that are
// not about its body are kept.
func (w *statusWriter) rejectOverBudget() {
	h := w.ResponseWriter.Header()
	for k := range h {
		switch {
		case k == "Vary", k == RequestIDHeader, strings.HasPrefix(k, "Access-Control-"):
		default:
			delete(h, k)
		}
	}
	h.Set("Retry-After", budgetRetryAfter)
	w.replaced = 1
	w.st.route.srv.metrics.rejected.WithLabelValues("body_budget").Inc()
	writeError(w, http.StatusServiceUnavailable, "the gateway is short of memory for request bodies; retry later", w.st.route.info.FHIR)
	w.replaced = 2
}

// Flush sends buffered data to the client, if the connection supports it.
func (w *statusWriter) Flush() {
	if w.replaced == 2 {
		return
	}
	if w.status == 0 {
		if w.replaced == 0 && w.overBudget() {
			w.rejectOverBudget()
			return
		}
		w.status = http.StatusOK
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack lets upgraded connections (WebSocket) pass through.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if h, ok := w.ResponseWriter.(http.Hijacker); ok {
		if w.status == 0 {
			w.status = http.StatusSwitchingProtocols
		}
		return h.Hijack()
	}
	return nil, nil, errors.New("gateway: connection cannot be hijacked")
}

// Unwrap returns the underlying writer for http.ResponseController.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// wroteHeader reports whether the response has started.
func (w *statusWriter) wroteHeader() bool { return w.status != 0 }
