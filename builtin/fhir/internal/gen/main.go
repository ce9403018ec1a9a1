// Command gen generates the FHIR R4 tables the server needs at run time
// from the official definitions: the resource and data type lists, the
// search parameter table (every non-composite parameter whose expression the
// fhirpath package compiles), the Patient compartment, the summary elements
// of each resource type, the types of the elements of every resource and
// complex data type (zz_elements.go), a gzip copy of the JSON schema, and
// the core validation tables (conformance.json.gz: the part of each
// StructureDefinition that validation reads, and the expansions of the
// value sets of required bindings, from valuesets.json). With -report it
// prints what validation skips (invariants, value sets it cannot expand
// offline) instead.
//
// Run it with go generate in builtin/fhir/internal/spec, or by hand:
//
//	go run ./builtin/fhir/internal/gen -out builtin/fhir/internal/spec
//
// Its input is the folder -defs (default: the gzip copies of the official
// definitions committed in builtin/fhir/internal/gen/defs, see its README);
// each file is read as it is or, when absent, from its .gz copy.
package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"go/format"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/fhirpath"
)

func main() {
	defs := flag.String("defs", "builtin/fhir/internal/gen/defs", "folder with the R4 definitions (search-parameters.json, …, or their .gz copies)")
	out := flag.String("out", "builtin/fhir/internal/spec", "folder of the generated package")
	report := flag.Bool("report", false, "print the invariants and required bindings that validation skips, and write nothing")
	flag.Parse()
	if *report {
		_, rep, err := conformanceTables(*defs)
		if err != nil {
			log.Fatal(err)
		}
		printReport(os.Stdout, rep)
		return
	}
	if err := run(*defs, *out); err != nil {
		log.Fatal(err)
	}
}

type bundle struct {
	Entry []struct {
		Resource json.RawMessage `json:"resource"`
	} `json:"entry"`
}

type structureDef struct {
	ResourceType   string `json:"resourceType"`
	ID             string `json:"id"`
	Kind           string `json:"kind"`
	Abstract       bool   `json:"abstract"`
	Derivation     string `json:"derivation"`
	Type           string `json:"type"`
	FHIRVersion    string `json:"fhirVersion"`
	BaseDefinition string `json:"baseDefinition"`
	Snapshot       struct {
		Element []elementDef `json:"element"`
	} `json:"snapshot"`
}

type elementDef struct {
	Path      string `json:"path"`
	IsSummary bool   `json:"isSummary"`
	Min       int    `json:"min"`
	Type      []struct {
		Code      string `json:"code"`
		Extension []struct {
			URL      string `json:"url"`
			ValueURL string `json:"valueUrl"`
		} `json:"extension"`
	} `json:"type"`
	ContentReference string `json:"contentReference"`
}

type searchParam struct {
	ResourceType string   `json:"resourceType"`
	URL          string   `json:"url"`
	Code         string   `json:"code"`
	Base         []string `json:"base"`
	Type         string   `json:"type"`
	Expression   string   `json:"expression"`
	Target       []string `json:"target"`
	Component    []struct {
		Definition string `json:"definition"`
		Expression string `json:"expression"`
	} `json:"component"`
}

// compositeParam is a composite parameter of one resource type with its
// components resolved.
type compositeParam struct {
	ResourceType, Code, Expression, URL string
	Components                          []component
}

type component struct{ Code, Type, Expression string }

type compartmentDef struct {
	Resource []struct {
		Code  string   `json:"code"`
		Param []string `json:"param"`
	} `json:"resource"`
}

func readBundle(file string) ([]json.RawMessage, error) {
	data, err := readDef(file)
	if err != nil {
		return nil, err
	}
	var b bundle
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("decode %s: %w", file, err)
	}
	out := make([]json.RawMessage, len(b.Entry))
	for i, e := range b.Entry {
		out[i] = e.Resource
	}
	return out, nil
}

func run(defs, out string) error {
	resources, err := readStructureDefs(filepath.Join(defs, "profiles-resources.json"))
	if err != nil {
		return err
	}
	types, err := readStructureDefs(filepath.Join(defs, "profiles-types.json"))
	if err != nil {
		return err
	}
	var resourceTypes, domainTypes []string
	summary := map[string][]string{}
	for _, sd := range resources {
		// The definitions also hold a few later (R4B) types: keep R4's.
		if sd.Kind != "resource" || sd.Abstract || sd.Derivation != "specialization" || sd.FHIRVersion != "4.0.1" {
			continue
		}
		resourceTypes = append(resourceTypes, sd.Type)
		if strings.HasSuffix(sd.BaseDefinition, "/DomainResource") {
			domainTypes = append(domainTypes, sd.Type)
		}
		for _, el := range sd.Snapshot.Element {
			rest, ok := strings.CutPrefix(el.Path, sd.Type+".")
			if !ok || strings.Contains(rest, ".") || !(el.IsSummary || el.Min > 0) {
				continue
			}
			summary[sd.Type] = append(summary[sd.Type], strings.TrimSuffix(rest, "[x]"))
		}
	}
	sort.Strings(resourceTypes)
	dataTypes := map[string]string{}
	for _, sd := range types {
		if sd.Derivation == "constraint" || sd.Kind == "logical" || sd.FHIRVersion != "4.0.1" {
			continue
		}
		dataTypes[strings.ToUpper(sd.Type[:1])+sd.Type[1:]] = sd.Type
	}
	for _, t := range resourceTypes {
		dataTypes[t] = t
	}

	elements := elementTypes(resources, types)

	params, err := readSearchParams(filepath.Join(defs, "search-parameters.json"), resourceTypes, domainTypes)
	if err != nil {
		return err
	}
	composites, err := readComposites(filepath.Join(defs, "search-parameters.json"), resourceTypes)
	if err != nil {
		return err
	}
	comp, err := readCompartment(filepath.Join(defs, "compartmentdefinition-patient.json"))
	if err != nil {
		return err
	}

	var b bytes.Buffer
	b.WriteString("// Code generated by builtin/fhir/internal/gen from the FHIR R4 (4.0.1) definitions; DO NOT EDIT.\n\npackage spec\n\n")
	b.WriteString("// ResourceTypes lists every concrete R4 resource type, sorted.\nvar ResourceTypes = []string{\n")
	for _, t := range resourceTypes {
		fmt.Fprintf(&b, "\t%q,\n", t)
	}
	b.WriteString("}\n\n// DataTypes maps a type name with its first letter upper-cased (the\n// suffix of a choice element such as valueDateTime) to the type name.\nvar DataTypes = map[string]string{\n")
	for _, k := range sortedKeys(dataTypes) {
		fmt.Fprintf(&b, "\t%q: %q,\n", k, dataTypes[k])
	}
	b.WriteString("}\n\n// SearchParams lists, per resource type, every non-composite search\n// parameter whose expression the server evaluates, sorted by type and code.\n// Expression keeps only the parts of the official expression that apply to\n// Resource.\nvar SearchParams = []SearchParam{\n")
	for _, p := range params {
		fmt.Fprintf(&b, "\t{Resource: %q, Code: %q, Type: %q, Expression: %q, Target: %#v, URL: %q},\n",
			p.ResourceType, p.Code, p.Type, p.Expression, p.Target, p.URL)
	}
	b.WriteString("}\n\n// CompositeParams lists, per resource type, every composite search\n// parameter of R4, sorted by type and code: Expression selects the\n// element instances, and each component's expression, evaluated on one\n// instance (or on the resource, after \"%resource.\"), selects the values\n// of that component.\nvar CompositeParams = []CompositeParam{\n")
	for _, p := range composites {
		fmt.Fprintf(&b, "\t{Resource: %q, Code: %q, Expression: %q, URL: %q, Components: []Component{", p.ResourceType, p.Code, p.Expression, p.URL)
		for i, c := range p.Components {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "{Code: %q, Type: %q, Expression: %q}", c.Code, c.Type, c.Expression)
		}
		b.WriteString("}},\n")
	}
	b.WriteString("}\n\n// PatientCompartment maps each resource type that can be in a Patient's\n// compartment to the search parameters that link it to the patient.\nvar PatientCompartment = map[string][]string{\n")
	for _, k := range sortedKeys(comp) {
		fmt.Fprintf(&b, "\t%q: %#v,\n", k, comp[k])
	}
	b.WriteString("}\n\n// SummaryElements lists the top-level elements of each resource type that\n// are part of its summary (isSummary or mandatory), choice elements without\n// their [x].\nvar SummaryElements = map[string][]string{\n")
	for _, k := range sortedKeys(summary) {
		fmt.Fprintf(&b, "\t%q: %#v,\n", k, summary[k])
	}
	b.WriteString("}\n")
	src, err := format.Source(b.Bytes())
	if err != nil {
		return fmt.Errorf("format generated source: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, "zz_generated.go"), src, 0o644); err != nil {
		return err
	}
	if err := writeElements(filepath.Join(out, "zz_elements.go"), elements); err != nil {
		return err
	}
	tables, _, err := conformanceTables(defs)
	if err != nil {
		return err
	}
	if err := writeConformance(filepath.Join(out, "conformance.json.gz"), tables); err != nil {
		return err
	}
	return writeSchema(filepath.Join(defs, "fhir.schema.json"), filepath.Join(out, "fhir.schema.json.gz"))
}

// linkTypes are the primitive types whose values a transaction rewrites
// (with xhtml, the narrative, whose links it rewrites): the element types
// the elements table keeps besides complex types.
var linkTypes = map[string]bool{"uri": true, "url": true, "oid": true, "uuid": true, "canonical": true, "xhtml": true}

// elementTypes maps each context (a resource type, a complex data type,
// or the path of a backbone element) and the JSON name of each of its
// elements to the element's type, leaving out the elements of primitive
// types other than linkTypes. A choice element value[x] appears once per
// type, under its JSON name (valueQuantity).
func elementTypes(resources, types []structureDef) map[string]map[string]string {
	out := map[string]map[string]string{}
	add := func(sd structureDef) {
		for _, el := range sd.Snapshot.Element {
			i := strings.LastIndexByte(el.Path, '.')
			if i < 0 {
				continue // the root
			}
			ctx, name := el.Path[:i], el.Path[i+1:]
			put := func(json, typ string) {
				if out[ctx] == nil {
					out[ctx] = map[string]string{}
				}
				out[ctx][json] = typ
			}
			if el.ContentReference != "" {
				put(name, strings.TrimPrefix(el.ContentReference, "#"))
				continue
			}
			base, choice := strings.CutSuffix(name, "[x]")
			for _, t := range el.Type {
				code := t.Code
				if strings.HasPrefix(code, "http://hl7.org/fhirpath/System.") {
					// The value of a primitive, id and url: the FHIR type
					// is in an extension.
					for _, x := range t.Extension {
						if strings.HasSuffix(x.URL, "/structuredefinition-fhir-type") {
							code = x.ValueURL
						}
					}
				}
				json := name
				if choice {
					json = base + strings.ToUpper(code[:1]) + code[1:]
				}
				switch {
				case code == "BackboneElement" || code == "Element" && !choice:
					put(json, el.Path)
				case linkTypes[code]:
					put(json, code)
				case code != "" && code[0] >= 'A' && code[0] <= 'Z':
					put(json, code)
				}
			}
		}
	}
	for _, sd := range resources {
		if sd.Kind != "resource" || sd.Abstract || sd.Derivation != "specialization" || sd.FHIRVersion != "4.0.1" {
			continue
		}
		add(sd)
	}
	for _, sd := range types {
		if sd.Kind != "complex-type" || sd.Derivation == "constraint" || sd.FHIRVersion != "4.0.1" {
			continue
		}
		add(sd)
	}
	return out
}

func writeElements(file string, elements map[string]map[string]string) error {
	var b bytes.Buffer
	b.WriteString("// Code generated by builtin/fhir/internal/gen from the FHIR R4 (4.0.1) definitions; DO NOT EDIT.\n\npackage spec\n\n")
	b.WriteString(`// Elements maps a context (a resource type, a complex data type, or the
// path of a backbone element such as "Observation.component") and the JSON
// name of one of its elements to the element's type: a complex data type,
// "Resource", the path of a backbone element (the context of its own
// elements), or one of the primitive types uri, url, oid, uuid, canonical
// and xhtml. A choice element appears once per type under its JSON name
// (Observation.valueQuantity: Quantity). Elements of the other primitive
// types (string, code, dateTime, …) are left out. Generated from the
// StructureDefinitions of R4's resources and data types.
var Elements = map[string]map[string]string{
`)
	for _, ctx := range sortedKeys(elements) {
		fmt.Fprintf(&b, "\t%q: {", ctx)
		for i, k := range sortedKeys(elements[ctx]) {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q: %q", k, elements[ctx][k])
		}
		b.WriteString("},\n")
	}
	b.WriteString("}\n")
	src, err := format.Source(b.Bytes())
	if err != nil {
		return fmt.Errorf("format generated elements: %w", err)
	}
	return os.WriteFile(file, src, 0o644)
}

func readStructureDefs(file string) ([]structureDef, error) {
	raws, err := readBundle(file)
	if err != nil {
		return nil, err
	}
	var out []structureDef
	for _, r := range raws {
		var head struct {
			ResourceType string `json:"resourceType"`
		}
		if err := json.Unmarshal(r, &head); err != nil || head.ResourceType != "StructureDefinition" {
			continue
		}
		var sd structureDef
		if err := json.Unmarshal(r, &sd); err != nil {
			return nil, fmt.Errorf("decode %s: %w", file, err)
		}
		out = append(out, sd)
	}
	return out, nil
}

// readSearchParams expands each parameter to the resource types it applies
// to, keeping the parts of the expression for that type.
func readSearchParams(file string, resourceTypes, domainTypes []string) ([]searchParam, error) {
	raws, err := readBundle(file)
	if err != nil {
		return nil, err
	}
	var out []searchParam
	seen := map[string]bool{}
	for _, r := range raws {
		var sp searchParam
		if err := json.Unmarshal(r, &sp); err != nil {
			return nil, fmt.Errorf("decode %s: %w", file, err)
		}
		if sp.Type == "composite" || sp.Type == "special" || sp.Expression == "" {
			continue
		}
		for _, base := range sp.Base {
			var bases []string
			switch base {
			case "Resource":
				bases = resourceTypes
			case "DomainResource":
				bases = domainTypes
			default:
				bases = []string{base}
			}
			for _, t := range bases {
				expr := exprFor(sp.Expression, t, base)
				if expr == "" {
					log.Printf("skip %s %s: no expression part for %s", sp.URL, sp.Code, t)
					continue
				}
				if _, err := fhirpath.Parse(expr); err != nil {
					log.Printf("skip %s: %v", sp.URL, err)
					continue
				}
				key := t + "." + sp.Code
				if seen[key] {
					continue
				}
				seen[key] = true
				p := sp
				p.ResourceType, p.Expression = t, expr
				p.Base = nil
				if len(p.Target) == 0 {
					p.Target = nil
				}
				out = append(out, p)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ResourceType != out[j].ResourceType {
			return out[i].ResourceType < out[j].ResourceType
		}
		return out[i].Code < out[j].Code
	})
	return out, nil
}

// exprFor keeps the union members of expr that start with typ or base.
func exprFor(expr, typ, base string) string {
	parts := splitUnion(expr)
	var keep []string
	for _, p := range parts {
		head := strings.TrimLeft(strings.TrimSpace(p), "(")
		if i := strings.IndexAny(head, ". "); i >= 0 {
			head = head[:i]
		}
		switch {
		case head == typ || head == base || head == "Resource" || head == "DomainResource":
			keep = append(keep, strings.TrimSpace(p))
		case head != "" && head[0] >= 'a' && head[0] <= 'z' && base == typ:
			// A path relative to the resource ("name | alias").
			keep = append(keep, typ+"."+strings.TrimSpace(p))
		}
	}
	return strings.Join(keep, " | ")
}

// splitUnion splits expr at the "|" operators outside parentheses and
// string literals.
func splitUnion(expr string) []string {
	var parts []string
	depth, start := 0, 0
	inStr := false
	for i := 0; i < len(expr); i++ {
		switch c := expr[i]; {
		case c == '\'':
			inStr = !inStr
		case inStr:
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == '|' && depth == 0:
			parts = append(parts, expr[start:i])
			start = i + 1
		}
	}
	return append(parts, expr[start:])
}

func readCompartment(file string) (map[string][]string, error) {
	data, err := readDef(file)
	if err != nil {
		return nil, err
	}
	var cd compartmentDef
	if err := json.Unmarshal(data, &cd); err != nil {
		return nil, fmt.Errorf("decode %s: %w", file, err)
	}
	out := map[string][]string{}
	for _, r := range cd.Resource {
		if len(r.Param) > 0 {
			out[r.Code] = slices.Clone(r.Param)
		}
	}
	return out, nil
}

// readDef reads a definitions file, or its gzip-compressed copy (file.gz)
// when the file itself is not there.
func readDef(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if !errors.Is(err, fs.ErrNotExist) {
		return data, err
	}
	f, err := os.Open(file + ".gz")
	if err != nil {
		return nil, fmt.Errorf("%s: neither it nor its .gz copy can be read: %w", file, err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s.gz: %w", file, err)
	}
	return io.ReadAll(zr)
}

func writeSchema(src, dst string) error {
	data, err := readDef(src)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	zw.Name = "fhir.schema.json" // no ModTime: the output is reproducible
	zw.Write(data)
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(dst, b.Bytes(), 0o644)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// swappedComponents names the composite parameters whose R4 definition
// pairs each component's definition with the other's expression (4.0.1
// gives DocumentReference-relationship the components relatesto: "code"
// and relation: "target", a published error): their expressions are
// exchanged, so that relatesto, a reference, reads relatesTo.target.
var swappedComponents = map[string]bool{
	"http://hl7.org/fhir/SearchParameter/DocumentReference-relationship": true,
}

// readComposites returns the composite parameters of every resource type,
// with the code and type of each component's definition. A parameter
// whose components do not all resolve, or whose expressions do not parse,
// is left out (and logged).
func readComposites(file string, resourceTypes []string) ([]compositeParam, error) {
	raws, err := readBundle(file)
	if err != nil {
		return nil, err
	}
	var all []searchParam
	byURL := map[string]searchParam{}
	for _, r := range raws {
		var sp searchParam
		if err := json.Unmarshal(r, &sp); err != nil {
			return nil, fmt.Errorf("decode %s: %w", file, err)
		}
		all = append(all, sp)
		byURL[sp.URL] = sp
	}
	var out []compositeParam
	seen := map[string]bool{}
	for _, sp := range all {
		if sp.Type != "composite" || sp.Expression == "" {
			continue
		}
		var comps []component
		for _, c := range sp.Component {
			def, ok := byURL[c.Definition]
			if !ok || def.Type == "composite" || def.Type == "special" {
				comps = nil
				break
			}
			comps = append(comps, component{Code: def.Code, Type: def.Type, Expression: c.Expression})
		}
		if swappedComponents[sp.URL] && len(comps) == 2 {
			comps[0].Expression, comps[1].Expression = comps[1].Expression, comps[0].Expression
		}
		if len(comps) < 2 {
			log.Printf("skip %s: components do not resolve", sp.URL)
			continue
		}
		ok := true
		for _, c := range comps {
			if _, err := fhirpath.Parse(strings.TrimPrefix(c.Expression, "%resource.")); err != nil {
				log.Printf("skip %s: component %s: %v", sp.URL, c.Code, err)
				ok = false
			}
		}
		if !ok {
			continue
		}
		for _, base := range sp.Base {
			if !slices.Contains(resourceTypes, base) {
				continue
			}
			expr := exprFor(sp.Expression, base, base)
			if _, err := fhirpath.Parse(expr); expr == "" || err != nil {
				log.Printf("skip %s for %s: expression %q", sp.URL, base, expr)
				continue
			}
			key := base + "." + sp.Code
			if seen[key] {
				continue
			}
			seen[key] = true
			out = append(out, compositeParam{ResourceType: base, Code: sp.Code, Expression: expr, URL: sp.URL, Components: comps})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ResourceType != out[j].ResourceType {
			return out[i].ResourceType < out[j].ResourceType
		}
		return out[i].Code < out[j].Code
	})
	return out, nil
}
