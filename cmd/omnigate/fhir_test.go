package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir"
)

// fhir import loads NDJSON and Bundles into the configured store; a second
// run updates what has ids instead of duplicating it.
func TestFHIRImport(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "data", "store.db")
	cfgFile := filepath.Join(dir, "omnigate.yaml")
	os.WriteFile(cfgFile, []byte("fhir:\n  store: {path: "+store+"}\nroutes:\n  - name: fhir\n    fhir: true\n"), 0o644)
	ndjson := filepath.Join(dir, "patients.ndjson")
	os.WriteFile(ndjson, []byte(`{"resourceType":"Patient","id":"a","gender":"female"}
{"resourceType":"Patient","id":"b"}

{"resourceType":"Patient","gender":"male"}
{"resourceType":"Patient","gender":7}
`), 0o644)
	bundle := filepath.Join(dir, "tx.json")
	os.WriteFile(bundle, []byte(`{"resourceType":"Bundle","type":"transaction","entry":[
		{"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient","id":"c"},"request":{"method":"PUT","url":"Patient/c"}},
		{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"urn:uuid:1"}},"request":{"method":"POST","url":"Observation"}}]}`), 0o644)

	importOnce := func() string {
		var out, errOut bytes.Buffer
		code := run(context.Background(), []string{"fhir", "import", "-config", cfgFile, "-quiet", ndjson, bundle}, &out, &errOut)
		if code != 1 { // the invalid line fails
			t.Fatalf("exit %d\n%s%s", code, out.String(), errOut.String())
		}
		return out.String()
	}
	first := importOnce()
	if !strings.Contains(first, "patients.ndjson: 4 resources: 3 created, 0 updated, 0 unchanged, 1 failed") ||
		!strings.Contains(first, "tx.json: 2 resources: 2 created") || !strings.Contains(first, "imported 2 files") {
		t.Errorf("first import:\n%s", first)
	}
	second := importOnce()
	if !strings.Contains(second, "patients.ndjson: 4 resources: 1 created, 2 updated, 0 unchanged, 1 failed") {
		t.Errorf("second import:\n%s", second)
	}

	cfg := fhir.DefaultConfig()
	cfg.Store.Path = store
	h, err := fhir.Open(context.Background(), cfg, fhir.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	get := func(path string) string {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "http://x/fhir/R4"+path, nil))
		return w.Body.String()
	}
	if b := get("/Patient?_summary=count"); !strings.Contains(b, `"total":5`) {
		t.Errorf("patients after two imports: %s", b) // a, b, c and the two without id
	}
	if b := get("/Patient/a"); !strings.Contains(b, `"versionId":"2"`) {
		t.Errorf("Patient/a: %s", b)
	}
	if b := get("/Observation?subject=Patient/c&_summary=count"); !strings.Contains(b, `"total":2`) {
		t.Errorf("observations of Patient/c: %s", b)
	}
}

// A first import that writes nothing (every file unreadable or every
// resource refused) leaves no empty store behind; a store that existed is
// kept whatever happens.
func TestFHIRImportFailureLeavesNoEmptyStore(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "data", "store.db")
	cfgFile := filepath.Join(dir, "omnigate.yaml")
	os.WriteFile(cfgFile, []byte("fhir:\n  store: {path: "+store+"}\nroutes:\n  - name: fhir\n    fhir: true\n"), 0o644)
	bad := filepath.Join(dir, "bad.ndjson")
	os.WriteFile(bad, []byte(`{"resourceType":"Patient","gender":7}`+"\n"), 0o644)
	good := filepath.Join(dir, "good.ndjson")
	os.WriteFile(good, []byte(`{"resourceType":"Patient","id":"a"}`+"\n"), 0o644)
	imp := func(files ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := run(context.Background(), append([]string{"fhir", "import", "-config", cfgFile, "-quiet"}, files...), &out, &errOut)
		return code, out.String() + errOut.String()
	}
	for _, files := range [][]string{{bad}, {filepath.Join(dir, "missing.json")}} {
		code, out := imp(files...)
		if code != 1 || !strings.Contains(out, "nothing was imported: the new store "+store+" is removed again") {
			t.Errorf("import %v: exit %d\n%s", files, code, out)
		}
		if matches, _ := filepath.Glob(store + "*"); len(matches) > 0 {
			t.Errorf("import %v left %v", files, matches)
		}
	}
	if code, out := imp(good); code != 0 {
		t.Fatalf("good import: exit %d\n%s", code, out)
	}
	if code, out := imp(bad); code != 1 || strings.Contains(out, "removed") {
		t.Errorf("failed import into an existing store: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(store); err != nil {
		t.Errorf("the existing store is gone: %v", err)
	}
}

// The progress bar counts resources and their rate (not bytes, which are
// read in a moment) and ends at 100%, for a Bundle and for NDJSON.
func TestFHIRImportProgressCountsResources(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "omnigate.yaml")
	os.WriteFile(cfgFile, []byte("fhir:\n  store: {path: "+filepath.Join(dir, "store.db")+"}\nroutes:\n  - name: fhir\n    fhir: true\n"), 0o644)
	bundle := filepath.Join(dir, "tx.json")
	os.WriteFile(bundle, []byte(`{"resourceType":"Bundle","type":"transaction","entry":[
		{"resource":{"resourceType":"Patient","id":"c"},"request":{"method":"PUT","url":"Patient/c"}},
		{"resource":{"resourceType":"Patient","id":"d"},"request":{"method":"PUT","url":"Patient/d"}}]}`), 0o644)
	ndjson := filepath.Join(dir, "p.ndjson")
	os.WriteFile(ndjson, []byte(`{"resourceType":"Patient","id":"a"}`+"\n"+`{"resourceType":"Patient","id":"b"}`+"\n"), 0o644)
	for _, f := range []string{bundle, ndjson} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{"fhir", "import", "-config", cfgFile, f}, &out, &errOut); code != 0 {
			t.Fatalf("%s: exit %d\n%s%s", f, code, out.String(), errOut.String())
		}
		bar := errOut.String()
		// The rate's unit (/s, /min, /hr) follows the machine's speed.
		if !strings.Contains(bar, "100%") || !strings.Contains(bar, "(2/2, ") || !strings.Contains(bar, " resources/") || strings.Contains(bar, "B/s") {
			t.Errorf("%s: progress bar:\n%q", f, bar)
		}
	}
}

func TestFHIRImportUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"fhir"}, &out, &errOut); code != 2 {
		t.Errorf("exit %d", code)
	}
	if code := run(context.Background(), []string{"fhir", "import"}, &out, &errOut); code != 2 {
		t.Errorf("exit %d", code)
	}
	if code := run(context.Background(), []string{"fhir", "check", "extra"}, &out, &errOut); code != 2 {
		t.Errorf("exit %d", code)
	}
}

// The example Bundles, and the Synthea-style pair with conditional
// references, import with every reference resolved and every identifier
// as sent; fhir check finds nothing in the store, and reports a reference
// that leads nowhere.
func TestFHIRImportCheck(t *testing.T) {
	testdata := filepath.Join("..", "..", "builtin", "fhir", "testdata")
	for _, set := range [][]string{
		{"synthea/uscore_bundle_patient_85.json", "synthea/uscore_bundle_patient_355.json", "synthea/carin_bundle_patient_888.json"},
		{"conditional/info_85.json", "conditional/patient_85.json"},
	} {
		t.Run(strings.Join(set, "+"), func(t *testing.T) {
			dir := t.TempDir()
			store := filepath.Join(dir, "store.db")
			cfgFile := filepath.Join(dir, "omnigate.yaml")
			os.WriteFile(cfgFile, []byte("fhir:\n  store: {path: "+store+"}\n  validate: false\nroutes:\n  - name: fhir\n    fhir: true\n"), 0o644)
			args := []string{"fhir", "import", "-config", cfgFile, "-quiet"}
			// Identifiers whose value is the fullUrl of an entry.
			type ident struct{ typ, system, value string }
			var idents []ident
			for _, name := range set {
				file := filepath.Join(testdata, name)
				args = append(args, file)
				data, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				var b struct {
					Entry []struct {
						FullURL  string `json:"fullUrl"`
						Resource struct {
							ResourceType string `json:"resourceType"`
							Identifier   []struct {
								System, Value string
							} `json:"identifier"`
						} `json:"resource"`
					} `json:"entry"`
				}
				if err := json.Unmarshal(data, &b); err != nil {
					t.Fatal(err)
				}
				full := map[string]bool{}
				for _, e := range b.Entry {
					if e.FullURL != "" {
						full[e.FullURL] = true
					}
				}
				for _, e := range b.Entry {
					for _, id := range e.Resource.Identifier {
						if full[id.Value] {
							idents = append(idents, ident{e.Resource.ResourceType, id.System, id.Value})
						}
					}
				}
			}
			var out, errOut bytes.Buffer
			if code := run(context.Background(), args, &out, &errOut); code != 0 {
				t.Fatalf("import: exit %d\n%s%s", code, out.String(), errOut.String())
			}
			out.Reset()
			if code := run(context.Background(), []string{"fhir", "check", "-config", cfgFile}, &out, &errOut); code != 0 ||
				!strings.Contains(out.String(), ": 0 rewritten strings, 0 dangling references, 0 unresolved references") {
				t.Fatalf("check: exit %d\n%s%s", code, out.String(), errOut.String())
			}

			cfg := fhir.DefaultConfig()
			cfg.Store.Path = store
			h, err := fhir.Open(context.Background(), cfg, fhir.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if len(idents) < 20 {
				t.Errorf("%d identifiers equal to a fullUrl", len(idents))
			}
			for _, id := range idents {
				w := httptest.NewRecorder()
				q := id.typ + "?_summary=count&identifier=" + url.QueryEscape(id.system+"|"+id.value)
				h.ServeHTTP(w, httptest.NewRequest("GET", "http://x/fhir/R4/"+q, nil))
				if !strings.Contains(w.Body.String(), `"total":1`) {
					t.Errorf("%s: %s", q, w.Body.String())
				}
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest("PUT", "http://x/fhir/R4/Observation/dangling",
				strings.NewReader(`{"resourceType":"Observation","id":"dangling","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/nobody"}}`)))
			h.Close()
			if w.Code != 201 {
				t.Fatalf("PUT: %d %s", w.Code, w.Body.String())
			}
			out.Reset()
			if code := run(context.Background(), []string{"fhir", "check", "-config", cfgFile}, &out, &errOut); code != 1 ||
				!strings.Contains(out.String(), `Observation/dangling (version 1): Observation.subject.reference = "Patient/nobody": the referenced resource does not exist`) ||
				!strings.Contains(out.String(), ": 0 rewritten strings, 1 dangling references, 0 unresolved references") {
				t.Errorf("check: exit %d\n%s%s", code, out.String(), errOut.String())
			}
		})
	}
}
