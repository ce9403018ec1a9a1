package wasmtest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/gateway"
)

const requireHeader = "../../examples/require-header"

func TestDo(t *testing.T) {
	p := Load(t, Build(t, requireHeader), Options{Config: map[string]any{"header": "X-Tenant"}, KV: map[string]string{"k": "v"}})
	res := p.Do(t, Request{Path: "/fhir/R4/Patient/1", Identity: &gateway.Identity{UserID: "u"}})
	if res.Decision != Deny || res.Status != 400 || res.UpstreamCalled {
		t.Fatalf("got %+v", res)
	}
	res = p.Do(t, Request{Path: "/x", NotFHIR: true, Header: map[string]string{"X-Tenant": "a"}})
	if res.Decision != Allow || res.UpstreamHeader.Get("X-Tenant") != "a" {
		t.Fatalf("got %+v", res)
	}
	if v, ok := p.KV("k"); !ok || v != "v" {
		t.Errorf("seeded KV = %q %v", v, ok)
	}
	if p.Counter("denied") != 1 {
		t.Errorf("denied = %v", p.Counter("denied"))
	}
}

// A deliberately wrong case must fail, in go test and in RunFile.
func TestWrongCaseFails(t *testing.T) {
	cases := filepath.Join(t.TempDir(), "wrong.yaml")
	os.WriteFile(cases, []byte(`
config: {header: X-Tenant}
cases:
  - name: right
    request: {path: /fhir/R4/Patient/1}
    expect: {decision: deny, status: 400}
  - name: wrong on purpose
    request: {path: /fhir/R4/Patient/1}
    expect: {decision: allow, status: 200, body_contains: [Patient], headers: {X-Nope: "1"}, counters: {denied: 5}}
`), 0o644)
	var out bytes.Buffer
	failed, err := RunFile(&out, Build(t, requireHeader), cases)
	if err != nil {
		t.Fatal(err)
	}
	if failed != 1 {
		t.Fatalf("failed = %d\n%s", failed, &out)
	}
	for _, want := range []string{
		"ok    right (",
		"FAIL  wrong on purpose (",
		"decision = deny, want allow",
		"status = 400, want 200",
		`header X-Nope = "", want "1"`,
		"counter denied = 2, want 5",
		"wrong.yaml: 1 of 2 cases failed",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, &out)
		}
	}
	// The same file through RunCases fails its subtest.
	cs, _ := ReadCases(cases)
	p, err := cs.Open(Build(t, requireHeader))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, bad := cs.Cases[0].Run(p); len(bad) != 0 {
		t.Errorf("right case failed: %v", bad)
	}
	if _, bad := cs.Cases[1].Run(p); len(bad) == 0 {
		t.Error("wrong case passed")
	}
}

func TestReadCasesErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key": "cases:\n  - name: x\n    expect: {stauts: 200}\n",
		"bad fail":    "fail: maybe\ncases: []\n",
	} {
		t.Run(name, func(t *testing.T) {
			f := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
			os.WriteFile(f, []byte(body), 0o644)
			if _, err := ReadCases(f); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// A case whose request is a batch POSTed to the FHIR base gives the plugin
// the Bundle's entries as interactions, bounded by max_request_body, and
// the upstream the body as sent.
func TestBundleCases(t *testing.T) {
	smartScopes := Build(t, "../../examples/smart-scopes")
	cases := filepath.Join(t.TempDir(), "bundles.yaml")
	os.WriteFile(cases, []byte(`
max_request_body: 512
cases:
  - name: a DELETE entry is decided like a DELETE
    request:
      method: POST
      path: /fhir/R4
      body: '{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/p1"}},{"request":{"method":"DELETE","url":"Observation/o1"}}]}'
    identity: {user: n1, role: nurse, scopes: [user/*.rs]}
    expect: {decision: deny, status: 403, body_contains: ['entry[1] (delete Observation)']}
  - name: reads pass
    request:
      method: POST
      path: /fhir/R4
      body: '{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/p1"}}]}'
    identity: {user: n1, role: nurse, scopes: [user/*.rs]}
    expect: {decision: allow, status: 200}
  - name: over max_request_body the entries are unknown
    request:
      method: POST
      path: /fhir/R4
      body: '{"resourceType":"Bundle","type":"batch","entry":[`+strings.Repeat(`{"request":{"method":"GET","url":"Patient/p1"}},`, 20)+`{}]}'
    identity: {user: n1, role: nurse, scopes: [user/*.rs]}
    expect: {decision: deny, status: 413}
`), 0o644)
	var out bytes.Buffer
	if failed, err := RunFile(&out, smartScopes, cases); err != nil || failed != 0 {
		t.Fatalf("failed %d, %v\n%s", failed, err, &out)
	}
	cs, err := ReadCases(cases)
	if err != nil || cs.MaxRequestBody != 512 {
		t.Fatalf("max_request_body %d, %v", cs.MaxRequestBody, err)
	}
	p, err := cs.Open(smartScopes)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	res, bad := cs.Cases[1].Run(p)
	if len(bad) > 0 || res.UpstreamBody != cs.Cases[1].Request.Body {
		t.Errorf("%v; upstream body %q", bad, res.UpstreamBody)
	}
}

// The harness runs calls under the gateway's default deadline, so a guest
// that loops fails as fast, and as plainly, as in production.
func TestProductionDeadline(t *testing.T) {
	p := Load(t, Build(t, "../../plugins/wasm/testdata/guests/testguest"), Options{})
	res := p.Do(t, Request{Path: "/fhir/R4/Patient/1", Header: map[string]string{"X-Test": "loop"}})
	if res.Decision != Fail || res.Status != 500 {
		t.Fatalf("a guest that loops: %s %d", res.Decision, res.Status)
	}
	found := false
	for _, l := range res.Logs {
		found = found || strings.Contains(l.String(), "over the CPU budget of 10ms")
	}
	if !found {
		t.Errorf("no record of the 10ms budget: %v", res.Logs)
	}
}
