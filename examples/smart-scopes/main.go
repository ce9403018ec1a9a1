// Command smart-scopes enforces SMART on FHIR scopes on FHIR routes: the
// caller's scopes must grant the interaction on the resource type, and
// patient/ scopes only reach the patient's own compartment, as the FHIR R4
// Patient CompartmentDefinition draws it (compartment.go, generated).
//
// Scopes understood: SMART v2 (patient/Observation.rs, user/*.cruds,
// system/Patient.r) and v1 (patient/Observation.read, user/*.write,
// patient/*.*). Scopes with constraints (patient/Observation.rs?category=…)
// grant nothing here: refusing is the safe reading.
//
// A batch or transaction POSTed to the base is decided entry by entry
// (wasm.Request.Interactions) with the same rules; one denied entry
// refuses the whole Bundle, since a policy cannot answer entries one by
// one.
//
// Build it with "omnigate plugin build ./examples/smart-scopes".
//
//go:generate go run ./gen -defs ${FHIR_R4_DEFINITIONS} -o compartment.go
package main

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/sdk/wasm"
)

var config struct {
	// BreakGlassHeader, when set, lets requests that carry it pass: the
	// break-glass plugin, earlier in the chain, sets it (and strips it from
	// clients). Default "": no bypass.
	BreakGlassHeader string `json:"break_glass_header"`
	// AllowOperations lists operations ($everything, …) that scopes for
	// reading may run. Default none: operations are refused.
	AllowOperations []string `json:"allow_operations"`
}

func init() {
	wasm.OnStart(func() error { return wasm.DecodeConfig(&config) })
	wasm.ReadRequestBody()
	wasm.OnRequest(onRequest)
	wasm.OnResponse(onResponse)
}

func main() {}

// scope is one parsed SMART scope.
type scope struct {
	context string // patient, user, system
	typ     string // resource type or *
	perms   string // subset of "cruds"
}

// parseScope reads v2 (".cruds" letters) and v1 (".read", ".write", ".*")
// scopes; other scopes (openid, launch, constrained scopes) give false.
func parseScope(s string) (scope, bool) {
	ctx, rest, ok := strings.Cut(s, "/")
	if !ok || (ctx != "patient" && ctx != "user" && ctx != "system") || strings.Contains(rest, "?") {
		return scope{}, false
	}
	typ, action, ok := strings.Cut(rest, ".")
	if !ok || typ == "" {
		return scope{}, false
	}
	sc := scope{context: ctx, typ: typ}
	switch action {
	case "read":
		sc.perms = "rs"
	case "write":
		sc.perms = "cud"
	case "*":
		sc.perms = "cruds"
	default:
		// v2: letters of "cruds", in that order, each at most once.
		last := -1
		for _, c := range action {
			i := strings.IndexRune("cruds", c)
			if i <= last {
				return scope{}, false
			}
			last = i
		}
		if action == "" {
			return scope{}, false
		}
		sc.perms = action
	}
	return sc, true
}

// permission is the SMART v2 letter an interaction needs.
func permission(f wasm.FHIR) byte {
	switch f.Interaction {
	case "create":
		return 'c'
	case "read", "vread", "history-instance":
		return 'r'
	case "update", "patch":
		return 'u'
	case "delete":
		return 'd'
	case "search-type", "search-system", "history-type", "history-system":
		return 's'
	case "operation":
		for _, op := range config.AllowOperations {
			if op == f.Operation {
				return 'r'
			}
		}
	}
	return 0
}

// access is what the caller's scopes grant for one request.
type access int

const (
	denied access = iota
	granted
	confined // granted by patient/ scopes: the patient's compartment only
)

func decide(r *wasm.Request) (access, string, wasm.FHIR) {
	f, ok := r.FHIR()
	if !ok {
		return denied, "not a FHIR request path", f
	}
	if bypass(r) {
		return granted, "", f
	}
	acc, why := decideInteraction(f, r.Identity())
	return acc, why, f
}

// bypass reports whether the break-glass plugin granted the request.
func bypass(r *wasm.Request) bool {
	return config.BreakGlassHeader != "" && r.Header.Get(config.BreakGlassHeader) != ""
}

// decideInteraction is what id's scopes grant for one interaction: a
// request's, or one entry's of a batch or transaction.
func decideInteraction(f wasm.FHIR, id *wasm.Identity) (access, string) {
	if f.Interaction == "" {
		return denied, "not a FHIR interaction this policy can check"
	}
	if f.Interaction == "capabilities" {
		return granted, ""
	}
	if id == nil {
		return denied, "authentication required"
	}
	need := permission(f)
	if need == 0 {
		return denied, f.Interaction + " is not allowed by SMART scopes here"
	}
	typ := f.Type
	patientScope := false
	for _, s := range id.Scopes {
		sc, ok := parseScope(s)
		if !ok || strings.IndexByte(sc.perms, need) < 0 || sc.typ != "*" && sc.typ != typ {
			continue
		}
		if typ == "" && sc.typ != "*" {
			continue
		}
		if sc.context != "patient" {
			return granted, ""
		}
		patientScope = true
	}
	if !patientScope {
		return denied, "no scope grants " + string(need) + " on " + orAll(typ)
	}
	if id.Patient == "" {
		return denied, "patient scopes without a patient in context"
	}
	return confined, ""
}

func orAll(typ string) string {
	if typ == "" {
		return "all types"
	}
	return typ
}

// inCompartment checks, before the request goes on, what can be checked
// of one interaction: the compartment in the path, the patient's own id, a
// created resource's links (created returns it, reduced as json_extract
// does). It reports whether the interaction may go on (reads and searches
// are checked again on the response) and why not.
func inCompartment(f wasm.FHIR, patient string, created func() ([]byte, error)) (bool, string) {
	if f.CompartmentType != "" {
		if f.CompartmentType == "Patient" && f.CompartmentID == patient && (f.Type == "" || compartment[f.Type].params != nil) {
			return true, ""
		}
		return false, "outside the patient's compartment"
	}
	if f.Type != "Patient" && compartment[f.Type].params == nil {
		return false, f.Type + " is not in the patient compartment"
	}
	switch f.Interaction {
	case "read", "vread", "history-instance", "search-type", "history-type", "operation":
		return true, "" // checked on the response
	case "create":
		body, err := created()
		if err != nil {
			return false, "cannot read the resource to create"
		}
		if !allLinked(body, patient) {
			return false, "the new resource does not belong to the patient"
		}
		return true, ""
	case "update", "patch", "delete":
		if f.Type == "Patient" && f.ID == patient {
			return true, ""
		}
		return false, "patient scopes may change only the patient's own Patient resource here"
	}
	return false, "outside the patient's compartment"
}

func onRequest(r *wasm.Request) {
	if f, ok := r.FHIR(); ok && f.Interaction == "batch" {
		onBundle(r)
		return
	}
	acc, why, f := decide(r)
	switch acc {
	case denied:
		deny(r, f, why)
		return
	case granted:
		r.SkipResponse()
		return
	}
	created := func() ([]byte, error) { return r.ResourceFields(topFields(f.Type)...) }
	if ok, why := inCompartment(f, r.Identity().Patient, created); !ok {
		deny(r, f, why)
	}
}

// onBundle decides a batch or transaction POSTed to the base: each entry
// by the rules of a plain request. One denied entry refuses the whole
// Bundle, a batch too: a policy cannot answer entries one by one.
func onBundle(r *wasm.Request) {
	if bypass(r) {
		r.SkipResponse()
		return
	}
	id := r.Identity()
	if id == nil {
		deny(r, wasm.FHIR{Interaction: "batch"}, "authentication required")
		return
	}
	list, err := r.Interactions()
	if err != nil {
		// Entries the policy cannot see are entries it cannot allow.
		wasm.Count("denied", 1)
		if err == wasm.ErrTooLarge {
			r.Deny(413, "access denied: the batch or transaction is too large to check")
			return
		}
		r.Deny(400, "access denied: the batch or transaction cannot be read")
		return
	}
	anyConfined := false
	var resources []json.RawMessage // the entries' resources, read on first need
	for i, e := range list {
		acc, why := decideInteraction(e.FHIR, id)
		if acc == confined {
			anyConfined = true
			created := func() ([]byte, error) {
				if resources == nil {
					if resources, err = entryResources(r, len(list)); err != nil {
						return nil, err
					}
				}
				var typ string
				var head struct {
					ResourceType string `json:"resourceType"`
				}
				if json.Unmarshal(resources[i], &head) == nil {
					typ = head.ResourceType
				}
				if typ != e.Type {
					return nil, errors.New("the entry's resource is not a " + e.Type)
				}
				return append(append([]byte("["), resources[i]...), ']'), nil
			}
			ok, w := inCompartment(e.FHIR, id.Patient, created)
			if !ok {
				acc, why = denied, w
			}
		}
		if acc == denied {
			deny(r, e.FHIR, entryLabel(i, e)+": "+why)
			return
		}
	}
	if !anyConfined {
		r.SkipResponse()
	}
}

// entryLabel names an entry in a refusal, as the FHIR server does:
// "entry[3] (delete Observation)". Neither ids nor the url: no PHI.
func entryLabel(i int, e wasm.Interaction) string {
	l := "entry[" + strconv.Itoa(i) + "]"
	if e.Interaction != "" {
		l += " (" + strings.TrimSpace(e.Interaction+" "+e.Type) + ")"
	}
	return l
}

// entryResources returns the resource of each of the Bundle's n entries
// (null for an entry without one), from the request body.
func entryResources(r *wasm.Request, n int) ([]json.RawMessage, error) {
	body, err := r.Body()
	if err != nil {
		return nil, err
	}
	var b struct {
		Entry []struct {
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, err
	}
	if len(b.Entry) != n {
		return nil, errors.New("the Bundle's entries do not match its interactions")
	}
	out := make([]json.RawMessage, n)
	for i, e := range b.Entry {
		out[i] = e.Resource
	}
	return out, nil
}

func deny(r *wasm.Request, f wasm.FHIR, why string) {
	wasm.Count("denied", 1)
	status := 403
	if why == "authentication required" {
		status = 401
	}
	wasm.Infof("smart-scopes denied %s %s: %s", f.Interaction, f.Type, why)
	r.Deny(status, "access denied: "+why)
}

// onResponse confines patient-scoped reads and searches: every resource
// returned must be in the patient's compartment.
func onResponse(w *wasm.Response) {
	if f, ok := w.Request.FHIR(); ok && f.Interaction == "batch" {
		onBundleResponse(w)
		return
	}
	acc, _, f := decide(w.Request)
	if acc != confined || f.Interaction == "create" || w.Status() < 200 || w.Status() > 299 {
		return // a created resource was checked on the way in
	}
	fields := topFields(f.Type)
	if f.Type == "" || f.Interaction == "operation" || f.Interaction == "search-type" {
		fields = allTopFields()
	}
	confine(w, fields, f.Interaction)
}

// onBundleResponse confines the response of a batch or transaction with
// an entry that patient scopes granted: every resource in it (each entry's,
// search results included) must be in the patient's compartment.
func onBundleResponse(w *wasm.Response) {
	if bypass(w.Request) || w.Status() < 200 || w.Status() > 299 {
		return
	}
	id := w.Request.Identity()
	list, err := w.Request.Interactions()
	if id == nil || err != nil {
		wasm.Count("denied", 1)
		w.Deny(403, "access denied: the batch or transaction cannot be checked")
		return
	}
	for _, e := range list {
		if acc, _ := decideInteraction(e.FHIR, id); acc == confined {
			confine(w, allTopFields(), "batch")
			return
		}
	}
}

// confine withholds the response unless every resource in it is in the
// patient's compartment.
func confine(w *wasm.Response, fields []string, interaction string) {
	body, err := w.ResourceFields(fields...)
	if err != nil {
		wasm.Count("denied", 1)
		w.Deny(403, "access denied: the response cannot be checked against the patient's compartment")
		return
	}
	if !allLinked(body, w.Request.Identity().Patient) {
		wasm.Count("denied", 1)
		wasm.Infof("smart-scopes withheld a %s response outside the patient's compartment", interaction)
		w.Deny(403, "access denied: outside the patient's compartment")
	}
}

// topFields returns the top-level elements that hold a type's patient links.
func topFields(typ string) []string {
	var out []string
	for _, p := range compartment[typ].paths {
		top, _, _ := strings.Cut(p, ".")
		out = append(out, top)
	}
	return out
}

var allTop []string

func allTopFields() []string {
	if allTop == nil {
		seen := map[string]bool{}
		for _, l := range compartment {
			for _, p := range l.paths {
				top, _, _ := strings.Cut(p, ".")
				if !seen[top] {
					seen[top] = true
					allTop = append(allTop, top)
				}
			}
		}
	}
	return allTop
}
