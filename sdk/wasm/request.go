package wasm

import (
	"net/url"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/omnigate/omnigate/sdk/wasm/abi"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// Header is a set of HTTP headers held by the host: the request's, the
// response's or the local reply's. Names are case-insensitive.
type Header struct{ m uint32 }

// Get returns the first value of name, or "".
func (h Header) Get(name string) string {
	v, _ := h.lookup(name)
	if i := strings.IndexByte(v, '\n'); i >= 0 {
		return v[:i]
	}
	return v
}

// Has reports whether name is present (possibly with an empty value).
func (h Header) Has(name string) bool {
	_, ok := h.lookup(name)
	return ok
}

// Values returns every value of name.
func (h Header) Values(name string) []string {
	v, ok := h.lookup(name)
	if !ok {
		return nil
	}
	return strings.Split(v, "\n")
}

func (h Header) lookup(name string) (string, bool) {
	// The hot path of most plugins: no closure, no allocation but the
	// returned string.
	for {
		n := hostHeaderGet(h.m, sptr(name), uint32(len(name)), ptr(buf), uint32(len(buf)))
		if n < 0 {
			return "", false
		}
		if int(n) <= len(buf) {
			return string(buf[:n]), true
		}
		buf = make([]byte, n+n/4)
	}
}

// All returns every header as name and value pairs, names in canonical
// form and sorted.
func (h Header) All() [][2]string {
	b, err := fetch(func(p unsafe.Pointer, c uint32) int32 { return hostHeaderList(h.m, p, c) })
	if err != nil {
		return nil
	}
	var out [][2]string
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			out = append(out, [2]string{k, v})
		}
	}
	return out
}

// Set replaces the values of name. It fails with ErrPhase for request
// headers in the response phase, and ErrInvalid for a bad name or value.
func (h Header) Set(name, value string) error {
	return codeErr(hostHeaderSet(h.m, sptr(name), uint32(len(name)), sptr(value), uint32(len(value))))
}

// Add appends a value to name.
func (h Header) Add(name, value string) error {
	return codeErr(hostHeaderAdd(h.m, sptr(name), uint32(len(name)), sptr(value), uint32(len(value))))
}

// Del removes name.
func (h Header) Del(name string) error {
	return codeErr(hostHeaderDel(h.m, sptr(name), uint32(len(name))))
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

// FHIR is the FHIR RESTful interaction of a request on a FHIR route:
// Interaction (fhirreq.Read, fhirreq.SearchType, …), Type, ID, VersionID,
// Operation, and CompartmentType and CompartmentID of a compartment search
// such as GET Patient/123/Observation. The host parses it from the method
// and the path with the same package.
type FHIR = fhirreq.Request

// Request is the request a handler decides on. Its methods ask the host,
// so call them in a handler only.
type Request struct {
	// Header holds the request's headers. They may be changed in the
	// request phase; the rest of the chain sees the changes.
	Header Header

	action int32
	props  [abi.PropIdentity + 1]string
	have   [abi.PropIdentity + 1]bool

	inter     []Interaction
	interErr  error
	interHave bool
}

func (r *Request) prop(id uint32) string {
	if !r.have[id] {
		r.props[id] = getProp(id)
		r.have[id] = true
	}
	return r.props[id]
}

func getProp(id uint32) string {
	for {
		n := hostGet(id, ptr(buf), uint32(len(buf)))
		if n < 0 {
			return ""
		}
		if int(n) <= len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, n+n/4)
	}
}

// reset readies a reused Request for the next call.
func (r *Request) reset() {
	r.Header = Header{m: abi.MapRequest}
	r.action = abi.ActionContinue
	clear(r.have[:])
	r.inter, r.interErr, r.interHave = nil, nil, false
}

// Method returns the HTTP method.
func (r *Request) Method() string { return r.prop(abi.PropMethod) }

// Path returns the URL path.
func (r *Request) Path() string { return r.prop(abi.PropPath) }

// RawQuery returns the query string, without "?".
func (r *Request) RawQuery() string { return r.prop(abi.PropQuery) }

// Query returns the parsed query string.
func (r *Request) Query() url.Values {
	v, _ := url.ParseQuery(r.RawQuery())
	return v
}

// Route returns the name of the route the request matched.
func (r *Request) Route() string { return r.prop(abi.PropRoute) }

// ClientIP returns the address of the peer that sent the request.
func (r *Request) ClientIP() string { return r.prop(abi.PropClientIP) }

// ID returns the request id (X-Request-Id).
func (r *Request) ID() string { return r.prop(abi.PropRequestID) }

// Identity returns the caller, or nil for an anonymous request.
func (r *Request) Identity() *Identity {
	s := r.prop(abi.PropIdentity) // one host call for all fields
	if s == "" {
		return nil
	}
	var f [6]string
	for i := range f {
		f[i], s, _ = strings.Cut(s, "\n")
	}
	id := &Identity{User: f[0], Role: f[1], Patient: f[3], Session: f[4], Method: f[5]}
	if f[2] != "" {
		id.Scopes = strings.Fields(f[2])
	}
	return id
}

// FHIR returns the request's FHIR interaction; ok is false outside FHIR
// routes and for paths that are not FHIR RESTful paths. It is parsed from
// the method and the path alone: for a batch or transaction (Interaction
// "batch") the interactions are its entries, which Interactions returns.
func (r *Request) FHIR() (f FHIR, ok bool) {
	f.Interaction = r.prop(abi.PropFHIRInteraction)
	if f.Interaction == "" {
		return FHIR{}, false
	}
	f.Type = r.prop(abi.PropFHIRType)
	f.ID = r.prop(abi.PropFHIRID)
	f.VersionID = r.prop(abi.PropFHIRVersionID)
	f.Operation = r.prop(abi.PropFHIROperation)
	f.CompartmentType = r.prop(abi.PropFHIRCompartmentType)
	f.CompartmentID = r.prop(abi.PropFHIRCompartmentID)
	return f, true
}

// Body returns the request body, read-only. It needs ReadRequestBody in
// init; it fails with ErrTooLarge over the host's cap and ErrAbsent when
// there is none.
func (r *Request) Body() ([]byte, error) {
	b, err := fetch(func(p unsafe.Pointer, c uint32) int32 { return hostBodyGet(abi.BodyRequest, p, c) })
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), b...), nil
}

// Deny ends the request with an error answer in the route's format (a FHIR
// OperationOutcome on FHIR routes, application/problem+json elsewhere).
// status is 400 to 599; reason is shown to the client, so it must not hold
// tokens or PHI.
func (r *Request) Deny(status int, reason string) { deny(&r.action, status, reason) }

func deny(action *int32, status int, reason string) {
	if hostDeny(int32(status), sptr(reason), uint32(len(reason))) == 0 {
		*action = abi.ActionStop
	}
}

// Respond ends the request with a local reply: status (200 to 599), body,
// and headers given as name, value pairs.
func (r *Request) Respond(status int, body []byte, header ...string) {
	respond(&r.action, status, body, header)
}

func respond(action *int32, status int, body []byte, header []string) {
	h := Header{m: abi.MapReply}
	for i := 0; i+1 < len(header); i += 2 {
		h.Add(header[i], header[i+1])
	}
	if hostReply(int32(status), ptr(body), uint32(len(body))) == 0 {
		*action = abi.ActionStop
	}
}

// ReplyHeader holds headers added to the local reply of Deny or Respond,
// such as WWW-Authenticate or Retry-After. Set them before Deny.
func (r *Request) ReplyHeader() Header { return Header{m: abi.MapReply} }

// SkipResponse lets this request's response pass without the response
// handler, so the host does not buffer it.
func (r *Request) SkipResponse() {
	if r.action == abi.ActionContinue {
		r.action = abi.ActionSkipResponse
	}
}

// Stopped reports whether Deny or Respond ended the request.
func (r *Request) Stopped() bool { return r.action == abi.ActionStop }

// ResourceFields returns, for the request body's FHIR resource (or each
// resource of a Bundle), an object with its resourceType, id and the named
// top-level elements, as a JSON array. The host does the parsing.
func (r *Request) ResourceFields(fields ...string) ([]byte, error) {
	return resourceFields(abi.BodyRequest, fields)
}

func resourceFields(which uint32, fields []string) ([]byte, error) {
	list := strings.Join(fields, "\n")
	b, err := fetch(func(p unsafe.Pointer, c uint32) int32 {
		return hostJSONExtract(which, sptr(list), uint32(len(list)), p, c)
	})
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), b...), nil
}

// Response is the response a handler decides on, with the request it
// answers.
type Response struct {
	// Request is the request (its headers are read-only now).
	Request *Request
	// Header holds the response's headers, which may be changed.
	Header Header

	action int32
}

// Status returns the response's status code.
func (r *Response) Status() int { return int(hostStatus()) }

// SetStatus changes the status code (200 to 599).
func (r *Response) SetStatus(code int) error { return codeErr(hostStatusSet(int32(code))) }

// Body returns the response body. It fails with ErrTooLarge over the host's
// cap and ErrEncoded when the body is compressed.
func (r *Response) Body() ([]byte, error) {
	b, err := fetch(func(p unsafe.Pointer, c uint32) int32 { return hostBodyGet(abi.BodyResponse, p, c) })
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), b...), nil
}

// SetBody replaces the response body; Content-Length follows.
func (r *Response) SetBody(b []byte) error { return codeErr(hostBodySet(ptr(b), uint32(len(b)))) }

// MaskFields replaces the named top-level elements of the response's FHIR
// resource, or of every resource of a search Bundle, with replacement (a
// JSON value such as `"***"` or `[]`), or removes them when replacement is
// "". It returns how many elements it replaced. The host rewrites the body,
// which is much faster than doing it in the guest.
func (r *Response) MaskFields(fields []string, replacement string) (int, error) {
	list := strings.Join(fields, "\n")
	n := hostJSONMask(sptr(list), uint32(len(list)), sptr(replacement), uint32(len(replacement)))
	if n < 0 {
		return 0, codeErr(n)
	}
	return int(n), nil
}

// ResourceFields is Request.ResourceFields for the response body.
func (r *Response) ResourceFields(fields ...string) ([]byte, error) {
	return resourceFields(abi.BodyResponse, fields)
}

// Deny replaces the response with an error answer in the route's format.
func (r *Response) Deny(status int, reason string) { deny(&r.action, status, reason) }

// Respond replaces the response with a local reply.
func (r *Response) Respond(status int, body []byte, header ...string) {
	respond(&r.action, status, body, header)
}

// KV is the shared key-value store, namespaced per plugin: keys of one
// plugin never meet another's. With Redis configured it is shared by every
// gateway instance. The time of a KV call is not charged to the call's CPU
// budget; it counts against its wall-clock backstop.
var KV kvStore

type kvStore struct{}

// Get returns the value of key; ok is false when it is absent or expired.
func (kvStore) Get(key string) (val []byte, ok bool, err error) {
	b, err := fetch(func(p unsafe.Pointer, c uint32) int32 {
		return hostKVGet(sptr(key), uint32(len(key)), p, c)
	})
	if err == ErrAbsent {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return append([]byte(nil), b...), true, nil
}

// Set stores val under key; ttl > 0 expires it (millisecond resolution).
func (kvStore) Set(key string, val []byte, ttl time.Duration) error {
	return codeErr(hostKVSet(sptr(key), uint32(len(key)), ptr(val), uint32(len(val)), ttl.Milliseconds()))
}

// Incr adds delta to the integer under key (absent counts as 0) and returns
// the new value; ttl > 0 sets the expiry when the key is created.
func (kvStore) Incr(key string, delta int64, ttl time.Duration) (int64, error) {
	var n int64
	if code := hostKVIncr(sptr(key), uint32(len(key)), delta, ttl.Milliseconds(), unsafe.Pointer(&n)); code != 0 {
		return 0, codeErr(code)
	}
	return n, nil
}

// Delete removes key.
func (kvStore) Delete(key string) error {
	return codeErr(hostKVDelete(sptr(key), uint32(len(key))))
}
