// Package validate checks resources against the official FHIR R4 JSON
// schema (embedded by the spec package). A resource type's schema is
// compiled on first use and kept.
package validate

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// schemaURL is the id the official schema declares.
const schemaURL = "http://hl7.org/fhir/json-schema/4.0"

// Problem is one way a resource breaks the schema, at a FHIRPath-like
// location ("Patient.name[0].given").
type Problem struct {
	Expression string
	Message    string
	// Unknown marks an element the schema does not define (the schema's
	// additionalProperties), which callers may choose to accept.
	Unknown bool
}

// Validator validates resources against the schema. It is safe for
// concurrent use.
type Validator struct {
	mu       sync.Mutex
	compiler *jsonschema.Compiler
	schemas  sync.Map // resource type -> *jsonschema.Schema
}

// New loads the embedded schema. Compiling a type's schema happens on its
// first use (or in Precompile).
func New() (*Validator, error) {
	data, err := spec.Schema()
	if err != nil {
		return nil, err
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decode schema: %w", err)
	}
	// This copy of the R4 schema refers to two definitions it lacks:
	// integer64 (Parameters.parameter.valueInteger64), defined here as R5
	// does, and Resource. Resource and ResourceList (a oneOf over every
	// type, the items of "contained" and Bundle.entry.resource) are both
	// defined as any object with a resourceType: the server checks each
	// contained resource against its own type's schema instead, which is
	// faster and reports the problems of that type only.
	if m, ok := doc.(map[string]any); ok {
		if defs, ok := m["definitions"].(map[string]any); ok {
			if defs["integer64"] == nil {
				defs["integer64"] = map[string]any{"type": "string", "pattern": "^[0]|[-]?[1-9][0-9]*$"}
			}
			anyResource := map[string]any{"type": "object", "required": []any{"resourceType"}}
			defs["Resource"] = anyResource
			defs["ResourceList"] = anyResource
		}
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft6)
	if err := c.AddResource(schemaURL, doc); err != nil {
		return nil, fmt.Errorf("load schema: %w", err)
	}
	return &Validator{compiler: c}, nil
}

// Precompile compiles the schemas of the given resource types now.
func (v *Validator) Precompile(types ...string) error {
	for _, t := range types {
		if _, err := v.schema(t); err != nil {
			return err
		}
	}
	return nil
}

func (v *Validator) schema(typ string) (*jsonschema.Schema, error) {
	if s, ok := v.schemas.Load(typ); ok {
		return s.(*jsonschema.Schema), nil
	}
	if !spec.IsResourceType(typ) {
		return nil, fmt.Errorf("unknown resource type %q", typ)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if s, ok := v.schemas.Load(typ); ok {
		return s.(*jsonschema.Schema), nil
	}
	s, err := v.compiler.Compile(schemaURL + "#/definitions/" + typ)
	if err != nil {
		return nil, fmt.Errorf("compile schema of %s: %w", typ, err)
	}
	v.schemas.Store(typ, s)
	return s, nil
}

var printer = message.NewPrinter(language.English)

// Validate checks resource (decoded with UseNumber) as a typ. It returns
// the problems found, sorted by location, or an error if the schema could
// not be compiled.
func (v *Validator) Validate(typ string, resource any) ([]Problem, error) {
	s, err := v.schema(typ)
	if err != nil {
		return nil, err
	}
	err = s.Validate(resource)
	if err == nil {
		return nil, nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return nil, fmt.Errorf("validate: %w", err)
	}
	var out []Problem
	seen := map[Problem]bool{}
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) > 0 {
			for _, c := range e.Causes {
				walk(c)
			}
			return
		}
		kp := e.ErrorKind.KeywordPath()
		p := Problem{
			Expression: expression(typ, e.InstanceLocation),
			Message:    e.ErrorKind.LocalizedString(printer),
			Unknown:    len(kp) > 0 && kp[len(kp)-1] == "additionalProperties",
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	walk(ve)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Expression < out[j].Expression })
	return out, nil
}

// expression turns a JSON pointer's tokens into a FHIRPath-like location:
// ["name","0","given"] is "Patient.name[0].given".
func expression(typ string, loc []string) string {
	var b strings.Builder
	b.WriteString(typ)
	for _, t := range loc {
		if _, err := strconv.Atoi(t); err == nil {
			b.WriteString("[" + t + "]")
			continue
		}
		b.WriteString("." + t)
	}
	return b.String()
}
