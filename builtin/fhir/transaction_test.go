package fhir

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
)

func txBundle(typ string, entries ...map[string]any) map[string]any {
	es := make([]any, len(entries))
	for i, e := range entries {
		es[i] = e
	}
	return map[string]any{"resourceType": "Bundle", "type": typ, "entry": es}
}

func postEntry(fullURL string, res map[string]any, extra ...string) map[string]any {
	req := map[string]any{"method": "POST", "url": res["resourceType"]}
	for i := 0; i+1 < len(extra); i += 2 {
		req[extra[i]] = extra[i+1]
	}
	return map[string]any{"fullUrl": fullURL, "resource": res, "request": req}
}

func reqEntry(method, url string, res map[string]any, extra ...string) map[string]any {
	req := map[string]any{"method": method, "url": url}
	for i := 0; i+1 < len(extra); i += 2 {
		req[extra[i]] = extra[i+1]
	}
	e := map[string]any{"request": req}
	if res != nil {
		e["resource"] = res
	}
	return e
}

func responses(t testing.TB, b map[string]any) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, e := range b["entry"].([]any) {
		out = append(out, e.(map[string]any)["response"].(map[string]any))
	}
	return out
}

func TestTransaction(t *testing.T) {
	h := newTestServer(t)
	put(t, h, "Patient", "old", `"active":true`)
	put(t, h, "Patient", "gone", `"active":true`)
	b := txBundle("transaction",
		postEntry("urn:uuid:11111111-1111-1111-1111-111111111111", map[string]any{
			"resourceType": "Observation", "status": "final", "code": map[string]any{"text": "x"},
			"subject":   map[string]any{"reference": "urn:uuid:22222222-2222-2222-2222-222222222222"},
			"hasMember": []any{map[string]any{"reference": "urn:uuid:33333333-3333-3333-3333-333333333333"}},
		}),
		reqEntry("PUT", "Patient/tp1", map[string]any{"resourceType": "Patient", "id": "tp1", "name": []any{map[string]any{"family": "Tx"}}}),
		postEntry("urn:uuid:33333333-3333-3333-3333-333333333333", map[string]any{"resourceType": "Observation", "status": "final", "code": map[string]any{"text": "y"}}),
		reqEntry("DELETE", "Patient/gone", nil),
		reqEntry("PUT", "Patient/old", map[string]any{"resourceType": "Patient", "id": "old", "active": false}, "ifMatch", `W/"1"`),
		reqEntry("GET", "Patient/tp1", nil),
	)
	b["entry"].([]any)[1].(map[string]any)["fullUrl"] = "urn:uuid:22222222-2222-2222-2222-222222222222"
	r := do(t, h, "POST", "/fhir/R4", b)
	mustStatus(t, r, 200)
	out := r.json(t)
	if out["type"] != "transaction-response" {
		t.Fatalf("type %v", out["type"])
	}
	rs := responses(t, out)
	var statuses []string
	for _, x := range rs {
		statuses = append(statuses, x["status"].(string))
	}
	if want := []string{"201 Created", "201 Created", "201 Created", "204 No Content", "200 OK", "200 OK"}; !slices.Equal(statuses, want) {
		t.Fatalf("statuses %v, want %v", statuses, want)
	}
	loc := rs[0]["location"].(string)
	obs := do(t, h, "GET", "/fhir/R4/"+strings.TrimSuffix(loc, "/_history/1"), nil).json(t)
	if ref := obs["subject"].(map[string]any)["reference"]; ref != "Patient/tp1" {
		t.Errorf("urn:uuid reference rewritten to %v, want Patient/tp1", ref)
	}
	member := obs["hasMember"].([]any)[0].(map[string]any)["reference"].(string)
	if !strings.HasPrefix(member, "Observation/") || strings.Contains(member, "urn:") {
		t.Errorf("hasMember reference %s", member)
	}
	// The rewritten reference is indexed.
	if got := ids(t, h, "Observation?subject=Patient/tp1"); len(got) != 1 {
		t.Errorf("search by rewritten reference: %v", got)
	}
	mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/gone", nil), 410)
	if e := out["entry"].([]any)[5].(map[string]any); e["resource"].(map[string]any)["id"] != "tp1" {
		t.Errorf("GET entry: %v", e)
	}
}

// A failing entry rolls back the whole transaction.
func TestTransactionRollback(t *testing.T) {
	h := newTestServer(t)
	put(t, h, "Patient", "keep", `"active":true`)
	cases := map[string]map[string]any{
		"stale ifMatch": txBundle("transaction",
			postEntry("urn:uuid:a", map[string]any{"resourceType": "Patient"}),
			reqEntry("DELETE", "Patient/keep", nil),
			reqEntry("PUT", "Patient/keep", map[string]any{"resourceType": "Patient", "id": "keep"}, "ifMatch", `W/"9"`)),
		"invalid resource": txBundle("transaction",
			postEntry("urn:uuid:a", map[string]any{"resourceType": "Patient"}),
			reqEntry("DELETE", "Patient/keep", nil),
			postEntry("urn:uuid:b", map[string]any{"resourceType": "Patient", "gender": 12})),
		"unknown type": txBundle("transaction",
			postEntry("urn:uuid:a", map[string]any{"resourceType": "Patient"}),
			reqEntry("DELETE", "Patientx/keep", nil)),
		"ambiguous condition": txBundle("transaction",
			reqEntry("DELETE", "Patient/keep", nil),
			reqEntry("PUT", "Patient?active=true", map[string]any{"resourceType": "Patient"})),
	}
	put(t, h, "Patient", "keep2", `"active":true`)
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			r := do(t, h, "POST", "/fhir/R4", b)
			if r.status < 400 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			oo := r.json(t)
			if oo["resourceType"] != "OperationOutcome" || !strings.Contains(string(r.body), "Bundle.entry[") {
				t.Errorf("outcome does not name the entry: %s", r.body)
			}
			mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/keep", nil), 200)
			if n := do(t, h, "GET", "/fhir/R4/Patient/_history", nil).json(t)["total"].(float64); n != 2 {
				t.Errorf("history has %v versions after a rolled back transaction, want 2", n)
			}
		})
	}
}

func TestBatch(t *testing.T) {
	h := newTestServer(t)
	b := txBundle("batch",
		postEntry("", map[string]any{"resourceType": "Patient"}),
		postEntry("", map[string]any{"resourceType": "Patient", "gender": 12}),
		reqEntry("GET", "Patient/missing", nil),
		reqEntry("PUT", "Patient/b1", map[string]any{"resourceType": "Patient", "id": "b1"}),
		reqEntry("GET", "Patient?_id=b1", nil),
	)
	r := do(t, h, "POST", "/fhir/R4", b)
	mustStatus(t, r, 200)
	out := r.json(t)
	rs := responses(t, out)
	var codes []string
	for _, x := range rs {
		codes = append(codes, x["status"].(string)[:3])
	}
	if !slices.Equal(codes, []string{"201", "400", "404", "201", "200"}) {
		t.Fatalf("statuses %v", codes)
	}
	if rs[1]["outcome"].(map[string]any)["resourceType"] != "OperationOutcome" {
		t.Error("failed entry without outcome")
	}
	search := out["entry"].([]any)[4].(map[string]any)["resource"].(map[string]any)
	if search["type"] != "searchset" || search["total"].(float64) != 1 {
		t.Errorf("search entry %v", search)
	}
}

func TestTransactionConditionalCreate(t *testing.T) {
	h := newTestServer(t)
	bundle := func() map[string]any {
		return txBundle("transaction",
			postEntry("urn:uuid:p", map[string]any{"resourceType": "Patient", "identifier": []any{map[string]any{"system": "urn:x", "value": "7"}}}, "ifNoneExist", "identifier=urn:x|7"),
			postEntry("urn:uuid:o", map[string]any{"resourceType": "Observation", "status": "final", "code": map[string]any{"text": "c"}, "subject": map[string]any{"reference": "urn:uuid:p"}}),
		)
	}
	first := responses(t, do(t, h, "POST", "/fhir/R4", bundle()).json(t))
	second := responses(t, do(t, h, "POST", "/fhir/R4", bundle()).json(t))
	if first[0]["status"] != "201 Created" || second[0]["status"] != "200 OK" {
		t.Fatalf("conditional create statuses %v, %v", first[0]["status"], second[0]["status"])
	}
	pid := strings.Split(first[0]["location"].(string), "/")[1]
	if got := ids(t, h, "Observation?subject=Patient/"+pid); len(got) != 2 {
		t.Errorf("both observations should point at the one patient: %v", got)
	}
}

func TestOnWrite(t *testing.T) {
	h := newTestServer(t)
	var mu sync.Mutex
	var got []Write
	h.OnWrite(func(ctx context.Context, w Write) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, w)
	})
	take := func() []Write {
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = nil
		return out
	}
	put(t, h, "Patient", "w1", `"active":true`)
	put(t, h, "Observation", "wo", `"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/w1"}`)
	ws := take()
	if len(ws) != 2 || ws[0].Type != "Patient" || !slices.Equal(ws[0].Compartments, []string{"Patient/w1"}) ||
		ws[1].ID != "wo" || ws[1].Version != 1 || !slices.Equal(ws[1].Compartments, []string{"Patient/w1"}) {
		t.Fatalf("writes %+v", ws)
	}
	// Moving the observation to another patient reports both.
	put(t, h, "Observation", "wo", `"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/w2"}`)
	if ws := take(); len(ws) != 1 || ws[0].Version != 2 || !slices.Equal(ws[0].Compartments, []string{"Patient/w1", "Patient/w2"}) {
		t.Errorf("move: %+v", ws)
	}
	mustStatus(t, do(t, h, "DELETE", "/fhir/R4/Observation/wo", nil), 204)
	if ws := take(); len(ws) != 1 || !ws[0].Deleted || !slices.Equal(ws[0].Compartments, []string{"Patient/w2"}) {
		t.Errorf("delete: %+v", ws)
	}
	mustStatus(t, do(t, h, "DELETE", "/fhir/R4/Observation/wo", nil), 204)
	if ws := take(); len(ws) != 0 {
		t.Errorf("a no-op delete was reported: %+v", ws)
	}
	// Each entry of a transaction, after the commit; none of a failed one.
	b := txBundle("transaction",
		postEntry("urn:uuid:x", map[string]any{"resourceType": "Patient"}),
		postEntry("", map[string]any{"resourceType": "Encounter", "status": "planned", "class": map[string]any{"code": "AMB"}, "subject": map[string]any{"reference": "urn:uuid:x"}}))
	mustStatus(t, do(t, h, "POST", "/fhir/R4", b), 200)
	ws = take()
	if len(ws) != 2 || ws[1].Type != "Encounter" || len(ws[1].Compartments) != 1 || ws[1].Compartments[0] != "Patient/"+ws[0].ID {
		t.Errorf("transaction writes %+v", ws)
	}
	bad := txBundle("transaction", postEntry("", map[string]any{"resourceType": "Patient"}), postEntry("", map[string]any{"resourceType": "Patient", "gender": 1}))
	do(t, h, "POST", "/fhir/R4", bad)
	if ws := take(); len(ws) != 0 {
		t.Errorf("a rolled back transaction was reported: %+v", ws)
	}
}
