// Package abi holds the numbers of OmniGate's WebAssembly policy ABI,
// version 1, shared by the host (plugins/wasm) and the Go guest SDK
// (sdk/wasm). ABI.md in the parent folder is the specification; this
// package only names its constants. It uses nothing but the language, so it
// compiles for any GOOS/GOARCH.
package abi

// Version is the ABI version this package describes. A module's
// omnigate_abi_version export must return it.
const Version = 1

// Module is the import module name of every host function.
const Module = "omnigate"

// Names of the module's exports.
const (
	ExportVersion    = "omnigate_abi_version"
	ExportStart      = "omnigate_start"
	ExportOnRequest  = "omnigate_on_request"
	ExportOnResponse = "omnigate_on_response"
	ExportMemory     = "memory"
)

// Phase bits, returned by omnigate_start.
const (
	// PhaseRequest: call omnigate_on_request for every request.
	PhaseRequest = 1
	// PhaseResponse: call omnigate_on_response with the buffered response.
	PhaseResponse = 2
	// PhaseRequestBody: buffer the request body (up to the host's cap)
	// before the request phase, so that body_get can return it.
	PhaseRequestBody = 4
)

// Actions, returned by omnigate_on_request and omnigate_on_response.
const (
	// ActionContinue passes the request on (request phase) or sends the
	// response as changed (response phase).
	ActionContinue = 0
	// ActionStop ends the request with the local reply the plugin set with
	// reply or deny.
	ActionStop = 1
	// ActionSkipResponse continues without the response phase for this
	// request (request phase only), so the response is not buffered.
	ActionSkipResponse = 2
)

// Results of host functions below zero.
const (
	// ErrAbsent: no such value (header, KV key, body, property).
	ErrAbsent = -1
	// ErrTooLarge: the body is larger than the host's cap.
	ErrTooLarge = -2
	// ErrEncoded: the response body has a Content-Encoding other than
	// identity; the plugin gets no plain bytes.
	ErrEncoded = -3
	// ErrInvalid: an argument is invalid (a header name, a status, a
	// pointer outside memory, JSON that does not parse).
	ErrInvalid = -4
	// ErrPhase: not allowed in the current phase.
	ErrPhase = -5
	// ErrBackend: the KV store failed.
	ErrBackend = -6
)

// Header maps, the first argument of the header functions.
const (
	MapRequest  = 0 // the request's headers
	MapResponse = 1 // the response's headers (response phase)
	MapReply    = 2 // the headers of the local reply
)

// Bodies, the first argument of body_get and json_extract.
const (
	BodyRequest  = 0
	BodyResponse = 1
)

// Properties, the first argument of get.
const (
	PropMethod              = 1
	PropPath                = 2
	PropQuery               = 3
	PropRoute               = 4
	PropClientIP            = 5
	PropRequestID           = 6
	PropUser                = 7
	PropRole                = 8
	PropScopes              = 9
	PropPatient             = 10
	PropSession             = 11
	PropAuthMethod          = 12
	PropFHIRInteraction     = 13
	PropFHIRType            = 14
	PropFHIRID              = 15
	PropFHIRVersionID       = 16
	PropFHIROperation       = 17
	PropFHIRCompartmentType = 18
	PropFHIRCompartmentID   = 19
	PropPluginName          = 20
	// PropIdentity is the whole identity in one call: user, role, scopes
	// (space-separated), patient, session and method, each followed by
	// "\n"; absent for anonymous requests.
	PropIdentity = 21
	// PropFHIRInteractions is every FHIR interaction of the request, one
	// line per interaction ("\n"-terminated), fields separated by "\t" in
	// the order of the Field constants, each field escaped (ABI.md): for a
	// batch or transaction POSTed to the FHIR base, one line per entry of
	// the Bundle, in order; for any other request on a FHIR route, one line
	// for the request itself. The host reads a batch's body for it (up to
	// max_request_body; ErrTooLarge over it, ErrInvalid when it is not a
	// batch or transaction Bundle). Absent outside FHIR routes.
	PropFHIRInteractions = 22
)

// Fields of a line of PropFHIRInteractions, in order. A line has at least
// InteractionFields fields; a later host may add fields at the end, which
// a guest ignores.
const (
	// FieldInteraction is the interaction, as property 13 names them; ""
	// when the entry (or the request's path) is not a FHIR RESTful
	// interaction.
	FieldInteraction = iota
	// FieldType is the resource type.
	FieldType
	// FieldID is the resource id.
	FieldID
	// FieldVersionID is the version of a vread.
	FieldVersionID
	// FieldOperation is an operation's name, without "$".
	FieldOperation
	// FieldCompartmentType and FieldCompartmentID name the compartment of
	// a compartment search.
	FieldCompartmentType
	FieldCompartmentID
	// FieldConditional is "1" for a conditional create, update, patch or
	// delete, else "0".
	FieldConditional
	// FieldMethod is the HTTP method, upper case.
	FieldMethod
	// FieldURL is the url relative to the FHIR base, with its query: an
	// entry's request.url as given, or the request's path below the base.
	FieldURL
	// FieldIfNoneExist is the criteria of a conditional create.
	FieldIfNoneExist
	// InteractionFields is the number of fields of a line in ABI v1.
	InteractionFields
)

// Log levels, the first argument of log.
const (
	LogDebug = 0
	LogInfo  = 1
	LogWarn  = 2
	LogError = 3
)
