package wasm

import (
	"net/url"
	"strings"
	"unsafe"

	"github.com/omnigate/omnigate/sdk/wasm/abi"
)

// Interaction is one FHIR interaction of a request: the request itself, or
// one entry of a batch or transaction Bundle POSTed to the FHIR base.
type Interaction struct {
	// FHIR is the interaction as the host classified it: Interaction
	// (fhirreq.Read, fhirreq.Delete, …), Type, ID, VersionID, Operation,
	// CompartmentType and CompartmentID. Interaction is "" when the entry's
	// method and url (or the request's path) are not a FHIR RESTful
	// interaction: refuse such an entry, the server reads it otherwise
	// than a policy can.
	FHIR
	// Conditional is true for a conditional create, update, patch or
	// delete, whose target is found by a search (URL's query, or
	// IfNoneExist) rather than named by ID.
	Conditional bool
	// Method is the HTTP method, upper case.
	Method string
	// URL is the url relative to the FHIR base, with its query: a Bundle
	// entry's request.url as given ("Patient/p1", "Observation?code=x", or
	// an absolute url), or the request's path below the base.
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

// Interactions returns every FHIR interaction of the request, so that a
// policy decides each of them: for a batch or transaction POSTed to the
// FHIR base (FHIR().Interaction is "batch"), one per entry of the Bundle,
// in order; for any other request on a FHIR route, one for the request
// itself. A policy that looks at the method and path alone is bypassed by
// wrapping the same interaction in a batch: decide on these instead.
//
// The host reads a batch's body for it, whether or not the plugin called
// ReadRequestBody. Errors: ErrAbsent outside FHIR routes; ErrTooLarge when
// the batch's body is over the plugin's max_request_body, ErrInvalid when
// it is not a batch or transaction Bundle the host can read (XML, a body
// that failed), and ErrUnsupported from a gateway older than the list:
// refuse the request on any of these three, since its entries are unknown.
// It works in both phases.
func (r *Request) Interactions() ([]Interaction, error) {
	if !r.interHave {
		r.inter, r.interErr = getInteractions()
		r.interHave = true
	}
	return r.inter, r.interErr
}

func getInteractions() ([]Interaction, error) {
	b, err := fetch(func(p unsafe.Pointer, c uint32) int32 { return hostGet(abi.PropFHIRInteractions, p, c) })
	if err == ErrAbsent && getProp(abi.PropFHIRInteraction) != "" {
		// A FHIR request, but a host without the list: it would let a
		// batch's entries through unseen.
		return nil, ErrUnsupported
	}
	if err != nil {
		return nil, err
	}
	return parseInteractions(string(b))
}

// parseInteractions reads the value of abi.PropFHIRInteractions: lines
// ending in "\n", fields separated by "\t", each field with "%XX" escapes.
// It returns ErrInvalid for a value the host would not write.
func parseInteractions(s string) ([]Interaction, error) {
	if s == "" {
		return []Interaction{}, nil // a Bundle without entries
	}
	if s[len(s)-1] != '\n' {
		return nil, ErrInvalid
	}
	out := make([]Interaction, 0, strings.Count(s, "\n"))
	var f [abi.InteractionFields]string
	for line := range strings.SplitSeq(s[:len(s)-1], "\n") {
		rest := line
		for i := range f {
			var field string
			var more bool
			field, rest, more = strings.Cut(rest, "\t")
			if !more && i < len(f)-1 {
				return nil, ErrInvalid
			}
			v, ok := unescapeField(field)
			if !ok {
				return nil, ErrInvalid
			}
			f[i] = v
		}
		var in Interaction
		switch f[abi.FieldConditional] {
		case "1":
			in.Conditional = true
		case "0":
		default:
			return nil, ErrInvalid
		}
		in.Interaction = f[abi.FieldInteraction]
		in.Type = f[abi.FieldType]
		in.ID = f[abi.FieldID]
		in.VersionID = f[abi.FieldVersionID]
		in.Operation = f[abi.FieldOperation]
		in.CompartmentType = f[abi.FieldCompartmentType]
		in.CompartmentID = f[abi.FieldCompartmentID]
		in.Method = f[abi.FieldMethod]
		in.URL = f[abi.FieldURL]
		in.IfNoneExist = f[abi.FieldIfNoneExist]
		out = append(out, in)
	}
	return out, nil
}

// unescapeField decodes the "%XX" escapes of a field.
func unescapeField(s string) (string, bool) {
	n := strings.IndexByte(s, '%')
	if n < 0 {
		return s, true
	}
	b := make([]byte, 0, len(s))
	b = append(b, s[:n]...)
	for i := n; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", false
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	return string(b), true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
