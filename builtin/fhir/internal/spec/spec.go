// Package spec holds the FHIR R4 (4.0.1) tables the server needs at run
// time, generated from the official definitions by ../gen: resource types,
// data type names, search parameters, the Patient compartment, summary
// elements, the official JSON schema (gzip-compressed), and the core
// validation tables.
package spec

//go:generate go run ../gen -defs ../gen/defs -out .

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"fmt"
	"io"
	"sort"
)

// SearchParam is one search parameter of one resource type.
type SearchParam struct {
	// Resource is the resource type it applies to.
	Resource string
	// Code is the name used in queries ("patient", "_tag").
	Code string
	// Type is number, date, string, token, reference, quantity or uri.
	Type string
	// Expression is the FHIRPath expression that selects the values to
	// index, restricted to Resource.
	Expression string
	// Target lists the resource types a reference parameter may point to.
	Target []string
	// URL is the canonical URL of the SearchParameter definition.
	URL string
}

// CompositeParam is one composite search parameter of one resource type:
// its value is one value per component, joined by "$", and a resource
// matches when one element instance that Expression selects matches every
// component.
type CompositeParam struct {
	// Resource is the resource type it applies to.
	Resource string
	// Code is the name used in queries ("code-value-quantity").
	Code string
	// Expression selects the element instances ("Observation.component").
	Expression string
	// URL is the canonical URL of the SearchParameter definition.
	URL string
	// Components are the parts of a value, in order.
	Components []Component
}

// Component is one part of a composite parameter.
type Component struct {
	// Code is the code of the component's own parameter ("code").
	Code string
	// Type is that parameter's type (token, quantity, …).
	Type string
	// Expression selects the component's values from one instance; after
	// "%resource." it is evaluated on the resource instead.
	Expression string
}

//go:embed fhir.schema.json.gz
var schemaGz []byte

// ConformanceTables is the core validation tables, gzip-compressed JSON:
// the part of each R4 StructureDefinition of a resource or data type that
// validation reads, and the expansions of the value sets of their required
// bindings (the profile package decodes them).
//
//go:embed conformance.json.gz
var ConformanceTables []byte

// Schema returns the official FHIR R4 JSON schema (draft-06), decompressed.
func Schema() ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(schemaGz))
	if err != nil {
		return nil, fmt.Errorf("open embedded schema: %w", err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("read embedded schema: %w", err)
	}
	return data, nil
}

// IsResourceType reports whether t is an R4 resource type.
func IsResourceType(t string) bool {
	i := sort.SearchStrings(ResourceTypes, t)
	return i < len(ResourceTypes) && ResourceTypes[i] == t
}
