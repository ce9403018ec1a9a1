package main

import (
	"strings"
	"testing"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasmtest"
)

func TestMaskReplacement(t *testing.T) {
	p := wasmtest.Load(t, wasmtest.Build(t, "."), wasmtest.Options{
		Config: `{"fields":["telecom"],"replacement":[{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"masked"}]}]}`,
	})
	res := p.Do(t, wasmtest.Request{
		Path:     "/fhir/R4/Patient/p1",
		Identity: &gateway.Identity{UserID: "n1", Role: "billing"},
		Upstream: wasmtest.Upstream{Body: `{"resourceType":"Patient","id":"p1","telecom":[{"value":"555"}],"address":[{"city":"X"}]}`},
	})
	want := `{"resourceType":"Patient","id":"p1","telecom":[{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"masked"}]}],"address":[{"city":"X"}]}`
	if res.Body != want {
		t.Fatalf("got %s", res.Body)
	}
}

// Bundle20K returns a search Bundle of about 20 KB of Patients, the
// benchmark's body.
func Bundle20K() string {
	var b strings.Builder
	b.WriteString(`{"resourceType":"Bundle","type":"searchset","total":40,"entry":[`)
	for i := 0; i < 40; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"fullUrl":"http://example.org/fhir/Patient/p` + string(rune('a'+i%26)) + `","resource":{"resourceType":"Patient","id":"p1","meta":{"versionId":"1"},` +
			`"identifier":[{"system":"urn:oid:1.2.36.146.595.217.0.1","value":"12345"}],"active":true,` +
			`"name":[{"use":"official","family":"Chalmers","given":["Peter","James"]}],` +
			`"telecom":[{"system":"phone","value":"(03) 5555 6473","use":"work"},{"system":"email","value":"p@example.org"}],` +
			`"gender":"male","birthDate":"1974-12-25",` +
			`"address":[{"use":"home","line":["534 Erewhon St"],"city":"PleasantVille","postalCode":"3999"}]},"search":{"mode":"match"}}`)
	}
	b.WriteString(`]}`)
	return b.String()
}

func TestLargeBundle(t *testing.T) {
	p := wasmtest.Load(t, wasmtest.Build(t, "."), wasmtest.Options{})
	body := Bundle20K()
	res := p.Do(t, wasmtest.Request{
		Path:     "/fhir/R4/Patient",
		Identity: &gateway.Identity{UserID: "rc1", Role: "receptionist"},
		Upstream: wasmtest.Upstream{Body: body},
	})
	if strings.Contains(res.Body, "Erewhon") || strings.Contains(res.Body, "5555") || !strings.Contains(res.Body, "Chalmers") {
		t.Fatalf("not redacted: %.300s", res.Body)
	}
	if got := res.Header.Get("X-PHI-Redacted"); got != "120" {
		t.Errorf("redacted %s elements of a %d-byte Bundle", got, len(body))
	}
}

func TestCases(t *testing.T) {
	wasmtest.RunCases(t, wasmtest.Build(t, "."), "cases.yaml")
}
