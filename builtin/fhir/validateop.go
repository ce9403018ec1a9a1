package fhir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/builtin/fhir/internal/profile"
	"github.com/omnigate/omnigate/builtin/fhir/internal/validate"
	"github.com/omnigate/omnigate/gateway/outcome"
)

// opValidate is the $validate operation, and defValidate its definition.
const (
	opValidate  = "$validate"
	defValidate = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
)

// validators are what $validate checks with: the schema, the core
// definitions and the profiles of the configured packages, whatever the
// write switches say (asking for validation is asking for all of it).
type validators struct {
	once   sync.Once
	schema *validate.Validator
	set    *profile.Set
	err    error
}

func (h *Handler) opValidators() (*validate.Validator, *profile.Set, error) {
	v := &h.opVal
	v.once.Do(func() {
		if v.schema, v.err = newValidator(); v.err != nil {
			return
		}
		cfg := h.cfg
		on := true
		cfg.SchemaValidation = &on
		cfg.Validation.Core, cfg.Validation.Profiles = &on, &on
		v.set, v.err = profileSet(&cfg)
	})
	return v.schema, v.set, v.err
}

// validateParams are the inputs of $validate.
type validateParams struct {
	resource map[string]any
	mode     string
	profiles []string
}

// validateOp answers $validate on a type (POST) or an instance (GET or
// POST): 200 with an OperationOutcome of every issue the resource has
// (severity, code, expression), or one information issue "All OK". The
// resource is the body (a resource, or a Parameters with resource, mode
// and profile), else, on an instance, the stored one. Mode create and
// update (the resource's id must be the instance's) validate the
// resource; mode delete checks that the instance exists and the caller
// may delete it. A body that cannot be read is 400.
func (h *Handler) validateOp(w http.ResponseWriter, req *request, typ, id string) error {
	ctx := req.Context()
	if _, err := h.guardFor(ctx, access.Read, typ, ""); err != nil {
		return err
	}
	p := validateParams{mode: req.query.Get("mode"), profiles: req.query["profile"]}
	if req.Method == http.MethodPost {
		body, err := h.readBody(req.Request)
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(body)) > 0 {
			tree, err := decodeInput(body, "")
			if err != nil {
				return err
			}
			if err := p.read(tree, typ); err != nil {
				return err
			}
		}
	}
	switch p.mode {
	case "", "create", "update", "delete":
	default:
		return locErr(http.StatusBadRequest, "Parameters.parameter.mode", fmt.Sprintf("unknown mode %q: want create, update or delete", p.mode))
	}
	if p.mode == "delete" {
		if id == "" {
			return errorf(http.StatusBadRequest, "mode delete validates an instance: POST [type]/[id]/$validate")
		}
		return h.writeIssues(w, req, h.deletable(req, typ, id))
	}
	if p.resource == nil {
		if id == "" {
			return errorf(http.StatusBadRequest, "no resource to validate: send one, or a Parameters with a resource")
		}
		v, err := h.readCurrent(ctx, w, typ, id)
		if err != nil {
			return err
		}
		if p.resource, err = decodeJSON(v.Body); err != nil {
			return fmt.Errorf("decode %s/%s: %w", typ, id, err)
		}
	}
	if _, err := checkResourceType(p.resource, typ, ""); err != nil {
		return err
	}
	schema, set, err := h.opValidators()
	if err != nil {
		return err
	}
	var issues []issue
	if p.mode == "update" {
		rid, _ := p.resource["id"].(string)
		switch {
		case rid == "":
			issues = append(issues, validationIssue("error", "required", typ+".id", "mode update: the resource has no id"))
		case id != "" && rid != id:
			issues = append(issues, validationIssue("error", "invalid", typ+".id", fmt.Sprintf("mode update: the resource's id %q is not the instance's %q", rid, id)))
		}
	}
	found, err := schemaProblems(schema, h.cfg.RejectUnknownElements, typ, p.resource, "")
	if err != nil {
		return err
	}
	issues = append(issues, found...)
	issues = mergeIssues(issues, conformanceIssues(set, typ, p.resource, "", profile.Options{Core: true, Profiles: true, Extra: p.profiles}))
	return h.writeIssues(w, req, issues)
}

// read takes the inputs from a body: a Parameters (resource, mode,
// profile), or the resource itself.
func (p *validateParams) read(tree map[string]any, typ string) error {
	if rt, _ := tree["resourceType"].(string); rt != "Parameters" || typ == "Parameters" {
		p.resource = tree
		return nil
	}
	params, _ := tree["parameter"].([]any)
	for i, x := range params {
		m, _ := x.(map[string]any)
		name, _ := m["name"].(string)
		expr := fmt.Sprintf("Parameters.parameter[%d]", i)
		switch name {
		case "resource":
			r, ok := m["resource"].(map[string]any)
			if !ok {
				return locErr(http.StatusBadRequest, expr, "parameter resource holds no resource")
			}
			p.resource = r
		case "mode":
			s, ok := primitiveParam(m, "valueCode", "valueString")
			if !ok {
				return locErr(http.StatusBadRequest, expr, "parameter mode must be a code")
			}
			p.mode = s
		case "profile":
			s, ok := primitiveParam(m, "valueUri", "valueCanonical", "valueString")
			if !ok {
				return locErr(http.StatusBadRequest, expr, "parameter profile must be a uri")
			}
			p.profiles = append(p.profiles, s)
		default:
			return locErr(http.StatusBadRequest, expr, fmt.Sprintf("unknown parameter %q: $validate takes resource, mode and profile", name))
		}
	}
	return nil
}

func primitiveParam(m map[string]any, keys ...string) (string, bool) {
	for _, k := range keys {
		if s, ok := m[k].(string); ok {
			return s, true
		}
	}
	return "", false
}

// deletable is the issues of deleting typ/id: none when it exists and the
// policy lets the caller delete it.
func (h *Handler) deletable(req *request, typ, id string) []issue {
	ctx := req.Context()
	if _, err := h.readCurrent(ctx, discardHeaders{}, typ, id); err != nil {
		var he *httpError
		if errors.As(err, &he) {
			return he.issues
		}
		return []issue{validationIssue("error", "exception", typ, err.Error())}
	}
	if _, err := h.guardFor(ctx, access.Delete, typ, ""); err != nil {
		var he *httpError
		if errors.As(err, &he) {
			return he.issues
		}
	}
	return nil
}

// discardHeaders is a ResponseWriter whose headers go nowhere.
type discardHeaders struct{}

func (discardHeaders) Header() http.Header         { return http.Header{} }
func (discardHeaders) Write(b []byte) (int, error) { return len(b), nil }
func (discardHeaders) WriteHeader(int)             {}

func validationIssue(severity, code, expr, msg string) issue {
	return issue{Severity: severity, Code: code, Diagnostics: msg, Expression: []string{expr}}
}

// writeIssues answers 200 with the issues, or "All OK".
func (h *Handler) writeIssues(w http.ResponseWriter, req *request, issues []issue) error {
	if len(issues) == 0 {
		return h.writeOutcome(w, req, http.StatusOK, "All OK")
	}
	body, err := json.Marshal(outcome.Of(issues...))
	if err != nil {
		return err
	}
	return h.writeRaw(w, req, http.StatusOK, body)
}
