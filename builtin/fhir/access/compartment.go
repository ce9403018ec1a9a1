package access

import (
	"bytes"
	"encoding/json"
	"fmt"

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
// Patients). Only literal references ("Patient/85") count.
func Compartments(typ, id string, resource []byte) ([]string, error) {
	if !InCompartment(typ) {
		return nil, nil
	}
	d := json.NewDecoder(bytes.NewReader(resource))
	d.UseNumber()
	var tree any
	if err := d.Decode(&tree); err != nil {
		return nil, fmt.Errorf("decode %s: %w", typ, err)
	}
	return search.Compartments(typ, id, tree), nil
}
