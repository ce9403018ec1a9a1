package fhir

import (
	"net/http"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// Operation names and the canonical URLs of their definitions, as the
// CapabilityStatement declares them.
const (
	opEverything = "$everything"
	opExport     = "$export"
	// opExportStatus and opExportFile are where a bulk export is polled
	// and its files downloaded: operations of the server's own, so that
	// access control sees them as operations at the base.
	opExportStatus = "$export-poll-status"
	opExportFile   = "$export-file"

	defPatientEverything = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
	defExport            = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
	defPatientExport     = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
	defGroupExport       = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
)

// operation dispatches a request whose path names an operation ($…):
// $everything on Patient, $export at the base, on Patient and on a Group,
// the status and file endpoints of exports, and $validate on every type
// and instance. Anything else is 404
// not-supported, whoever asks.
func (h *Handler) operation(w http.ResponseWriter, req *request, method string) error {
	segs := req.segs
	op := segs[len(segs)-1]
	if !strings.HasPrefix(op, "$") {
		return notSupported(segs)
	}
	getOrPost := method == http.MethodGet || method == http.MethodPost
	if h.export == nil && strings.HasPrefix(op, opExport) {
		return notSupported(segs) // a Handler built without an export folder
	}
	switch {
	case len(segs) == 1 && op == opExport:
		if !getOrPost {
			return methodNotAllowed(req.Method, "GET", "HEAD", "POST")
		}
		return h.exportKickoff(w, req, exportSystem, "")
	case len(segs) == 1 && op == opExportStatus:
		switch req.Method {
		case http.MethodGet, http.MethodHead:
			return h.exportStatus(w, req)
		case http.MethodDelete:
			return h.exportCancel(w, req)
		}
		return methodNotAllowed(req.Method, "GET", "HEAD", "DELETE")
	case len(segs) == 1 && op == opExportFile:
		if method != http.MethodGet {
			return methodNotAllowed(req.Method, "GET", "HEAD")
		}
		return h.exportFile(w, req)
	case len(segs) == 2 && segs[0] == "Patient" && op == opEverything:
		if !getOrPost {
			return methodNotAllowed(req.Method, "GET", "HEAD", "POST")
		}
		return h.everything(w, req, "")
	case len(segs) == 2 && segs[0] == "Patient" && op == opExport:
		if !getOrPost {
			return methodNotAllowed(req.Method, "GET", "HEAD", "POST")
		}
		return h.exportKickoff(w, req, exportPatient, "")
	case len(segs) == 3 && segs[0] == "Patient" && op == opEverything:
		if !validID(segs[1]) {
			return errorf(http.StatusBadRequest, "invalid id %q", segs[1])
		}
		if !getOrPost {
			return methodNotAllowed(req.Method, "GET", "HEAD", "POST")
		}
		return h.everything(w, req, segs[1])
	case len(segs) == 2 && op == opValidate && spec.IsResourceType(segs[0]):
		if req.Method != http.MethodPost {
			return methodNotAllowed(req.Method, "POST")
		}
		return h.validateOp(w, req, segs[0], "")
	case len(segs) == 3 && op == opValidate && spec.IsResourceType(segs[0]):
		if !validID(segs[1]) {
			return errorf(http.StatusBadRequest, "invalid id %q", segs[1])
		}
		if !getOrPost {
			return methodNotAllowed(req.Method, "GET", "HEAD", "POST")
		}
		return h.validateOp(w, req, segs[0], segs[1])
	case len(segs) == 3 && segs[0] == "Group" && op == opExport:
		if !validID(segs[1]) {
			return errorf(http.StatusBadRequest, "invalid id %q", segs[1])
		}
		if !getOrPost {
			return methodNotAllowed(req.Method, "GET", "HEAD", "POST")
		}
		return h.exportKickoff(w, req, exportGroup, segs[1])
	}
	return notSupported(segs)
}

// notSupported is the 404 of an operation the server does not implement:
// whoever asks, and whatever access control allowed, none runs.
func notSupported(segs []string) error {
	name := ""
	for _, s := range segs {
		if strings.HasPrefix(s, "$") {
			name = s
			break
		}
	}
	he := errorf(http.StatusNotFound, "operation %s is not supported by this server", name)
	he.issues[0].Code = "not-supported"
	return he
}
