package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/omnigate/omnigate/gateway/outcome"
)

// Error answers the request with an error in the route's format: a FHIR
// OperationOutcome on FHIR routes, an RFC 9457 problem (application/
// problem+json) elsewhere. Plugins use it for their local replies (401,
// 403, 429, …). msg must not contain tokens or PHI.
func Error(w http.ResponseWriter, r *http.Request, status int, msg string) {
	fhir := false
	if info, ok := RouteFrom(r.Context()); ok {
		fhir = info.FHIR
	}
	writeError(w, status, msg, fhir)
}

// WriteOutcome answers with a FHIR OperationOutcome on FHIR routes and with
// a problem document built from its first issue elsewhere.
func WriteOutcome(w http.ResponseWriter, r *http.Request, status int, oo *outcome.OperationOutcome) {
	if info, ok := RouteFrom(r.Context()); ok && !info.FHIR {
		msg := ""
		if len(oo.Issue) > 0 {
			msg = oo.Issue[0].Diagnostics
		}
		writeError(w, status, msg, false)
		return
	}
	outcome.Write(w, status, oo)
}

type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func writeError(w http.ResponseWriter, status int, msg string, fhir bool) {
	if fhir {
		outcome.Error(w, status, msg)
		return
	}
	body, _ := json.Marshal(problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: msg})
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(body)
}
