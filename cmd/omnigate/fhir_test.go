package main

import (
	"bytes"
	"context"
	"net/http/httptest"
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

func TestFHIRImportUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"fhir"}, &out, &errOut); code != 2 {
		t.Errorf("exit %d", code)
	}
	if code := run(context.Background(), []string{"fhir", "import"}, &out, &errOut); code != 2 {
		t.Errorf("exit %d", code)
	}
}
