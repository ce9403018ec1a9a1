package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// route is a built route: the entry handler every matched request goes
// through (request id, body limit, metrics, access log) in front of the
// chain.
type route struct {
	info     RouteInfo
	srv      *Server
	handler  http.Handler // compression, links, terminal
	maxBody  int64
	duration prometheus.Observer
	// counters caches the request counter of each method and status
	// (100-599), so the hot path does no label lookup.
	counters  [len(validMethods) + 1][500]atomic.Pointer[prometheus.Counter]
	accessLog bool
	trusted   []netip.Prefix
}

func (rt *route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := &reqState{route: rt, start: time.Now()}
	if pre, ok := r.Context().Value(identityKey{}).(*Identity); ok {
		st.identity = pre // an in-process request made as someone
	}
	id := r.Header.Get(RequestIDHeader)
	if !validRequestID(id) {
		id = newRequestID()
		st.idHeader[0] = id
		r.Header[RequestIDHeader] = st.idHeader[0:1:1]
	}
	st.requestID = id
	st.idHeader[1] = id
	w.Header()[RequestIDHeader] = st.idHeader[1:2:2]
	st.sw.ResponseWriter = w
	st.sw.st = st
	st.res.b, st.res.ctx = &rt.srv.budget, r.Context()
	sw := &st.sw
	r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
	rt.srv.metrics.inflight.Inc()
	defer rt.finish(st, r)

	if r.ContentLength > rt.maxBody {
		writeError(sw, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("request body of %d bytes exceeds the limit of %d bytes", r.ContentLength, rt.maxBody), rt.info.FHIR)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = newRequestBody(st, http.MaxBytesReader(sw, r.Body, rt.maxBody), r.ContentLength)
	}
	rt.handler.ServeHTTP(sw, r)
	if st.res.over.Load() && !sw.wroteHeader() && sw.replaced == 0 {
		sw.rejectOverBudget() // the handler wrote nothing
	}
}

// finish records metrics and the access log line. It is deferred so that it
// also runs when the handler aborts the response.
func (rt *route) finish(st *reqState, r *http.Request) {
	m := rt.srv.metrics
	m.inflight.Dec()
	if n := st.res.end(); n > 0 {
		rt.srv.bodiesReleased(n)
	}
	status := st.sw.status
	if status == 0 {
		status = http.StatusOK
	}
	dur := time.Since(st.start)
	rt.duration.Observe(dur.Seconds())
	rt.counter(r.Method, status).Inc()
	if rt.accessLog {
		user := ""
		if st.identity != nil {
			user = st.identity.UserID
		}
		e := entry{requestID: st.requestID, method: r.Method, route: rt.info.Name, path: r.URL.Path,
			status: status, bytes: st.sw.bytes, dur: dur, user: user, remote: r.RemoteAddr}
		if al := rt.srv.accessLines; al != nil {
			al.log(time.Now(), &e)
		} else {
			rt.srv.accessLog.LogAttrs(r.Context(), slog.LevelInfo, "request",
				slog.String("request_id", e.requestID),
				slog.String("method", e.method),
				slog.String("route", e.route),
				slog.String("path", e.path),
				slog.Int("status", e.status),
				slog.Int64("bytes", e.bytes),
				slog.Float64("duration_ms", float64(dur.Microseconds())/1000),
				slog.String("user", e.user),
				slog.String("remote", e.remote),
			)
		}
	}
}

func methodIndex(m string) int {
	for i, v := range validMethods {
		if v == m {
			return i
		}
	}
	return len(validMethods)
}

func (rt *route) counter(method string, status int) prometheus.Counter {
	mi := methodIndex(method)
	if status < 100 || status > 599 {
		return rt.srv.metrics.requests.WithLabelValues(rt.info.Name, methodLabel(mi), strconv.Itoa(status))
	}
	slot := &rt.counters[mi][status-100]
	if c := slot.Load(); c != nil {
		return *c
	}
	c := rt.srv.metrics.requests.WithLabelValues(rt.info.Name, methodLabel(mi), strconv.Itoa(status))
	slot.Store(&c)
	return c
}

func methodLabel(i int) string {
	if i < len(validMethods) {
		return validMethods[i]
	}
	return "OTHER"
}

// link runs one plugin of a chain and records the time spent in it,
// excluding the links after it, and isolates its panics.
type link struct {
	name   string
	plugin Plugin
	next   http.Handler
	dur    prometheus.Observer
	srv    *Server
}

func (l *link) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := stateFrom(r.Context())
	if st == nil { // a plugin replaced the request context: keep going untimed
		l.plugin.ServeHTTP(w, r, l.next)
		return
	}
	defer l.srv.recoverPanic(w, r, st, l.name)
	st.inner = 0
	t0 := time.Now()
	l.plugin.ServeHTTP(w, r, l.next)
	total := time.Since(t0)
	l.dur.Observe((total - st.inner).Seconds())
	st.inner = total
}

// terminal runs the route's handler (FHIR server, upstream proxy) and
// isolates its panics.
type terminal struct {
	name string
	h    http.Handler
	srv  *Server
	// streams says h streams the request body on without keeping it (the
	// upstream proxy): its reads are not charged to the body budget.
	streams bool
}

func (t *terminal) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := stateFrom(r.Context())
	if st == nil {
		t.h.ServeHTTP(w, r)
		return
	}
	if st.res.over.Load() {
		// Memory this request needs did not fit: the handler does not run
		// (the gateway answers 503; see statusWriter).
		writeError(w, http.StatusServiceUnavailable, "no memory for the request body", st.route.info.FHIR)
		return
	}
	if t.streams {
		st.streamBody.Store(true)
	}
	defer t.srv.recoverPanic(w, r, st, t.name)
	t0 := time.Now()
	t.h.ServeHTTP(w, r)
	st.inner = time.Since(t0)
}

// recoverPanic is deferred by links and terminals. A recovered panic is
// logged with the request id, counted, and answered with 500 when the
// response has not started; when it has, the connection is aborted so the
// client cannot mistake a truncated response for a whole one.
func (s *Server) recoverPanic(w http.ResponseWriter, r *http.Request, st *reqState, name string) {
	v := recover()
	if v == nil {
		return
	}
	if v == http.ErrAbortHandler {
		panic(v)
	}
	s.metrics.panics.WithLabelValues(name).Inc()
	s.logger.LogAttrs(r.Context(), slog.LevelError, "panic recovered",
		slog.String("plugin", name),
		slog.String("request_id", st.requestID),
		slog.String("route", st.route.info.Name),
		slog.String("panic", fmt.Sprint(v)),
		slog.String("stack", string(debug.Stack())),
	)
	if st.sw.wroteHeader() {
		panic(http.ErrAbortHandler)
	}
	writeError(w, http.StatusInternalServerError, "internal error (request "+st.requestID+")", st.route.info.FHIR)
}

// buildChain links plugins in order in front of the terminal handler.
func (s *Server) buildChain(plugins []namedPlugin, term *terminal) http.Handler {
	var h http.Handler = term
	for i := len(plugins) - 1; i >= 0; i-- {
		p := plugins[i]
		h = &link{name: p.name, plugin: p.plugin, next: h,
			dur: s.metrics.pluginDuration.WithLabelValues(p.name), srv: s}
	}
	return h
}

type namedPlugin struct {
	name   string
	plugin Plugin
}
