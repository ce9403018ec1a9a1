// Command phi-redact removes or masks PHI elements (telecom, address,
// identifier by default) in FHIR responses, single resources and search
// Bundles alike, for callers whose role has no PHI access. The host
// rewrites the JSON (json_mask), so a 20 KB Bundle costs microseconds, not
// the guest's milliseconds.
//
// Build it with "omnigate plugin build ./examples/phi-redact".
package main

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/sdk/wasm"
)

var config = struct {
	// PHIRoles see responses unchanged. Default [physician, nurse].
	PHIRoles []string `json:"phi_roles"`
	// Fields are the top-level elements to redact. Default [telecom,
	// address, identifier].
	Fields []string `json:"fields"`
	// Replacement is the JSON value put in their place; null (the default)
	// removes them.
	Replacement json.RawMessage `json:"replacement"`
}{
	PHIRoles: []string{"physician", "nurse"},
	Fields:   []string{"telecom", "address", "identifier"},
}

var replacement string

func init() {
	wasm.OnStart(func() error {
		if err := wasm.DecodeConfig(&config); err != nil {
			return err
		}
		if len(config.Fields) == 0 {
			return errors.New("config: fields must not be empty")
		}
		if r := strings.TrimSpace(string(config.Replacement)); r != "" && r != "null" {
			replacement = r
		}
		return nil
	})
	wasm.OnRequest(func(r *wasm.Request) {
		if hasPHIAccess(r) {
			r.SkipResponse() // nothing to redact: do not buffer the response
		}
	})
	wasm.OnResponse(func(w *wasm.Response) {
		if hasPHIAccess(w.Request) || !isJSON(w.Header.Get("Content-Type")) {
			return
		}
		n, err := w.MaskFields(config.Fields, replacement)
		switch {
		case err == nil:
			if n > 0 {
				wasm.Count("redacted_elements", int64(n))
				w.Header.Set("X-PHI-Redacted", strconv.Itoa(n))
			}
		case errors.Is(err, wasm.ErrInvalid) && w.Status() >= 300:
			// An error answer that is not a resource: nothing to redact.
		default:
			// Too large, compressed or not JSON: never let it through unredacted.
			wasm.Count("withheld", 1)
			wasm.Warnf("phi-redact withheld a response it could not redact: %v", err)
			w.Deny(502, "the response could not be redacted")
		}
	})
}

func hasPHIAccess(r *wasm.Request) bool {
	id := r.Identity()
	return id != nil && slices.Contains(config.PHIRoles, id.Role)
}

func isJSON(ct string) bool {
	ct, _, _ = strings.Cut(ct, ";")
	ct = strings.TrimSpace(strings.ToLower(ct))
	return ct == "application/fhir+json" || ct == "application/json" || strings.HasSuffix(ct, "+json")
}

func main() {}
