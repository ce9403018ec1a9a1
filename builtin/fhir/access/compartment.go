package access

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sync"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// InCompartment reports whether resources of type typ can be members of a
// Patient compartment, as the official R4 CompartmentDefinition/patient
// draws it: Patient itself, and every type it lists with parameters.
func InCompartment(typ string) bool {
	_, ok := spec.PatientCompartment[typ]
	return ok || typ == "Patient"
}

// CompartmentParams returns the search parameters that link resources of
// type typ to a patient (Observation: subject, performer), nil for types
// outside the compartment. Patient's own is "link"; a Patient is in its own
// compartment through its id.
func CompartmentParams(typ string) []string { return spec.PatientCompartment[typ] }

// Compartments returns the ids of the patients whose compartment holds
// resource, the JSON of a resource of type typ with id id, evaluating the
// parameters of the CompartmentDefinition: a Patient is in its own, an
// Observation in its subject's and its performers' (when they are
// Patients). Only literal references ("Patient/85") count. Only the
// top-level elements those parameters read are decoded.
func Compartments(typ, id string, resource []byte) ([]string, error) {
	if !InCompartment(typ) {
		return nil, nil
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(resource, &members); err != nil {
		return nil, fmt.Errorf("decode %s: %w", typ, err)
	}
	keys := compartmentElements(typ)
	tree := make(map[string]any, len(keys)+1)
	tree["resourceType"] = typ
	for _, k := range keys {
		raw, ok := members[k]
		if !ok {
			continue
		}
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			return nil, fmt.Errorf("decode %s.%s: %w", typ, k, err)
		}
		tree[k] = v
	}
	return search.Compartments(typ, id, tree), nil
}

var (
	elementsMu sync.Mutex
	elements   = map[string][]string{}
)

// compartmentElements returns the top-level elements of typ that the
// expressions of its compartment parameters start from
// ("Observation.subject.where(…) | Observation.performer" reads subject
// and performer).
func compartmentElements(typ string) []string {
	elementsMu.Lock()
	defer elementsMu.Unlock()
	if ks, ok := elements[typ]; ok {
		return ks
	}
	var ks []string
	for _, code := range spec.PatientCompartment[typ] {
		for _, sp := range spec.SearchParams {
			if sp.Resource != typ || sp.Code != code {
				continue
			}
			for _, m := range topElement.FindAllStringSubmatch(sp.Expression, -1) {
				if m[1] == typ && !slices.Contains(ks, m[2]) {
					ks = append(ks, m[2])
				}
			}
		}
	}
	elements[typ] = ks
	return ks
}

// topElement finds "Type.element" at the start of a FHIRPath path.
var topElement = regexp.MustCompile(`(?:^|[|(\s])([A-Z][A-Za-z]+)\.([a-z][A-Za-z0-9]*)`)
