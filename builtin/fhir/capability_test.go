package fhir

import (
	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// searchValue is a value of parameter name, of type typ, that parses.
func searchValue(name, typ string) string {
	if name == "_id" {
		return "x"
	}
	switch typ {
	case "string":
		return "x"
	case "token":
		return "http://x|y"
	case "reference":
		return "Patient/x"
	case "date":
		return "ge2020-01-01"
	case "number", "quantity":
		return "1"
	case "uri":
		return "http://x"
	}
	return "x"
}

// TestCapabilityDeclaresWhatWorks sends one request for every interaction,
// search parameter, _include, _revinclude and operation the
// CapabilityStatement declares, on every resource type, and checks that
// none is refused as unsupported or malformed (400, 404, 405, 501).
func TestCapabilityDeclaresWhatWorks(t *testing.T) {
	off := false
	dir := t.TempDir()
	h := newTestServer(t, func(c *Config) { c.SchemaValidation = &off; c.Export.Dir = dir })
	cs := do(t, h, "GET", "/fhir/R4/metadata", nil).json(t)
	rest := cs["rest"].([]any)[0].(map[string]any)
	failed := 0
	check := func(what string, r resp, ok ...int) {
		t.Helper()
		if slices.Contains(ok, r.status) {
			return
		}
		switch r.status {
		case 400, 404, 405, 415, 422, 500, 501:
			failed++
			if failed <= 20 {
				t.Errorf("%s: %d %s", what, r.status, truncateBody(r.body))
			}
		}
	}
	counts := map[string]int{}
	for _, raw := range rest["resource"].([]any) {
		res := raw.(map[string]any)
		typ := res["type"].(string)
		created := do(t, h, "POST", "/fhir/R4/"+typ, `{"resourceType":"`+typ+`"}`)
		id := ""
		for _, in := range res["interaction"].([]any) {
			code := in.(map[string]any)["code"].(string)
			counts["interaction"]++
			switch code {
			case "create":
				check(typ+" create", created, 201)
				id = idOf(t, created)
			}
		}
		if id == "" {
			t.Fatalf("%s: no create declared", typ)
		}
		for _, in := range res["interaction"].([]any) {
			switch code := in.(map[string]any)["code"].(string); code {
			case "read":
				check(typ+" read", do(t, h, "GET", "/fhir/R4/"+typ+"/"+id, nil), 200)
			case "vread":
				check(typ+" vread", do(t, h, "GET", "/fhir/R4/"+typ+"/"+id+"/_history/1", nil), 200)
			case "update":
				check(typ+" update", do(t, h, "PUT", "/fhir/R4/"+typ+"/"+id, `{"resourceType":"`+typ+`","id":"`+id+`"}`), 200)
			case "patch":
				check(typ+" patch (JSON Patch)", do(t, h, "PATCH", "/fhir/R4/"+typ+"/"+id, `[{"op":"add","path":"/language","value":"en"}]`,
					"Content-Type", "application/json-patch+json"), 200)
				check(typ+" patch (FHIRPath Patch)", do(t, h, "PATCH", "/fhir/R4/"+typ+"/"+id,
					fhirPatchBody([]string{opType("replace"), opPath(typ + ".language"), part("value", "Code", "fr")})), 200)
			case "history-instance":
				check(typ+" history-instance", do(t, h, "GET", "/fhir/R4/"+typ+"/"+id+"/_history", nil), 200)
			case "history-type":
				check(typ+" history-type", do(t, h, "GET", "/fhir/R4/"+typ+"/_history", nil), 200)
			case "search-type":
				check(typ+" search-type", do(t, h, "GET", "/fhir/R4/"+typ, nil), 200)
			case "delete", "create":
			default:
				t.Errorf("%s: interaction %s has no request here", typ, code)
			}
		}
		// The parameters, includes and revincludes of a type go in one
		// search each (Strict: an unknown one is a 400 too); when that
		// fails, one request per item says which.
		var params []url.Values
		for _, p := range res["searchParam"].([]any) {
			pm := p.(map[string]any)
			counts["searchParam"]++
			v := searchValue(pm["name"].(string), pm["type"].(string))
			if pm["type"] == "composite" {
				p, _ := search.Lookup(typ, pm["name"].(string))
				var parts []string
				for _, c := range p.Components() {
					parts = append(parts, searchValue(c.Code, c.Type))
				}
				v = strings.Join(parts, "$")
			}
			params = append(params, url.Values{pm["name"].(string): {v}})
		}
		for _, key := range []string{"searchInclude", "searchRevInclude"} {
			param := map[string]string{"searchInclude": "_include", "searchRevInclude": "_revinclude"}[key]
			incs, _ := res[key].([]any)
			for _, inc := range incs {
				counts[key]++
				params = append(params, url.Values{param: {inc.(string)}})
			}
		}
		all := url.Values{}
		for _, q := range params {
			for k, v := range q {
				all[k] = append(all[k], v...)
			}
		}
		if r := do(t, h, "POST", "/fhir/R4/"+typ+"/_search", all.Encode(), "Content-Type", "application/x-www-form-urlencoded",
			"Prefer", "handling=strict"); r.status != 200 {
			for _, q := range params {
				check(typ+"?"+q.Encode(), do(t, h, "GET", "/fhir/R4/"+typ+"?"+q.Encode(), nil, "Prefer", "handling=strict"), 200)
			}
		}
		ops, _ := res["operation"].([]any)
		for _, o := range ops {
			om := o.(map[string]any)
			counts["operation"]++
			if !strings.HasPrefix(om["definition"].(string), "http://hl7.org/fhir/") {
				t.Errorf("%s $%s: definition %v", typ, om["name"], om["definition"])
			}
			switch om["name"] {
			case "everything":
				check(typ+" $everything", do(t, h, "GET", "/fhir/R4/"+typ+"/"+id+"/$everything", nil), 200)
				check(typ+" $everything (type)", do(t, h, "GET", "/fhir/R4/"+typ+"/$everything", nil), 200)
			case "export":
				path := "/fhir/R4/" + typ + "/$export"
				if typ == "Group" {
					path = "/fhir/R4/Group/" + id + "/$export"
				}
				r := do(t, h, "GET", path, nil, "Prefer", "respond-async")
				check(typ+" $export", r, 202)
				if r.status == 202 {
					finish(t, h, h.export, linkPath(r.header.Get("Content-Location")))
				}
			case "validate":
				// One handler serves every type; the first use of a
				// type compiles its schema, so a few types suffice.
				if typ == "Patient" || typ == "Observation" || typ == "Bundle" {
					check(typ+" $validate", do(t, h, "POST", "/fhir/R4/"+typ+"/$validate", `{"resourceType":"`+typ+`"}`), 200)
					check(typ+" $validate (instance)", do(t, h, "GET", "/fhir/R4/"+typ+"/"+id+"/$validate", nil), 200)
				}
			default:
				t.Errorf("%s: operation %v has no request here", typ, om["name"])
			}
		}
		check(typ+" delete", do(t, h, "DELETE", "/fhir/R4/"+typ+"/"+id, nil), 204)
	}
	for _, in := range rest["interaction"].([]any) {
		code := in.(map[string]any)["code"].(string)
		counts["system interaction"]++
		switch code {
		case "transaction", "batch":
			check(code, do(t, h, "POST", "/fhir/R4", `{"resourceType":"Bundle","type":"`+code+`","entry":[]}`), 200)
		case "search-system":
			check(code, do(t, h, "GET", "/fhir/R4?_type=Patient,Observation", nil), 200)
			check(code+" (POST)", do(t, h, "POST", "/fhir/R4/_search", "_type=Patient", "Content-Type", "application/x-www-form-urlencoded"), 200)
		case "history-system":
			check(code, do(t, h, "GET", "/fhir/R4/_history", nil), 200)
		default:
			t.Errorf("system interaction %s has no request here", code)
		}
	}
	for _, p := range rest["searchParam"].([]any) {
		pm := p.(map[string]any)
		counts["system searchParam"]++
		q := url.Values{pm["name"].(string): {searchValue(pm["name"].(string), pm["type"].(string))}}
		check("[base]?"+q.Encode(), do(t, h, "GET", "/fhir/R4?"+q.Encode(), nil), 200)
	}
	for _, o := range rest["operation"].([]any) {
		om := o.(map[string]any)
		counts["system operation"]++
		if om["name"] != "export" || om["definition"] != defExport {
			t.Errorf("system operation %v", om)
			continue
		}
		r := do(t, h, "GET", "/fhir/R4/$export?_type=Patient", nil, "Prefer", "respond-async")
		check("$export", r, 202)
		if r.status == 202 {
			finish(t, h, h.export, linkPath(r.header.Get("Content-Location")))
		}
	}
	if failed > 20 {
		t.Errorf("%d declared items failed in all", failed)
	}
	t.Logf("requests per declared item: %v", counts)
	// What the statement must declare.
	if counts["searchRevInclude"] == 0 || counts["operation"] != 3+len(rest["resource"].([]any)) || counts["system operation"] != 1 || counts["system searchParam"] != 5 {
		t.Errorf("declared %v", counts)
	}
	for _, raw := range rest["resource"].([]any) {
		res := raw.(map[string]any)
		if res["type"] == "Patient" {
			revs := res["searchRevInclude"].([]any)
			if !slices.Contains(revs, any("Observation:subject")) || !slices.Contains(revs, any("Encounter:patient")) {
				t.Errorf("Patient's searchRevInclude lacks Observation:subject or Encounter:patient")
			}
		}
	}
	if pf := cs["patchFormat"].([]any); !slices.Contains(pf, any("application/fhir+json")) {
		t.Errorf("patchFormat %v", pf)
	}
}

// TestCapabilitySMART: with SMART configured, the statement declares the
// OAuth endpoints (the oauth-uris extension) and the SMART-on-FHIR
// service; without, neither.
func TestCapabilitySMART(t *testing.T) {
	security := func(h *Handler) map[string]any {
		cs := do(t, h, "GET", "/fhir/R4/metadata", nil).json(t)
		return cs["rest"].([]any)[0].(map[string]any)["security"].(map[string]any)
	}
	off := false
	noValidation := func(c *Config) { c.SchemaValidation = &off }
	if s := security(newTestServer(t, noValidation)); s["extension"] != nil || s["service"] != nil {
		t.Errorf("without SMART: %v", s)
	}
	s := security(newTestServer(t, noValidation, func(c *Config) {
		c.SMART.AuthorizationEndpoint = "https://idp.example/authorize"
		c.SMART.TokenEndpoint = "https://idp.example/token"
	}))
	ext := s["extension"].([]any)[0].(map[string]any)
	if ext["url"] != "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris" {
		t.Fatalf("extension %v", ext)
	}
	uris := map[string]any{}
	for _, e := range ext["extension"].([]any) {
		em := e.(map[string]any)
		uris[em["url"].(string)] = em["valueUri"]
	}
	if uris["authorize"] != "https://idp.example/authorize" || uris["token"] != "https://idp.example/token" {
		t.Errorf("oauth-uris %v", uris)
	}
	coding := s["service"].([]any)[0].(map[string]any)["coding"].([]any)[0].(map[string]any)
	if coding["system"] != "http://terminology.hl7.org/CodeSystem/restful-security-service" || coding["code"] != "SMART-on-FHIR" {
		t.Errorf("service %v", coding)
	}
}
