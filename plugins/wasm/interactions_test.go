package wasm

import (
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasm/abi"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// interRequest is one request of the interactions tests.
type interRequest struct {
	route   gateway.RouteInfo // default fhirRoute
	method  string
	target  string
	body    string
	chunked bool // no Content-Length
	header  []string
}

// interResult is what the client got and what the upstream saw.
type interResult struct {
	rec          *httptest.ResponseRecorder
	upstreamBody string
	upstreamHdr  http.Header
	upstreamRead error
}

func doInter(p *Plugin, q interRequest) interResult {
	var body io.Reader
	if q.body != "" {
		body = strings.NewReader(q.body)
	}
	r := httptest.NewRequest(q.method, q.target, body)
	if q.chunked {
		r.ContentLength = -1
	}
	if q.route.Name == "" {
		q.route = fhirRoute
	}
	r = r.WithContext(gateway.NewRequestContext(r.Context(), q.route, "req-i", &gateway.Identity{UserID: "n1", Role: "nurse"}))
	for i := 0; i+1 < len(q.header); i += 2 {
		r.Header.Set(q.header[i], q.header[i+1])
	}
	var res interResult
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		res.upstreamBody, res.upstreamRead, res.upstreamHdr = string(b), err, r.Header.Clone()
		w.Header().Set("Content-Type", "application/fhir+json")
		io.WriteString(w, `{"resourceType":"Bundle","type":"batch-response"}`)
	})
	res.rec = httptest.NewRecorder()
	p.ServeHTTP(res.rec, r, up)
	return res
}

// A batch with every kind of entry: plain, conditional, absolute, not an
// interaction at all, and a url that needs escaping.
const batchBody = `{"resourceType":"Bundle","type":"batch","entry":[
 {"request":{"method":"GET","url":"Patient/p1"}},
 {"request":{"method":"delete","url":"Observation/o1"}},
 {"request":{"method":"FROB","url":"Patient/p1"}},
 {"resource":{"resourceType":"Patient"},"request":{"method":"PUT","url":"Patient?identifier=a%7C1"}},
 {"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=b"}},
 {"request":{"method":"GET","url":"http://example.org/fhir/R4/Patient/p2/Observation?code=x"}},
 {"request":{"method":"POST","url":"Patient/p1/$frob\tx\ny"}},
 {"resource":{"resourceType":"Patient"}}
]}`

var batchLines = "read\tPatient\tp1\t\t\t\t\t0\tGET\tPatient/p1\t\n" +
	"delete\tObservation\to1\t\t\t\t\t0\tDELETE\tObservation/o1\t\n" +
	"\t\t\t\t\t\t\t0\tFROB\tPatient/p1\t\n" +
	"update\tPatient\t\t\t\t\t\t1\tPUT\tPatient?identifier=a%257C1\t\n" +
	"create\tPatient\t\t\t\t\t\t1\tPOST\tPatient\tidentifier=b\n" +
	"search-type\tObservation\t\t\t\tPatient\tp2\t0\tGET\thttp://example.org/fhir/R4/Patient/p2/Observation?code=x\t\n" +
	"operation\tPatient\tp1\t\tfrob%09x%0Ay\t\t\t0\tPOST\tPatient/p1/$frob%09x%0Ay\t\n" +
	"\t\t\t\t\t\t\t0\t\t\t\n"

const transactionBody = `{"resourceType":"Bundle","type":"transaction","entry":[
 {"fullUrl":"urn:uuid:1","resource":{"resourceType":"Observation","subject":{"reference":"Patient/p1"}},"request":{"method":"POST","url":"Observation"}},
 {"resource":{"resourceType":"Patient","id":"p9"},"request":{"method":"PUT","url":"Patient/p9"}}
]}`

const transactionLines = "create\tObservation\t\t\t\t\t\t0\tPOST\tObservation\t\n" +
	"update\tPatient\tp9\t\t\t\t\t0\tPUT\tPatient/p9\t\n"

func TestInteractionsProperty(t *testing.T) {
	p, _, _ := newPlugin(t, guest(t, "interguest"), func(o *Options) { o.MaxRequestBody = 4 << 10 })
	big := `{"resourceType":"Bundle","type":"batch","entry":[` +
		strings.Repeat(`{"request":{"method":"GET","url":"Patient/p1"}},`, 200) +
		`{"request":{"method":"DELETE","url":"Patient/p1"}}]}`
	plain := gateway.RouteInfo{Name: "plain", Pattern: "/api/*path"}
	for _, tc := range []struct {
		name string
		req  interRequest
		want string // the lines, or "code N"
	}{
		{"read", interRequest{method: "GET", target: "/fhir/R4/Patient/p1"},
			"read\tPatient\tp1\t\t\t\t\t0\tGET\tPatient/p1\t\n"},
		{"compartment search with a query", interRequest{method: "GET", target: "/fhir/R4/Patient/p1/Observation?code=a%7Cb"},
			"search-type\tObservation\t\t\t\tPatient\tp1\t0\tGET\tPatient/p1/Observation?code=a%257Cb\t\n"},
		{"delete", interRequest{method: "DELETE", target: "/fhir/R4/Observation/o1"},
			"delete\tObservation\to1\t\t\t\t\t0\tDELETE\tObservation/o1\t\n"},
		{"conditional create", interRequest{method: "POST", target: "/fhir/R4/Patient", body: `{"resourceType":"Patient"}`,
			header: []string{"If-None-Exist", "identifier=x"}},
			"create\tPatient\t\t\t\t\t\t1\tPOST\tPatient\tidentifier=x\n"},
		{"conditional delete", interRequest{method: "DELETE", target: "/fhir/R4/Observation?code=x"},
			"delete\tObservation\t\t\t\t\t\t1\tDELETE\tObservation?code=x\t\n"},
		{"a path that is no FHIR interaction still has its line", interRequest{method: "GET", target: "/fhir/R4/foo/bar"},
			"\t\t\t\t\t\t\t0\tGET\tfoo/bar\t\n"},
		{"batch: one line per entry, in order", interRequest{method: "POST", target: "/fhir/R4", body: batchBody}, batchLines},
		{"batch at the base with a slash", interRequest{method: "POST", target: "/fhir/R4/", body: batchBody}, batchLines},
		{"batch without Content-Length", interRequest{method: "POST", target: "/fhir/R4", body: batchBody, chunked: true}, batchLines},
		{"transaction", interRequest{method: "POST", target: "/fhir/R4", body: transactionBody}, transactionLines},
		{"a Bundle without entries", interRequest{method: "POST", target: "/fhir/R4",
			body: `{"resourceType":"Bundle","type":"transaction"}`}, ""},
		{"a batch over max_request_body", interRequest{method: "POST", target: "/fhir/R4", body: big}, "code -2"},
		{"a batch over max_request_body without Content-Length", interRequest{method: "POST", target: "/fhir/R4", body: big, chunked: true}, "code -2"},
		{"not JSON", interRequest{method: "POST", target: "/fhir/R4", body: `<Bundle xmlns="http://hl7.org/fhir"/>`}, "code -4"},
		{"another type of Bundle", interRequest{method: "POST", target: "/fhir/R4", body: `{"resourceType":"Bundle","type":"collection","entry":[]}`}, "code -4"},
		{"no body", interRequest{method: "POST", target: "/fhir/R4"}, "code -4"},
		{"not a FHIR route", interRequest{route: plain, method: "POST", target: "/api", body: batchBody}, "code -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.header = append(tc.req.header, "X-Test", "raw")
			res := doInter(p, tc.req)
			if res.rec.Code != 200 {
				t.Fatalf("status %d: %s", res.rec.Code, res.rec.Body)
			}
			got := res.upstreamHdr.Get("X-Interactions")
			if !strings.HasPrefix(got, "code ") {
				b, err := hex.DecodeString(got)
				if err != nil {
					t.Fatal(err)
				}
				got = string(b)
			}
			if got != tc.want {
				t.Errorf("got\n%q\nwant\n%q", got, tc.want)
			}
			// The rest of the chain gets the body as the client sent it,
			// under the cap or over it.
			if res.upstreamRead != nil || res.upstreamBody != tc.req.body {
				t.Errorf("upstream read %d bytes (error %v), want the %d sent", len(res.upstreamBody), res.upstreamRead, len(tc.req.body))
			}
		})
	}
}

func TestInteractionsSDK(t *testing.T) {
	p, _, _ := newPlugin(t, guest(t, "interguest"), nil)
	res := doInter(p, interRequest{method: "POST", target: "/fhir/R4", body: batchBody, header: []string{"X-Test", "sdk"}})
	var got []struct {
		fhirreq.Request
		Conditional              bool
		Method, URL, IfNoneExist string
	}
	if err := json.Unmarshal([]byte(res.upstreamHdr.Get("X-Interactions")), &got); err != nil {
		t.Fatalf("%v: %q", err, res.upstreamHdr.Get("X-Interactions"))
	}
	if len(got) != 8 {
		t.Fatalf("%d interactions: %+v", len(got), got)
	}
	if e := got[1]; e.Interaction != fhirreq.Delete || e.Type != "Observation" || e.ID != "o1" || e.Method != "DELETE" {
		t.Errorf("entry 1: %+v", e)
	}
	if e := got[2]; e.Interaction != "" || e.Method != "FROB" || e.URL != "Patient/p1" {
		t.Errorf("entry 2: %+v", e)
	}
	if e := got[3]; !e.Conditional || e.URL != "Patient?identifier=a%7C1" {
		t.Errorf("entry 3: %+v", e)
	}
	if e := got[4]; !e.Conditional || e.IfNoneExist != "identifier=b" {
		t.Errorf("entry 4: %+v", e)
	}
	if e := got[6]; e.Operation != "frob\tx\ny" || e.URL != "Patient/p1/$frob\tx\ny" {
		t.Errorf("entry 6 escapes: %+v", e)
	}
	res = doInter(p, interRequest{method: "GET", target: "/api/x", route: gateway.RouteInfo{Name: "plain", Pattern: "/api/*path"},
		header: []string{"X-Test", "sdk"}})
	if got := res.upstreamHdr.Get("X-Interactions"); got != "error omnigate: absent" {
		t.Errorf("outside FHIR routes: %q", got)
	}
}

// TestInteractionsKeepBodyPrivate: the host reads a batch's body for the
// interactions, but body_get still needs PhaseRequestBody.
func TestInteractionsKeepBodyPrivate(t *testing.T) {
	p, _, _ := newPlugin(t, guest(t, "interguest"), nil)
	res := doInter(p, interRequest{method: "POST", target: "/fhir/R4", body: batchBody, header: []string{"X-Test", "body"}})
	if got := res.upstreamHdr.Get("X-Body"); got != "omnigate: absent" {
		t.Errorf("body_get without PhaseRequestBody: %q", got)
	}
	if res.upstreamBody != batchBody {
		t.Errorf("upstream body %q", res.upstreamBody)
	}
}

// TestInteractionsInTheResponsePhase: a plugin with a response handler
// only still gets a batch's entries, read before the upstream took the
// body.
func TestInteractionsInTheResponsePhase(t *testing.T) {
	p, _, _ := newPlugin(t, guest(t, "interresp"), nil)
	res := doInter(p, interRequest{method: "POST", target: "/fhir/R4", body: transactionBody})
	if res.upstreamBody != transactionBody {
		t.Errorf("upstream body %q", res.upstreamBody)
	}
	got := res.rec.Header().Get("X-Interactions")
	if !strings.Contains(got, `"Interaction":"create","Type":"Observation"`) || !strings.Contains(got, `"ID":"p9"`) {
		t.Errorf("response phase saw %s", got)
	}
}

func TestAppendEscaped(t *testing.T) {
	for in, want := range map[string]string{
		"":                "",
		"Patient/p1":      "Patient/p1",
		"a%b":             "a%25b",
		"\t\n\r\x00\x7f":  "%09%0A%0D%00%7F",
		"é ünïcode?x=1&y": "é ünïcode?x=1&y",
	} {
		if got := string(appendEscaped(nil, in)); got != want {
			t.Errorf("appendEscaped(%q) = %q, want %q", in, got, want)
		}
	}
	if abi.InteractionFields != 11 {
		t.Errorf("ABI v1 lines have 11 fields, not %d", abi.InteractionFields)
	}
}
