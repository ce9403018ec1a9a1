package fhir

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

type capParam struct {
	Name          string `json:"name"`
	Definition    string `json:"definition,omitempty"`
	Type          string `json:"type"`
	Documentation string `json:"documentation,omitempty"`
}

// unknownDoc says what a search does with an unknown parameter, by
// SearchConfig.lenient.
var unknownDoc = map[bool]string{
	false: "A parameter the type does not define is a 400 unless the request sends Prefer: handling=lenient.",
	true:  "A parameter the type does not define is ignored unless the request sends Prefer: handling=strict.",
}

// chainDoc documents, on each reference parameter, the chains it takes.
var chainDoc = fmt.Sprintf("Chainable: [name][:Type].[parameter of the target], and the target of _has; "+
	"up to %d references per parameter.", search.MaxChainDepth)

type capInteraction struct {
	Code string `json:"code"`
}

type capOperation struct {
	Name       string `json:"name"`
	Definition string `json:"definition"`
}

type capResource struct {
	Type              string           `json:"type"`
	Interaction       []capInteraction `json:"interaction"`
	Versioning        string           `json:"versioning"`
	ReadHistory       bool             `json:"readHistory"`
	UpdateCreate      bool             `json:"updateCreate"`
	ConditionalCreate bool             `json:"conditionalCreate"`
	ConditionalRead   string           `json:"conditionalRead"`
	ConditionalUpdate bool             `json:"conditionalUpdate"`
	ConditionalDelete string           `json:"conditionalDelete"`
	SearchInclude     []string         `json:"searchInclude,omitempty"`
	SearchRevInclude  []string         `json:"searchRevInclude,omitempty"`
	SearchParam       []capParam       `json:"searchParam,omitempty"`
	Operation         []capOperation   `json:"operation,omitempty"`
}

// systemParams are the search parameters of a search across types
// ([base]?_type=…) that every type defines.
var systemParams = []capParam{
	{Name: "_id", Type: "token", Definition: "http://hl7.org/fhir/SearchParameter/Resource-id"},
	{Name: "_lastUpdated", Type: "date", Definition: "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"},
	{Name: "_tag", Type: "token", Definition: "http://hl7.org/fhir/SearchParameter/Resource-tag"},
	{Name: "_profile", Type: "uri", Definition: "http://hl7.org/fhir/SearchParameter/Resource-profile"},
	{Name: "_security", Type: "token", Definition: "http://hl7.org/fhir/SearchParameter/Resource-security"},
}

// revIncludes lists, for each resource type, the _revinclude values that
// find resources referring to it: Source:parameter for every reference
// parameter whose targets include the type.
func revIncludes() map[string][]string {
	out := map[string][]string{}
	for _, src := range spec.ResourceTypes {
		for _, p := range search.Params(src) {
			if p.Type != search.TypeReference {
				continue
			}
			for _, t := range p.Target {
				if spec.IsResourceType(t) {
					out[t] = append(out[t], src+":"+p.Code)
				}
			}
		}
	}
	return out
}

// typeOperations are the operations invoked on a resource type.
var typeOperations = map[string][]capOperation{
	"Patient": {{"everything", defPatientEverything}, {"export", defPatientExport}},
	"Group":   {{"export", defGroupExport}},
}

// capabilityStatement describes what the server supports: every resource
// type, its interactions and exactly the search parameters it evaluates.
func capabilityStatement(cfg *Config, now time.Time) ([]byte, error) {
	updateCreate := boolOr(cfg.UpdateCreate, true)
	revs := revIncludes()
	var resources []capResource
	for _, t := range spec.ResourceTypes {
		r := capResource{
			Type:              t,
			Versioning:        "versioned-update",
			ReadHistory:       true,
			UpdateCreate:      updateCreate,
			ConditionalCreate: true,
			ConditionalRead:   "full-support",
			ConditionalUpdate: true,
			ConditionalDelete: "single",
		}
		for _, c := range []string{"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"} {
			r.Interaction = append(r.Interaction, capInteraction{c})
		}
		r.SearchParam = append(r.SearchParam, capParam{Name: "_id", Type: "token", Definition: "http://hl7.org/fhir/SearchParameter/Resource-id"},
			capParam{Name: "_lastUpdated", Type: "date", Definition: "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"})
		for _, p := range search.Params(t) {
			if p.Code == "_id" || p.Code == "_lastUpdated" {
				continue
			}
			cp := capParam{Name: p.Code, Definition: p.URL, Type: p.Type}
			if p.Type == search.TypeReference {
				cp.Documentation = chainDoc
			}
			r.SearchParam = append(r.SearchParam, cp)
			if p.Type == search.TypeReference {
				r.SearchInclude = append(r.SearchInclude, t+":"+p.Code)
			}
		}
		r.SearchRevInclude = revs[t]
		r.Operation = append(slices.Clone(typeOperations[t]), capOperation{"validate", defValidate})
		resources = append(resources, r)
	}
	security := map[string]any{"cors": len(cfg.CORS.AllowedOrigins) > 0}
	if sm := cfg.SMART; sm.Configured() {
		var uris []map[string]any
		for _, u := range []struct{ name, uri string }{{"authorize", sm.AuthorizationEndpoint}, {"token", sm.TokenEndpoint}} {
			if u.uri != "" {
				uris = append(uris, map[string]any{"url": u.name, "valueUri": u.uri})
			}
		}
		security["extension"] = []any{map[string]any{
			"url":       "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
			"extension": uris,
		}}
		security["service"] = []any{map[string]any{
			"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}},
			"text":   "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
		}}
	}
	cs := map[string]any{
		"resourceType": "CapabilityStatement",
		"status":       "active",
		"date":         now.UTC().Format("2006-01-02"),
		"publisher":    "OmniGate",
		"kind":         "instance",
		"instantiates": []string{"http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"},
		"software":     map[string]any{"name": "OmniGate embedded FHIR server"},
		"implementation": map[string]any{
			"description": "OmniGate embedded FHIR R4 server",
			"url":         cfg.BaseURL,
		},
		"fhirVersion": "4.0.1",
		"format":      []string{"application/fhir+json", "json"},
		"patchFormat": []string{"application/json-patch+json", "application/fhir+json"},
		"rest": []any{map[string]any{
			"mode": "server",
			"documentation": "Search supports the parameter types string, token, reference, date, number, quantity, uri and composite " +
				"with the modifiers :missing, :exact, :contains, :text, :not, :of-type (identifiers), :[type], :below and :above (uri), the prefixes " +
				"eq ne gt lt ge le sa eb ap, _sort, _count, _include, _revinclude (and :iterate), _summary, _elements and _total. " +
				"A reference may be searched by its absolute URL on this server. A search across types ([base]?_type=…) takes the " +
				"parameters every listed type defines. PATCH takes a JSON Patch or a FHIRPath Patch (element paths with [index], " +
				"where(), first() and last()). $everything takes _since, _type and _count; $export (Bulk Data 2.0) takes " +
				"_outputFormat, _since, _type, _typeFilter and patient. " +
				fmt.Sprintf("Chained parameters (subject:Patient.name) and _has (nested) follow up to %d references, within what the caller may read. ", search.MaxChainDepth) +
				"Composite parameters match within one element instance. " + unknownDoc[cfg.Search.lenient()] +
				" _text, _content, _filter and _list are not supported.",
			"security":    security,
			"resource":    resources,
			"interaction": []capInteraction{{"transaction"}, {"batch"}, {"search-system"}, {"history-system"}},
			"searchParam": systemParams,
			"operation":   []capOperation{{"export", defExport}},
		}},
	}
	if cfg.BaseURL == "" {
		delete(cs["implementation"].(map[string]any), "url")
	}
	b, err := json.Marshal(cs)
	if err != nil {
		return nil, fmt.Errorf("encode CapabilityStatement: %w", err)
	}
	return b, nil
}
