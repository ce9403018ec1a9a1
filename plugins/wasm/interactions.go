package wasm

import (
	"net/http"
	"strings"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasm/abi"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// isBundlePost reports whether the request is a POST to the FHIR base of a
// FHIR route: a batch or a transaction, whose entries the interactions
// property lists.
func (ex *exchange) isBundlePost() bool {
	if ex.r.Method != http.MethodPost {
		return false
	}
	f, ok := ex.fhirRequest()
	return ok && f.Interaction == fhirreq.Batch
}

// interactions returns the value of abi.PropFHIRInteractions, worked out
// once per request: one line per FHIR interaction (ABI.md), or an error
// code. The body of a batch was read before the first guest call
// (ServeHTTP), so no guest call waits on the client.
func (ex *exchange) interactions() ([]byte, int32) {
	if ex.interDone {
		return ex.inter, ex.interCode
	}
	ex.interDone = true
	ex.inter, ex.interCode = ex.inter[:0], 0
	info, ok := gateway.RouteFrom(ex.r.Context())
	if !ok || !info.FHIR {
		ex.interCode = abi.ErrAbsent
		return nil, ex.interCode
	}
	base := basePath(info.Pattern)
	if !ex.isBundlePost() {
		r := ex.r
		e := fhirreq.RequestEntry(r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("If-None-Exist"), base)
		ex.inter = appendInteraction(ex.inter, &e)
		return ex.inter, 0
	}
	switch {
	case ex.p.opts.MaxRequestBody < 0, ex.reqBodyErr == abi.ErrTooLarge:
		ex.interCode = abi.ErrTooLarge
	case !ex.reqBodyRead || ex.reqBodyErr != 0:
		ex.interCode = abi.ErrInvalid // no body, or the client's body failed
	}
	if ex.interCode != 0 {
		return nil, ex.interCode
	}
	b, err := fhirreq.ParseBundle(ex.reqBody, base)
	if err != nil {
		ex.interCode = abi.ErrInvalid
		return nil, ex.interCode
	}
	for i := range b.Entries {
		ex.inter = appendInteraction(ex.inter, &b.Entries[i])
	}
	return ex.inter, 0
}

// appendInteraction appends e as a line of abi.PropFHIRInteractions.
func appendInteraction(b []byte, e *fhirreq.Entry) []byte {
	cond := "0"
	if e.Conditional() {
		cond = "1"
	}
	fields := [abi.InteractionFields]string{
		abi.FieldInteraction:     e.Interaction,
		abi.FieldType:            e.Type,
		abi.FieldID:              e.ID,
		abi.FieldVersionID:       e.VersionID,
		abi.FieldOperation:       e.Operation,
		abi.FieldCompartmentType: e.CompartmentType,
		abi.FieldCompartmentID:   e.CompartmentID,
		abi.FieldConditional:     cond,
		abi.FieldMethod:          strings.ToUpper(e.Method),
		abi.FieldURL:             e.URL,
		abi.FieldIfNoneExist:     e.IfNoneExist,
	}
	for i, f := range fields {
		if i > 0 {
			b = append(b, '\t')
		}
		b = appendEscaped(b, f)
	}
	return append(b, '\n')
}

// appendEscaped appends s with "%", the control bytes and DEL written as
// "%XX", so that a field never holds the tab or line feed that separate
// fields and lines.
func appendEscaped(b []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' || c < 0x20 || c == 0x7f {
			b = append(b, '%', hex[c>>4], hex[c&15])
			continue
		}
		b = append(b, c)
	}
	return b
}
