// Package outcome builds and writes FHIR R4 OperationOutcome resources, the
// error body of every FHIR interaction, for the gateway and its plugins.
package outcome

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// ContentType is the media type of FHIR JSON bodies.
const ContentType = "application/fhir+json; charset=utf-8"

// Issue is one problem reported by an OperationOutcome.
type Issue struct {
	// Severity is fatal, error, warning or information.
	Severity string `json:"severity"`
	// Code is from the FHIR IssueType value set (invalid, not-found, throttled, …).
	Code string `json:"code"`
	// Diagnostics is a human-readable explanation.
	Diagnostics string `json:"diagnostics,omitempty"`
	// Expression holds FHIRPath locations of the problem, e.g. Patient.birthDate.
	Expression []string `json:"expression,omitempty"`
}

// OperationOutcome is the FHIR resource that carries errors and warnings.
type OperationOutcome struct {
	ResourceType string  `json:"resourceType"`
	Issue        []Issue `json:"issue"`
}

// New returns an OperationOutcome with one error issue whose code fits the
// HTTP status (see CodeFor).
func New(status int, diagnostics string) *OperationOutcome {
	return &OperationOutcome{ResourceType: "OperationOutcome", Issue: []Issue{{
		Severity: SeverityFor(status), Code: CodeFor(status), Diagnostics: diagnostics,
	}}}
}

// Of returns an OperationOutcome holding the given issues.
func Of(issues ...Issue) *OperationOutcome {
	return &OperationOutcome{ResourceType: "OperationOutcome", Issue: issues}
}

// SeverityFor returns "error" for 4xx and "fatal" for 5xx statuses, and
// "information" otherwise.
func SeverityFor(status int) string {
	switch {
	case status >= 500:
		return "fatal"
	case status >= 400:
		return "error"
	}
	return "information"
}

// CodeFor maps an HTTP status to the FHIR IssueType code used with it.
func CodeFor(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid"
	case http.StatusUnauthorized:
		return "login"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not-found"
	case http.StatusMethodNotAllowed, http.StatusNotAcceptable, http.StatusUnsupportedMediaType:
		return "not-supported"
	case http.StatusConflict, http.StatusPreconditionFailed:
		return "conflict"
	case http.StatusGone:
		return "deleted"
	case http.StatusRequestEntityTooLarge:
		return "too-long"
	case http.StatusUnprocessableEntity:
		return "processing"
	case http.StatusTooManyRequests:
		return "throttled"
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return "transient"
	case http.StatusGatewayTimeout:
		return "timeout"
	}
	if status >= 500 {
		return "exception"
	}
	if status >= 400 {
		return "processing"
	}
	return "informational"
}

// Write sends oo with the given status as application/fhir+json.
func Write(w http.ResponseWriter, status int, oo *OperationOutcome) {
	body, err := json.Marshal(oo)
	if err != nil { // cannot happen for this type
		body = []byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception"}]}`)
	}
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(body)
}

// Error writes a one-issue OperationOutcome for status.
func Error(w http.ResponseWriter, status int, diagnostics string) {
	Write(w, status, New(status, diagnostics))
}
