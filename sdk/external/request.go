package external

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/omnigate/omnigate/sdk/external/contract"
	pb "github.com/omnigate/omnigate/sdk/external/proto"
)

// Config is what Configure gets: the plugin's name and its config.
type Config struct {
	// Name is the plugin instance's name in the gateway config.
	Name string
	// JSON is the "config" key of the plugin instance as JSON ("null" when
	// absent).
	JSON []byte
}

// Decode decodes the config into v, refusing unknown keys. An absent
// config leaves v as it is.
func (c Config) Decode(v any) error {
	if len(c.JSON) == 0 || string(c.JSON) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(c.JSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// Identity is the caller as the gateway's session plugin established it.
type Identity struct {
	// User identifies the user or client.
	User string
	// Role is the configured role: physician, nurse, admin, patient, ….
	Role string
	// Scopes are the granted OAuth / SMART scopes.
	Scopes []string
	// Patient is the patient the user is, or acts for.
	Patient string
	// Session is the server session's id (never a token).
	Session string
	// Method says how the identity was established: session, jwt, ….
	Method string
}

// HasScope reports whether the identity holds scope s exactly.
func (id *Identity) HasScope(s string) bool { return id != nil && slices.Contains(id.Scopes, s) }

// FHIR is the FHIR RESTful interaction of a request on a FHIR route.
type FHIR struct {
	// Interaction is read, vread, update, patch, delete, history-instance,
	// history-type, history-system, create, search-type, search-system,
	// capabilities, batch or operation.
	Interaction string
	// Type is the resource type ("" for system-level interactions).
	Type string
	// ID is the resource id of instance-level interactions.
	ID string
	// VersionID is the version of a vread.
	VersionID string
	// Operation is the operation's name without "$".
	Operation string
	// CompartmentType and CompartmentID name the compartment of a
	// compartment search such as GET Patient/123/Observation.
	CompartmentType, CompartmentID string
}

// Interaction is one FHIR interaction of a request: the request itself, or
// one entry of a batch or transaction Bundle POSTed to the FHIR base.
type Interaction struct {
	// FHIR is the interaction as the gateway classified it. Interaction is
	// "" when the entry's method and url (or the request's path) are not a
	// FHIR RESTful interaction the gateway can classify: refuse such an
	// entry.
	FHIR
	// Conditional is true for a conditional create, update, patch or
	// delete, whose target is found by a search (URL's query, or
	// IfNoneExist) rather than named by ID.
	Conditional bool
	// Method is the HTTP method, upper case.
	Method string
	// URL is relative to the FHIR base, with its query: an entry's
	// request.url as given, or the request's path below the base
	// ("Patient/p1", "Observation?code=x").
	URL string
	// IfNoneExist is the criteria of a conditional create.
	IfNoneExist string
}

// Query returns the parsed query of URL: a search's parameters, or the
// criteria of a conditional update, patch or delete.
func (in *Interaction) Query() url.Values {
	_, q, _ := strings.Cut(in.URL, "?")
	v, _ := url.ParseQuery(q)
	return v
}

// Errors of Request.Interactions.
var (
	// ErrNotFHIR: the request is not on a FHIR route; it has no FHIR
	// interactions.
	ErrNotFHIR = errors.New("omnigate: not a FHIR request")
	// ErrInteractionsTooLarge: the body of the batch or transaction is over
	// the gateway's max_request_body, so its entries are unknown.
	ErrInteractionsTooLarge = errors.New("omnigate: batch or transaction body over the gateway's max_request_body")
	// ErrInteractionsInvalid: the body POSTed to the FHIR base is not a
	// JSON batch or transaction Bundle the gateway can read (XML, another
	// Bundle type, no body, a body the client failed to send).
	ErrInteractionsInvalid = errors.New("omnigate: body of the POST to the FHIR base is not a batch or transaction Bundle the gateway can read")
	// ErrInteractionsUnsupported: the gateway is older than the list of
	// interactions (it sent the request's FHIR context without it).
	ErrInteractionsUnsupported = errors.New("omnigate: the gateway sends no list of FHIR interactions")
)

// Request is the request a policy decides on. A Request is used by one
// call only.
type Request struct {
	// Method is the HTTP method.
	Method string
	// Path is the URL path.
	Path string
	// RawQuery is the query string, without "?".
	RawQuery string
	// Header holds the request's headers. In OnRequest they may be
	// changed; the rest of the chain sees the changes.
	Header http.Header
	// Route is the name of the route the request matched.
	Route string
	// ClientIP is the address of the client (behind trusted proxies, the
	// one they forwarded).
	ClientIP string
	// ID is the request id (X-Request-Id).
	ID string
	// Identity is the caller, nil for an anonymous request.
	Identity *Identity
	// FHIR is the request's FHIR interaction, nil outside FHIR routes. It
	// is read from the method and the path alone: a batch or transaction
	// says "batch", and its entries are in Interactions.
	FHIR *FHIR
	// Body is the request body, read-only, for a policy that implements
	// RequestBodyReader; nil when there is none or it is too large.
	Body []byte
	// BodyTooLarge is true when the body was over the gateway's cap.
	BodyTooLarge bool

	inter    []Interaction
	interErr error
	orig     http.Header
	d        decision
}

// Interactions returns every FHIR interaction of the request, so that a
// policy decides each of them: for a batch or transaction POSTed to the
// FHIR base (FHIR.Interaction is "batch"), one per entry of the Bundle, in
// order; for any other request on a FHIR route, one, the request itself.
// A policy that looks at the method and path alone is bypassed by wrapping
// the same interaction in a batch: decide on these instead.
//
// The gateway reads a batch's body for it whether or not the policy reads
// bodies. Errors: ErrNotFHIR outside FHIR routes; ErrInteractionsTooLarge,
// ErrInteractionsInvalid and ErrInteractionsUnsupported when the list is
// not complete: refuse the request on any of these three.
func (r *Request) Interactions() ([]Interaction, error) { return r.inter, r.interErr }

// SetInteractions sets what Interactions returns, for tests of a policy
// that build their own Request.
func (r *Request) SetInteractions(list []Interaction, err error) { r.inter, r.interErr = list, err }

// decision is what a handler decided, in either phase.
type decision struct {
	action      pb.Action
	reply       *pb.Reply
	replyHeader http.Header
	counters    []*pb.Counter
}

// Query returns the parsed query string.
func (r *Request) Query() url.Values {
	v, _ := url.ParseQuery(r.RawQuery)
	return v
}

// Deny ends the request with an error answer in the route's format (a FHIR
// OperationOutcome on FHIR routes, application/problem+json elsewhere).
// status is 400 to 599; reason is shown to the client, so it must not hold
// tokens or PHI.
func (r *Request) Deny(status int, reason string) { r.d.deny(status, reason) }

// Respond ends the request with a local reply: status (200 to 599), body,
// and headers given as name, value pairs.
func (r *Request) Respond(status int, body []byte, header ...string) {
	r.d.respond(status, body, header)
}

// ReplyHeader holds headers added to the answer of Deny or Respond, such
// as WWW-Authenticate or Retry-After.
func (r *Request) ReplyHeader() http.Header { return r.d.header() }

// SkipResponse lets this request's response pass without OnResponse, so
// the gateway does not hold it back.
func (r *Request) SkipResponse() {
	if r.d.action == pb.Action_ACTION_CONTINUE {
		r.d.action = pb.Action_ACTION_SKIP_RESPONSE
	}
}

// Stopped reports whether Deny or Respond ended the request.
func (r *Request) Stopped() bool { return r.d.action == pb.Action_ACTION_STOP }

// Count adds delta (≥ 0) to the counter called name (1 to 64 of
// [a-z0-9_]), exported by the gateway as omnigate_external_counter_total
// with labels plugin and name. A plugin has at most 100 counter names.
func (r *Request) Count(name string, delta int64) { r.d.count(name, delta) }

// Response is the response a policy decides on, with its request.
type Response struct {
	// Request is the request the response answers (read-only now).
	Request *Request
	// Status is the response's status code; set it (200 to 599) to change
	// it.
	Status int
	// Header holds the response's headers, which may be changed.
	Header http.Header
	// Body is the response body, for a policy that implements
	// ResponseBodyReader; nil when there is none, it is over the gateway's
	// cap (BodyTooLarge) or it is compressed (BodyEncoded). Replace it
	// with SetBody.
	Body []byte
	// BodyTooLarge is true when the body was over the gateway's cap.
	BodyTooLarge bool
	// BodyEncoded is true when the body has a Content-Encoding.
	BodyEncoded bool

	status  int
	orig    http.Header
	newBody []byte
	setBody bool
	d       decision
}

// SetBody replaces the response body; Content-Length follows. Only a
// policy that implements ResponseBodyReader may replace the body, and only
// when Body was given.
func (r *Response) SetBody(b []byte) {
	r.newBody, r.setBody = b, true
}

// Deny replaces the response with an error answer in the route's format.
func (r *Response) Deny(status int, reason string) { r.d.deny(status, reason) }

// Respond replaces the response with a local reply.
func (r *Response) Respond(status int, body []byte, header ...string) {
	r.d.respond(status, body, header)
}

// ReplyHeader holds headers added to the answer of Deny or Respond.
func (r *Response) ReplyHeader() http.Header { return r.d.header() }

// Count adds delta to the counter called name, as Request.Count.
func (r *Response) Count(name string, delta int64) { r.d.count(name, delta) }

func (d *decision) deny(status int, reason string) {
	d.action = pb.Action_ACTION_STOP
	d.reply = &pb.Reply{Status: int32(status), Deny: true, Reason: reason}
}

func (d *decision) respond(status int, body []byte, header []string) {
	d.action = pb.Action_ACTION_STOP
	d.reply = &pb.Reply{Status: int32(status), Body: body}
	for i := 0; i+1 < len(header); i += 2 {
		d.header().Add(header[i], header[i+1])
	}
}

func (d *decision) header() http.Header {
	if d.replyHeader == nil {
		d.replyHeader = http.Header{}
	}
	return d.replyHeader
}

func (d *decision) count(name string, delta int64) {
	d.counters = append(d.counters, &pb.Counter{Name: name, Delta: delta})
}

// proto returns the decision's message; changes are the header changes
// made by a handler that continued.
func (d *decision) proto(changes []*pb.HeaderChange) *pb.Decision {
	out := &pb.Decision{Action: d.action, Counters: d.counters}
	if d.action != pb.Action_ACTION_STOP {
		out.HeaderChanges = changes
		return out
	}
	out.Reply = d.reply
	out.Reply.Headers = contract.Headers(d.replyHeader)
	return out
}
