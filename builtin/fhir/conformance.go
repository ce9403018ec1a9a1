package fhir

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/omnigate/omnigate/builtin/fhir/internal/profile"
)

// packageKey names a package source as it is on disk, so that a changed
// file is read again.
type packageKey struct {
	path string
	size int64
	mod  int64
}

var (
	packagesMu sync.Mutex
	// packages caches what loadPackage read: config checks, Open and
	// each reload of the gateway read the same files.
	packages = map[packageKey]*profile.Resources{}
	// profileSets caches the sets built from the same packages.
	profileSets = map[string]*profile.Set{}
)

// loadPackage reads the conformance resources of a FHIR package source
// (see ValidationConfig.Packages), once per version of the file.
func loadPackage(path string) (*profile.Resources, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("read package: %w", err)
	}
	key := packageKey{abs, fi.Size(), fi.ModTime().UnixNano()}
	packagesMu.Lock()
	res := packages[key]
	packagesMu.Unlock()
	if res != nil {
		return res, nil
	}
	if res, err = profile.Load(abs); err != nil {
		return nil, err
	}
	packagesMu.Lock()
	packages[key] = res
	packagesMu.Unlock()
	return res, nil
}

// profileSet returns the StructureDefinitions and value sets validation
// uses under cfg: the core definitions and those of cfg's packages. It is
// nil when cfg turns validation against them off.
func profileSet(cfg *Config) (*profile.Set, error) {
	v := cfg.Validation
	if !boolOr(cfg.SchemaValidation, true) || !boolOr(v.Core, true) && !boolOr(v.Profiles, true) {
		return nil, nil
	}
	set, err := profile.Core()
	if err != nil {
		return nil, err
	}
	if len(v.Packages) == 0 {
		return set, nil
	}
	var keys []string
	var all profile.Resources
	for i, p := range v.Packages {
		res, err := loadPackage(p)
		if err != nil {
			return nil, fmt.Errorf("validation.packages[%d]: %w", i, err)
		}
		keys = append(keys, fmt.Sprintf("%p", res))
		all.Structures = append(all.Structures, res.Structures...)
		all.ValueSets = append(all.ValueSets, res.ValueSets...)
		all.CodeSystems = append(all.CodeSystems, res.CodeSystems...)
	}
	key := strings.Join(keys, ",")
	packagesMu.Lock()
	defer packagesMu.Unlock()
	if s := profileSets[key]; s != nil {
		return s, nil
	}
	if set, err = set.With(&all); err != nil {
		return nil, fmt.Errorf("validation.packages: %w", err)
	}
	profileSets[key] = set
	return set, nil
}

type skipValidationKey struct{}

// SkipValidation returns a context under which the writes of Import (and
// of requests served in process with it) are checked against the JSON
// schema only, not against StructureDefinitions and profiles: for data
// known to be valid, or to be loaded whatever it holds. The input checks
// (UTF-8, exact numbers) still apply.
func SkipValidation(ctx context.Context) context.Context {
	return context.WithValue(ctx, skipValidationKey{}, true)
}

func skipsValidation(ctx context.Context) bool {
	b, _ := ctx.Value(skipValidationKey{}).(bool)
	return b
}

// checks says which validation a written resource gets.
type checks uint8

const (
	// checkAll is the schema, then the core definitions and profiles as
	// the config says.
	checkAll checks = iota
	// checkSchema is the schema only (an import that opted out).
	checkSchema
	// checkNone is for the writes of the gateway's own plugins.
	checkNone
)

// conformance validates tree against the core definitions and the
// profiles it declares, as the config says. Issues of severity error fail
// the resource with 422.
func (h *Handler) conformance(typ string, tree map[string]any, where string) []issue {
	if h.profiles == nil {
		return nil
	}
	v := h.cfg.Validation
	return conformanceIssues(h.profiles, typ, tree, where, profile.Options{Core: boolOr(v.Core, true), Profiles: boolOr(v.Profiles, true)})
}

// conformanceIssues validates tree against set's definitions as o says.
func conformanceIssues(set *profile.Set, typ string, tree map[string]any, where string, o profile.Options) []issue {
	found := set.Validate(tree, o)
	out := make([]issue, 0, len(found))
	for _, p := range found {
		out = append(out, issue{Severity: p.Severity, Code: p.Code, Diagnostics: where + p.Message, Expression: []string{p.Expression}})
	}
	return out
}

// hasErrors reports whether issues hold one of severity error or fatal.
func hasErrors(issues []issue) bool {
	for _, is := range issues {
		if is.Severity == "error" || is.Severity == "fatal" {
			return true
		}
	}
	return false
}

// validationError is the 422 of a resource that parses but fails
// validation, or the 400 of one that breaks the schema, with all issues.
func validationError(schemaFailed bool, issues []issue) *httpError {
	status := http.StatusUnprocessableEntity
	if schemaFailed {
		status = http.StatusBadRequest
	}
	return &httpError{status: status, issues: issues}
}
