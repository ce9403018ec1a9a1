package audit

import (
	"bytes"
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// patientSet collects the ids of the patients concerned, in the order
// found, up to max; incomplete records that some were left out (or could
// not be looked for).
type patientSet struct {
	ids        []string
	max        int
	incomplete bool
}

func (s *patientSet) add(id string) {
	if !fhirreq.IsID(id) || slices.Contains(s.ids, id) {
		return
	}
	if len(s.ids) >= s.max {
		s.incomplete = true
		return
	}
	s.ids = append(s.ids, id)
}

// addRef adds the patient of a reference: "Patient/85",
// "Patient/85/_history/2" or an absolute URL ending so.
func (s *patientSet) addRef(ref string) {
	ref, _, _ = strings.Cut(ref, "?")
	ref, _, _ = strings.Cut(ref, "#")
	segs := strings.Split(ref, "/")
	for i := len(segs) - 2; i >= 0; i-- {
		if segs[i] == "Patient" {
			s.add(segs[i+1])
			return
		}
	}
}

func (s *patientSet) merge(o *patientSet) {
	for _, id := range o.ids {
		s.add(id)
	}
	s.incomplete = s.incomplete || o.incomplete
}

// fromPath adds the patient a path names: Patient/85 (and its history,
// vread and operations), and Patient/85/... compartment searches.
func (s *patientSet) fromPath(r fhirreq.Request) {
	if r.Type == "Patient" && r.ID != "" {
		s.add(r.ID)
	}
	if r.CompartmentType == "Patient" {
		s.add(r.CompartmentID)
	}
}

// fromQuery adds the patients a search (or a conditional write's
// criteria) names through the parameters that link typ to a patient (the
// Patient CompartmentDefinition's: Observation's subject and performer,
// …), patient, any parameter with the :Patient modifier, and _id on
// Patient. Bare ids count on patient, :Patient and _id only; other
// parameters count with a Patient/ reference. Chained parameters
// (subject.name=…) name no patient here: the results do.
func (s *patientSet) fromQuery(typ string, q url.Values) {
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	linking := access.CompartmentParams(typ)
	for _, key := range keys {
		name, mod, _ := strings.Cut(key, ":")
		if strings.Contains(name, ".") {
			continue
		}
		bare := name == "patient" || mod == "Patient" || typ == "Patient" && name == "_id"
		if !bare && !slices.Contains(linking, name) {
			continue
		}
		for _, v := range q[key] {
			for part := range strings.SplitSeq(v, ",") {
				part = strings.TrimSpace(part)
				switch {
				case strings.Contains(part, "/"):
					s.addRef(part)
				case bare:
					s.add(part)
				}
			}
		}
	}
}

// fromResource adds the patients whose compartment holds the resource
// (JSON): a Patient itself, an Observation's subject and performers, and
// so on (access.Compartments). typ and id, when known, save decoding them.
func (s *patientSet) fromResource(typ, id string, raw []byte) {
	// Only literal references count ("Patient/85", ".../Patient/85"): a
	// resource without one names no patient, unless it is a Patient.
	if !bytes.Contains(raw, patientBytes) || typ != "" && typ != "Patient" && typ != "Bundle" && !bytes.Contains(raw, patientRef) {
		return
	}
	if typ == "" {
		var head struct {
			ResourceType string `json:"resourceType"`
			ID           string `json:"id"`
		}
		if json.Unmarshal(raw, &head) != nil {
			return
		}
		typ, id = head.ResourceType, head.ID
	}
	switch {
	case typ == "Patient":
		s.add(id)
	case typ == "Bundle":
		s.fromBundle(raw)
	case access.InCompartment(typ):
		ids, err := access.Compartments(typ, id, raw)
		if err != nil {
			return
		}
		for _, p := range ids {
			s.add(p)
		}
	}
}

var (
	patientBytes = []byte("Patient")
	patientRef   = []byte("Patient/")
)

// fromBundle adds the patients of a search set or history Bundle's
// resources (matches and includes alike).
func (s *patientSet) fromBundle(raw []byte) {
	var b struct {
		Entry []struct {
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if json.Unmarshal(raw, &b) != nil {
		return
	}
	for _, e := range b.Entry {
		if len(e.Resource) > 0 {
			s.fromResource("", "", e.Resource)
		}
	}
}

// fromBody adds the patients of a response body: a resource or a Bundle.
func (s *patientSet) fromBody(body []byte) {
	if len(body) == 0 {
		return
	}
	var head struct {
		ResourceType string `json:"resourceType"`
		ID           string `json:"id"`
		Entry        []struct {
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if json.Unmarshal(body, &head) != nil {
		return
	}
	switch head.ResourceType {
	case "OperationOutcome":
	case "Bundle":
		for _, e := range head.Entry {
			if len(e.Resource) > 0 {
				s.fromResource("", "", e.Resource)
			}
		}
	default:
		s.fromResource(head.ResourceType, head.ID, body)
	}
}

// parseLocation reads Type/id[/_history/vid] from a Location header or a
// Bundle entry's response.location.
func parseLocation(loc string) (typ, id, vid string) {
	loc, _, _ = strings.Cut(loc, "?")
	segs := strings.Split(strings.TrimRight(loc, "/"), "/")
	n := len(segs)
	if n >= 4 && segs[n-2] == "_history" {
		typ, id, vid = segs[n-4], segs[n-3], segs[n-1]
	} else if n >= 2 {
		typ, id = segs[n-2], segs[n-1]
	}
	if !fhirreq.IsResourceType(typ) || !fhirreq.IsID(id) {
		return "", "", ""
	}
	if vid != "" && !fhirreq.IsID(vid) {
		vid = ""
	}
	return typ, id, vid
}

// statusCode reads the code of a Bundle entry's response.status ("201
// Created").
func statusCode(s string) int {
	code, _, _ := strings.Cut(strings.TrimSpace(s), " ")
	n, err := strconv.Atoi(code)
	if err != nil || n < 100 || n > 599 {
		return 0
	}
	return n
}

// interactionName is the record's interaction for a classified request.
func interactionName(r fhirreq.Request, ok bool) string {
	if !ok || r.Interaction == "" {
		return "unknown"
	}
	return r.Interaction
}

// describe fills the fields of rec that a classified request gives.
func describe(rec *Record, r fhirreq.Request, ok bool) {
	rec.Interaction = interactionName(r, ok)
	rec.Type, rec.ResourceID, rec.VersionID, rec.Operation = r.Type, r.ID, r.VersionID, r.Operation
	if r.CompartmentType != "" {
		rec.Compartment = r.CompartmentType + "/" + r.CompartmentID
	}
}

// needsResponse says whether an interaction's response body can name
// patients the path does not: not a delete, nor a read of a Patient (a
// Patient is in its own compartment; links to other patients are not
// followed).
func needsResponse(r fhirreq.Request, ok bool) bool {
	if !ok {
		return false
	}
	switch r.Interaction {
	case fhirreq.Delete, fhirreq.Capabilities:
		return false
	case fhirreq.Read, fhirreq.VRead, fhirreq.HistoryInstance:
		return r.Type != "Patient"
	}
	return true
}
