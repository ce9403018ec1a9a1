package external

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/internal/externaltest"
	"github.com/omnigate/omnigate/sdk/external"
)

// bodyEcho is an upstream that answers with the request body it read and
// echoes the request headers starting with X-Seen.
func bodyEcho(t *testing.T) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range r.Header {
			if strings.HasPrefix(k, "X-Seen") {
				w.Header()[k] = v
			}
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		w.Write(b)
	}))
	t.Cleanup(up.Close)
	return up
}

// interactionsGateway serves mode behind test-identity on a FHIR route
// (/fhir/R4) and a plain one (/api), both to an upstream that echoes the
// body.
func interactionsGateway(t *testing.T, mode, extra string) http.Handler {
	up := bodyEcho(t)
	srv, _ := externaltest.Gateway(t, fmt.Sprintf(`
log: {access_log: false}
plugins:
  ident: {type: test-identity}
  policy:
    type: external
    path: %s
    env: {%s: %s}
%s
routes:
  - name: fhir
    path: /fhir/R4/*path
    upstream: %s
    fhir_errors: true
    plugins: [ident, policy]
  - name: api
    path: /api/*path
    upstream: %s
    plugins: [ident, policy]
`, os.Args[0], helperEnv, mode, withDefaults(extra), up.URL, up.URL))
	return srv
}

const (
	batchBody = `{"resourceType":"Bundle","type":"batch","entry":[
 {"request":{"method":"GET","url":"Patient/p1"}},
 {"request":{"method":"delete","url":"Observation/o1"}},
 {"request":{"method":"FROB","url":"Patient/p1"}},
 {"resource":{"resourceType":"Patient"},"request":{"method":"PUT","url":"Patient?identifier=a"}},
 {"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=b"}},
 {"request":{"method":"GET","url":"http://example.org/fhir/R4/Patient/p2/Observation?code=x"}}
]}`
	transactionBody = `{"resourceType":"Bundle","type":"transaction","entry":[
 {"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Observation"}},
 {"request":{"method":"DELETE","url":"Patient/p9"}}
]}`
)

func decodeInteractions(t *testing.T, s string) []external.Interaction {
	t.Helper()
	var list []external.Interaction
	if err := json.Unmarshal([]byte(s), &list); err != nil {
		t.Fatalf("%v: %q", err, s)
	}
	return list
}

func TestInteractions(t *testing.T) {
	srv := interactionsGateway(t, "interactions", "    max_request_body: 1KiB\n")
	big := `{"resourceType":"Bundle","type":"batch","entry":[` +
		strings.Repeat(`{"request":{"method":"GET","url":"Patient/p1"}},`, 40) +
		`{"request":{"method":"DELETE","url":"Patient/p1"}}]}`
	for _, tc := range []struct {
		name, method, path, body string
		hdr                      []string
		chunked                  bool // no Content-Length
		want                     []external.Interaction
		err                      string
	}{
		{name: "read", method: "GET", path: "/fhir/R4/Patient/p1",
			want: []external.Interaction{{FHIR: external.FHIR{Interaction: "read", Type: "Patient", ID: "p1"}, Method: "GET", URL: "Patient/p1"}}},
		{name: "conditional create", method: "POST", path: "/fhir/R4/Patient", body: `{"resourceType":"Patient"}`,
			hdr: []string{"If-None-Exist", "identifier=x"},
			want: []external.Interaction{{FHIR: external.FHIR{Interaction: "create", Type: "Patient"}, Conditional: true,
				Method: "POST", URL: "Patient", IfNoneExist: "identifier=x"}}},
		{name: "a path that is no FHIR interaction", method: "GET", path: "/fhir/R4/a/b/c/d/e/f",
			want: []external.Interaction{{Method: "GET", URL: "a/b/c/d/e/f"}}},
		{name: "batch", method: "POST", path: "/fhir/R4", body: batchBody,
			want: []external.Interaction{
				{FHIR: external.FHIR{Interaction: "read", Type: "Patient", ID: "p1"}, Method: "GET", URL: "Patient/p1"},
				{FHIR: external.FHIR{Interaction: "delete", Type: "Observation", ID: "o1"}, Method: "DELETE", URL: "Observation/o1"},
				{Method: "FROB", URL: "Patient/p1"},
				{FHIR: external.FHIR{Interaction: "update", Type: "Patient"}, Conditional: true, Method: "PUT", URL: "Patient?identifier=a"},
				{FHIR: external.FHIR{Interaction: "create", Type: "Patient"}, Conditional: true, Method: "POST", URL: "Patient", IfNoneExist: "identifier=b"},
				{FHIR: external.FHIR{Interaction: "search-type", Type: "Observation", CompartmentType: "Patient", CompartmentID: "p2"},
					Method: "GET", URL: "http://example.org/fhir/R4/Patient/p2/Observation?code=x"},
			}},
		{name: "transaction", method: "POST", path: "/fhir/R4/", body: transactionBody,
			want: []external.Interaction{
				{FHIR: external.FHIR{Interaction: "create", Type: "Observation"}, Method: "POST", URL: "Observation"},
				{FHIR: external.FHIR{Interaction: "delete", Type: "Patient", ID: "p9"}, Method: "DELETE", URL: "Patient/p9"},
			}},
		{name: "over max_request_body", method: "POST", path: "/fhir/R4", body: big, err: external.ErrInteractionsTooLarge.Error()},
		{name: "over max_request_body without Content-Length", method: "POST", path: "/fhir/R4", body: big, chunked: true,
			err: external.ErrInteractionsTooLarge.Error()},
		{name: "batch without Content-Length", method: "POST", path: "/fhir/R4", body: transactionBody, chunked: true,
			want: []external.Interaction{
				{FHIR: external.FHIR{Interaction: "create", Type: "Observation"}, Method: "POST", URL: "Observation"},
				{FHIR: external.FHIR{Interaction: "delete", Type: "Patient", ID: "p9"}, Method: "DELETE", URL: "Patient/p9"},
			}},
		{name: "not JSON", method: "POST", path: "/fhir/R4", body: `<Bundle xmlns="http://hl7.org/fhir"/>`, err: external.ErrInteractionsInvalid.Error()},
		{name: "not a FHIR route", method: "POST", path: "/api/x", body: batchBody, err: external.ErrNotFHIR.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := io.Reader(strings.NewReader(tc.body))
			if tc.chunked {
				body = io.MultiReader(body) // of unknown length
			}
			rec := externaltest.Do(srv, tc.method, tc.path, body, tc.hdr...)
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			seen := rec.Header().Get("X-Seen-Interactions")
			if tc.err != "" {
				if seen != "error: "+tc.err {
					t.Errorf("got %q, want error %q", seen, tc.err)
				}
			} else if got := decodeInteractions(t, seen); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			// The response phase sees the same list.
			if got := rec.Header().Get("X-Response-Interactions"); got != seen {
				t.Errorf("response phase saw %q", got)
			}
			// The upstream got the body as sent, under the cap or over it.
			if rec.Body.String() != tc.body {
				t.Errorf("upstream read %d bytes, want the %d sent", rec.Body.Len(), len(tc.body))
			}
		})
	}
}

// TestInteractionsWithBody: a plugin that reads bodies gets the batch's
// body once, with its entries.
func TestInteractionsWithBody(t *testing.T) {
	srv := interactionsGateway(t, "interactions-body", "")
	rec := externaltest.Do(srv, "POST", "/fhir/R4", strings.NewReader(transactionBody))
	if rec.Code != 200 || rec.Body.String() != transactionBody {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if got := rec.Header().Get("X-Seen-Body"); got != fmt.Sprint(len(transactionBody)) {
		t.Errorf("plugin saw a body of %q bytes", got)
	}
	if list := decodeInteractions(t, rec.Header().Get("X-Seen-Interactions")); len(list) != 2 || list[1].Interaction != "delete" {
		t.Errorf("interactions %+v", list)
	}
}
