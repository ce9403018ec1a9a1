package fhir

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

type capParam struct {
	Name       string `json:"name"`
	Definition string `json:"definition,omitempty"`
	Type       string `json:"type"`
}

type capInteraction struct {
	Code string `json:"code"`
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
	SearchParam       []capParam       `json:"searchParam,omitempty"`
}

// capabilityStatement describes what the server supports: every resource
// type, its interactions and exactly the search parameters it evaluates.
func capabilityStatement(cfg *Config, now time.Time) ([]byte, error) {
	updateCreate := boolOr(cfg.UpdateCreate, true)
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
			r.SearchParam = append(r.SearchParam, capParam{Name: p.Code, Definition: p.URL, Type: p.Type})
			if p.Type == search.TypeReference {
				r.SearchInclude = append(r.SearchInclude, t+":"+p.Code)
			}
		}
		resources = append(resources, r)
	}
	cs := map[string]any{
		"resourceType": "CapabilityStatement",
		"status":       "active",
		"date":         now.UTC().Format("2006-01-02"),
		"publisher":    "OmniGate",
		"kind":         "instance",
		"software":     map[string]any{"name": "OmniGate embedded FHIR server"},
		"implementation": map[string]any{
			"description": "OmniGate embedded FHIR R4 server",
			"url":         cfg.BaseURL,
		},
		"fhirVersion": "4.0.1",
		"format":      []string{"application/fhir+json", "json"},
		"patchFormat": []string{"application/json-patch+json"},
		"rest": []any{map[string]any{
			"mode": "server",
			"documentation": "Search supports the parameter types string, token, reference, date, number, quantity and uri " +
				"with the modifiers :missing, :exact, :contains, :text, :not, :[type], :below and :above (uri), the prefixes " +
				"eq ne gt lt ge le sa eb ap, _sort, _count, _include, _revinclude (and :iterate), _summary, _elements and _total. " +
				"Composite search parameters, chained parameters, _has, _text, _content, _filter and _list are not supported.",
			"security":    map[string]any{"cors": len(cfg.CORS.AllowedOrigins) > 0},
			"resource":    resources,
			"interaction": []capInteraction{{"transaction"}, {"batch"}, {"history-system"}},
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
