package external

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/external/contract"
	pb "github.com/omnigate/omnigate/sdk/external/proto"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

const (
	phaseRequest  = "request"
	phaseResponse = "response"
)

var errDown = errors.New("plugin process is down")

// invalidError is a decision the gateway refuses.
type invalidError struct{ msg string }

func (e *invalidError) Error() string { return "invalid decision: " + e.msg }

func invalid(format string, args ...any) error {
	return &invalidError{fmt.Sprintf(format, args...)}
}

// ServeHTTP asks the plugin about the request, then passes it on, answers
// it or fails it, and, when the plugin takes part in the response phase,
// asks again about the response before it is sent.
func (p *Plugin) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	pr := p.cur.Load()
	if pr == nil {
		p.failed(w, r, next, phaseRequest, errDown)
		return
	}
	ph := pr.phases
	fi := p.fhirInfo(r)
	if ph.Request {
		req := p.requestMessage(r, ph.RequestBody, fi)
		d, err := p.call(r.Context(), pr, phaseRequest, req, nil)
		if err != nil {
			p.failed(w, r, next, phaseRequest, err)
			return
		}
		p.count(d)
		switch d.Action {
		case pb.Action_ACTION_STOP:
			p.metrics.reqStop.Inc()
			writeReply(w, r, d.Reply)
			return
		case pb.Action_ACTION_SKIP_RESPONSE:
			p.metrics.reqSkip.Inc()
			contract.ApplyHeaderChanges(r.Header, d.HeaderChanges)
			next.ServeHTTP(w, r)
			return
		}
		p.metrics.reqContinue.Inc()
		contract.ApplyHeaderChanges(r.Header, d.HeaderChanges)
	}
	if !ph.Response {
		next.ServeHTTP(w, r)
		return
	}
	rw := &responseWriter{w: w, p: p, r: r, fi: fi, withBody: ph.ResponseBody && p.opts.MaxResponseBody >= 0}
	next.ServeHTTP(rw, r)
	rw.finish()
}

// call makes one call with the plugin's deadline and checks the decision.
func (p *Plugin) call(ctx context.Context, pr *process, phase string, req *pb.Request, resp *pb.Response) (*pb.Decision, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	t0 := time.Now()
	var d *pb.Decision
	var err error
	if phase == phaseRequest {
		d, err = pr.rpc.OnRequest(ctx, req)
		p.metrics.reqDuration.Observe(time.Since(t0).Seconds())
	} else {
		d, err = pr.rpc.OnResponse(ctx, resp)
		p.metrics.respDuration.Observe(time.Since(t0).Seconds())
	}
	if err != nil {
		return nil, err
	}
	if err := checkDecision(d, phase, resp != nil && resp.BodyState == pb.BodyState_BODY_PRESENT); err != nil {
		return nil, err
	}
	return d, nil
}

// checkDecision refuses what the gateway cannot do or what would break
// the response's framing.
func checkDecision(d *pb.Decision, phase string, bodySent bool) error {
	switch d.Action {
	case pb.Action_ACTION_CONTINUE:
	case pb.Action_ACTION_STOP:
		if d.Reply == nil {
			return invalid("stop without a reply")
		}
		lo := int32(200)
		if d.Reply.Deny {
			lo = 400
		}
		if d.Reply.Status < lo || d.Reply.Status > 599 {
			return invalid("reply status %d out of range %d-599", d.Reply.Status, lo)
		}
		for _, h := range d.Reply.Headers {
			if err := checkHeader(h.Name, h.Values...); err != nil {
				return err
			}
		}
		return nil
	case pb.Action_ACTION_SKIP_RESPONSE:
		if phase != phaseRequest {
			return invalid("skip_response in the response phase")
		}
	default:
		return invalid("unknown action %d", d.Action)
	}
	for _, c := range d.HeaderChanges {
		switch c.Op {
		case pb.HeaderChange_REMOVE:
			if err := checkHeader(c.Name); err != nil {
				return err
			}
		case pb.HeaderChange_SET, pb.HeaderChange_ADD:
			if err := checkHeader(c.Name, c.Value); err != nil {
				return err
			}
		default:
			return invalid("unknown header operation %d", c.Op)
		}
	}
	if phase == phaseRequest {
		if d.Status != 0 || d.ReplaceBody {
			return invalid("status or body change in the request phase")
		}
		return nil
	}
	if d.Status != 0 && (d.Status < 200 || d.Status > 599) {
		return invalid("status %d out of range 200-599", d.Status)
	}
	if d.ReplaceBody && !bodySent {
		return invalid("body replaced but the plugin was not given the body")
	}
	return nil
}

func checkHeader(name string, values ...string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return invalid("header name %q", name)
	}
	switch textproto.CanonicalMIMEHeaderKey(name) {
	case "Content-Length", "Transfer-Encoding", "Connection":
		return invalid("header %s belongs to the gateway", name)
	}
	for _, v := range values {
		if !httpguts.ValidHeaderFieldValue(v) {
			return invalid("value of header %s", name)
		}
	}
	return nil
}

// count adds the decision's counters.
func (p *Plugin) count(d *pb.Decision) {
	for _, c := range d.Counters {
		if c.Delta < 0 {
			continue
		}
		if m := p.metrics.counter(c.Name); m != nil {
			m.Add(float64(c.Delta))
		}
	}
}

// failureKind names what went wrong, for logs and metrics.
func failureKind(ctx context.Context, err error) string {
	var inv *invalidError
	switch {
	case errors.Is(err, errDown):
		return "down"
	case errors.As(err, &inv):
		return "invalid"
	case ctx.Err() != nil:
		return "canceled"
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded:
		return "deadline"
	case codes.Unavailable, codes.Canceled:
		return "unavailable"
	}
	return "error"
}

// failed counts and logs a failure and answers the request by the
// plugin's failure mode. A request that finds the process down is not
// logged: the process's exit and restarts are.
func (p *Plugin) failed(w http.ResponseWriter, r *http.Request, next http.Handler, phase string, err error) {
	ctx := r.Context()
	kind := failureKind(ctx, err)
	p.metrics.failures.WithLabelValues(phase, kind).Inc()
	mode := "closed"
	if p.opts.FailOpen {
		mode = "open"
	}
	if kind != "down" {
		msg := err.Error()
		if s, ok := status.FromError(err); ok {
			msg = s.Message()
		}
		p.log.LogAttrs(ctx, slog.LevelError, "external plugin failed",
			slog.String("request_id", gateway.RequestID(ctx)),
			slog.String("phase", phase), slog.String("kind", kind), slog.String("fail", mode),
			slog.String("error", msg))
	}
	if p.opts.FailOpen {
		if next != nil {
			next.ServeHTTP(w, r)
		}
		return
	}
	gateway.Error(w, r, http.StatusInternalServerError,
		"policy plugin "+p.opts.Name+" failed (request "+gateway.RequestID(ctx)+")")
}

// writeReply sends a local reply.
func writeReply(w http.ResponseWriter, r *http.Request, reply *pb.Reply) {
	h := w.Header()
	for _, x := range reply.Headers {
		h[textproto.CanonicalMIMEHeaderKey(x.Name)] = x.Values
	}
	if reply.Deny {
		gateway.Error(w, r, int(reply.Status), reply.Reason)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(reply.Body)))
	w.WriteHeader(int(reply.Status))
	w.Write(reply.Body)
}

// requestFHIR is what a request on a FHIR route tells the plugin beyond
// its line and headers, worked out once, before the first call: the
// interaction of its path and every FHIR interaction, a batch's entries
// included. The body of a batch is read for it (up to MaxRequestBody) and
// put back for the rest of the chain; a plugin that reads bodies gets the
// same bytes.
type requestFHIR struct {
	fhir  *pb.FHIR
	list  []*pb.Interaction
	state pb.InteractionsState

	bodyRead  bool
	bodyState pb.BodyState
	body      []byte
}

// fhirInfo works out r's requestFHIR; nil outside FHIR routes.
func (p *Plugin) fhirInfo(r *http.Request) *requestFHIR {
	info, ok := gateway.RouteFrom(r.Context())
	if !ok || !info.FHIR {
		return nil
	}
	base := literalPrefix(info.Pattern)
	fi := &requestFHIR{state: pb.InteractionsState_INTERACTIONS_PRESENT}
	f, ok := fhirreq.Parse(r.Method, r.URL.Path, base)
	if ok {
		fi.fhir = &pb.FHIR{Interaction: f.Interaction, Type: f.Type, Id: f.ID, VersionId: f.VersionID,
			Operation: f.Operation, CompartmentType: f.CompartmentType, CompartmentId: f.CompartmentID}
	}
	if !ok || f.Interaction != fhirreq.Batch || r.Method != http.MethodPost {
		e := fhirreq.RequestEntry(r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("If-None-Exist"), base)
		fi.list = []*pb.Interaction{interactionMessage(&e)}
		return fi
	}
	fi.bodyRead = true
	fi.bodyState, fi.body = readRequestBody(r, p.opts.MaxRequestBody)
	switch {
	case fi.bodyState == pb.BodyState_BODY_TOO_LARGE || p.opts.MaxRequestBody < 0:
		fi.state = pb.InteractionsState_INTERACTIONS_TOO_LARGE
		return fi
	case fi.bodyState != pb.BodyState_BODY_PRESENT: // no body, or the client's failed
		fi.state = pb.InteractionsState_INTERACTIONS_INVALID
		return fi
	}
	b, err := fhirreq.ParseBundle(fi.body, base)
	if err != nil {
		fi.state = pb.InteractionsState_INTERACTIONS_INVALID
		return fi
	}
	fi.list = make([]*pb.Interaction, len(b.Entries))
	for i := range b.Entries {
		fi.list[i] = interactionMessage(&b.Entries[i])
	}
	return fi
}

func interactionMessage(e *fhirreq.Entry) *pb.Interaction {
	return &pb.Interaction{Interaction: e.Interaction, Type: e.Type, Id: e.ID, VersionId: e.VersionID,
		Operation: e.Operation, CompartmentType: e.CompartmentType, CompartmentId: e.CompartmentID,
		Conditional: e.Conditional(), Method: strings.ToUpper(e.Method), Url: e.URL, IfNoneExist: e.IfNoneExist}
}

// requestMessage describes r to the plugin; fi is r's requestFHIR.
func (p *Plugin) requestMessage(r *http.Request, withBody bool, fi *requestFHIR) *pb.Request {
	ctx := r.Context()
	m := &pb.Request{
		Method:    r.Method,
		Path:      r.URL.Path,
		RawQuery:  r.URL.RawQuery,
		Headers:   contract.Headers(r.Header),
		RequestId: gateway.RequestID(ctx),
	}
	if ip := gateway.ClientIP(r); ip.IsValid() {
		m.ClientIp = ip.String()
	}
	if info, ok := gateway.RouteFrom(ctx); ok {
		m.Route = info.Name
	}
	if fi != nil {
		m.Fhir, m.Interactions, m.InteractionsState = fi.fhir, fi.list, fi.state
	}
	if id := gateway.IdentityFrom(ctx); id != nil {
		m.Identity = &pb.Identity{User: id.UserID, Role: id.Role, Scopes: id.Scopes,
			Patient: id.PatientID, Session: id.SessionID, Method: id.Method}
	}
	switch {
	case withBody && fi != nil && fi.bodyRead:
		m.BodyState, m.Body = fi.bodyState, fi.body
	case withBody:
		m.BodyState, m.Body = readRequestBody(r, p.opts.MaxRequestBody)
	}
	return m
}

// literalPrefix is a route pattern up to its first parameter, without a
// trailing slash: "/fhir/R4" for "/fhir/R4/*path".
func literalPrefix(pattern string) string {
	if i := strings.IndexAny(pattern, ":*"); i >= 0 {
		pattern = pattern[:i]
	}
	return strings.TrimRight(pattern, "/")
}

// readRequestBody reads the body up to max, so that no call waits on the
// client, and puts back what it read for the rest of the chain. A larger
// body streams on unread by the plugin.
func readRequestBody(r *http.Request, max int64) (pb.BodyState, []byte) {
	if max < 0 || r.Body == nil || r.Body == http.NoBody {
		return pb.BodyState_BODY_ABSENT, nil
	}
	if r.ContentLength > max {
		return pb.BodyState_BODY_TOO_LARGE, nil
	}
	rest := r.Body
	body, err := io.ReadAll(io.LimitReader(rest, max+1))
	switch {
	case err != nil: // the client's body failed: the next handler sees it
		r.Body = bodyReader{io.MultiReader(bytes.NewReader(body), errReader{err}), rest}
		return pb.BodyState_BODY_ABSENT, nil
	case int64(len(body)) > max:
		r.Body = bodyReader{io.MultiReader(bytes.NewReader(body), rest), rest}
		return pb.BodyState_BODY_TOO_LARGE, nil
	}
	r.Body = bodyReader{bytes.NewReader(body), rest}
	if len(body) == 0 {
		return pb.BodyState_BODY_ABSENT, nil
	}
	return pb.BodyState_BODY_PRESENT, body
}

type bodyReader struct {
	io.Reader
	io.Closer
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
