package main

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/sdk/wasmtest"
)

func TestParseScope(t *testing.T) {
	tests := []struct {
		in   string
		want scope
		ok   bool
	}{
		{"patient/Observation.rs", scope{"patient", "Observation", "rs"}, true},
		{"user/*.cruds", scope{"user", "*", "cruds"}, true},
		{"system/Patient.r", scope{"system", "Patient", "r"}, true},
		{"patient/Observation.read", scope{"patient", "Observation", "rs"}, true},
		{"user/*.write", scope{"user", "*", "cud"}, true},
		{"patient/*.*", scope{"patient", "*", "cruds"}, true},
		{"patient/Observation.sr", scope{}, false},
		{"patient/Observation.rr", scope{}, false},
		{"patient/Observation.", scope{}, false},
		{"patient/Observation.rs?category=laboratory", scope{}, false},
		{"openid", scope{}, false},
		{"launch/patient", scope{}, false},
		{"admin/*.read", scope{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := parseScope(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("parseScope(%q) = %+v, %v", tt.in, got, ok)
			}
		})
	}
}

func TestCompartmentTable(t *testing.T) {
	for typ, want := range map[string]string{"Observation": "subject", "Encounter": "subject", "AllergyIntolerance": "patient", "Appointment": "participant.actor"} {
		found := false
		for _, p := range compartment[typ].paths {
			found = found || p == want
		}
		if !found {
			t.Errorf("%s paths %v lack %s", typ, compartment[typ].paths, want)
		}
	}
	if _, ok := compartment["Organization"]; ok {
		t.Error("Organization is not in the Patient compartment")
	}
}

func TestAllowedOperation(t *testing.T) {
	p := wasmtest.Load(t, wasmtest.Build(t, "."), wasmtest.Options{
		Config: map[string]any{"allow_operations": []string{"everything"}},
	})
	res := p.Do(t, wasmtest.Request{
		Path:     "/fhir/R4/Patient/p1/$everything",
		Identity: &gateway.Identity{UserID: "pat1", Scopes: []string{"patient/*.rs"}, PatientID: "p1"},
		Upstream: wasmtest.Upstream{Body: `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"p1"}},{"resource":{"resourceType":"Encounter","id":"e1","subject":{"reference":"Patient/p1"}}}]}`},
	})
	if res.Decision != wasmtest.Allow {
		t.Fatalf("got %s %d %s\n%v", res.Decision, res.Status, res.Body, res.Logs)
	}
	res = p.Do(t, wasmtest.Request{
		Path:     "/fhir/R4/Patient/p1/$everything",
		Identity: &gateway.Identity{UserID: "pat1", Scopes: []string{"patient/*.rs"}, PatientID: "p1"},
		Upstream: wasmtest.Upstream{Body: `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Encounter","id":"e2","subject":{"reference":"Patient/p9"}}}]}`},
	})
	if res.Decision != wasmtest.Deny || res.Status != 403 {
		t.Fatalf("other patient's data: got %s %d", res.Decision, res.Status)
	}
}

func TestCases(t *testing.T) {
	wasmtest.RunCases(t, wasmtest.Build(t, "."), "cases.yaml")
}

// TestBundles: a batch or transaction is decided entry by entry, so that
// wrapping a request in a Bundle gets it no further than sending it alone.
func TestBundles(t *testing.T) {
	p := wasmtest.Load(t, wasmtest.Build(t, "."), wasmtest.Options{MaxRequestBody: 4 << 10})
	nurse := &gateway.Identity{UserID: "n1", Role: "nurse", Scopes: []string{"user/*.rs"}}
	patient := &gateway.Identity{UserID: "pat1", Role: "patient", Scopes: []string{"patient/*.cruds"}, PatientID: "p1"}
	bundle := func(typ string, entries ...string) string {
		return `{"resourceType":"Bundle","type":"` + typ + `","entry":[` + strings.Join(entries, ",") + `]}`
	}
	get := func(url string) string { return `{"request":{"method":"GET","url":"` + url + `"}}` }
	create := func(typ, subject string) string {
		return `{"resource":{"resourceType":"` + typ + `","subject":{"reference":"Patient/` + subject + `"}},"request":{"method":"POST","url":"` + typ + `"}}`
	}
	for _, tc := range []struct {
		name     string
		who      *gateway.Identity
		method   string
		path     string
		body     string
		decision string
		status   int
		contains string
	}{
		{"the nurse's DELETE alone", nurse, "DELETE", "/fhir/R4/Observation/o1", "", wasmtest.Deny, 403, "no scope grants d on Observation"},
		{"the nurse's batch with the same DELETE", nurse, "POST", "/fhir/R4",
			bundle("batch", get("Patient/p1"), `{"request":{"method":"DELETE","url":"Observation/o1"}}`),
			wasmtest.Deny, 403, "entry[1] (delete Observation): no scope grants d on Observation"},
		{"the DELETE as a transaction", nurse, "POST", "/fhir/R4",
			bundle("transaction", `{"request":{"method":"DELETE","url":"Observation/o1"}}`),
			wasmtest.Deny, 403, "entry[0] (delete Observation)"},
		{"a conditional delete in a batch", nurse, "POST", "/fhir/R4",
			bundle("batch", `{"request":{"method":"DELETE","url":"Observation?code=x"}}`),
			wasmtest.Deny, 403, "entry[0] (delete Observation)"},
		{"a nested batch", nurse, "POST", "/fhir/R4",
			bundle("batch", `{"resource":{"resourceType":"Bundle","type":"batch"},"request":{"method":"POST","url":""}}`),
			wasmtest.Deny, 403, "entry[0] (batch): batch is not allowed"},
		{"the nurse's batch of reads", nurse, "POST", "/fhir/R4",
			bundle("batch", get("Patient/p1"), get("Observation?code=1234-5"), get("metadata")),
			wasmtest.Allow, 200, ""},
		{"a transaction creating for another patient", patient, "POST", "/fhir/R4",
			bundle("transaction", create("Observation", "p1"), create("Condition", "p2")),
			wasmtest.Deny, 403, "entry[1] (create Condition): the new resource does not belong to the patient"},
		{"a create whose resource is of another type", patient, "POST", "/fhir/R4",
			bundle("transaction", `{"resource":{"resourceType":"Patient","id":"p1"},"request":{"method":"POST","url":"Observation"}}`),
			wasmtest.Deny, 403, "entry[0] (create Observation): cannot read the resource to create"},
		{"a transaction within the patient's compartment", patient, "POST", "/fhir/R4",
			bundle("transaction", create("Observation", "p1"), create("Condition", "p1"), get("Patient/p1")),
			wasmtest.Allow, 200, ""},
		{"a batch over max_request_body", nurse, "POST", "/fhir/R4",
			bundle("batch", strings.Repeat(get("Patient/p1")+",", 200)+get("Patient/p1")),
			wasmtest.Deny, 413, "too large to check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := p.Do(t, wasmtest.Request{Method: tc.method, Path: tc.path, Body: tc.body, Identity: tc.who,
				Upstream: wasmtest.Upstream{Body: `{"resourceType":"Bundle","type":"batch-response"}`}})
			if res.Decision != tc.decision || res.Status != tc.status || !strings.Contains(res.Body, tc.contains) {
				t.Fatalf("got %s %d %s", res.Decision, res.Status, res.Body)
			}
			if res.Decision == wasmtest.Allow && res.UpstreamBody != tc.body {
				t.Errorf("the upstream got %q", res.UpstreamBody)
			}
		})
	}
}

// A patient's search of 64 of their own Observations passes under the
// gateway's default deadline (the harness's default: 10ms of CPU per call),
// and one result of another patient among them withholds the page. The
// check costs ≈ 20µs of CPU per resource (twice that under the race
// detector), so a page of a few hundred fits the default budget.
func TestLargePatientSearch(t *testing.T) {
	p := wasmtest.Load(t, wasmtest.Build(t, "."), wasmtest.Options{})
	search := func(body string) *wasmtest.Result {
		return p.Do(t, wasmtest.Request{Path: "/fhir/R4/Observation?_count=64", Identity: patientID,
			Upstream: wasmtest.Upstream{Body: body}})
	}
	for i := 0; i < 3; i++ { // a fresh instance, then warm ones
		if res := search(searchPage(64, -1)); res.Decision != wasmtest.Allow || res.Status != 200 {
			t.Fatalf("search %d of 64 own Observations: %s %d %v", i+1, res.Decision, res.Status, res.Logs)
		}
	}
	if res := search(searchPage(64, 47)); res.Decision != wasmtest.Deny || res.Status != 403 || strings.Contains(res.Body, "p2") {
		t.Fatalf("a page with another patient's Observation: %s %d %s", res.Decision, res.Status, res.Body)
	}
}

var patientID = &gateway.Identity{UserID: "pat1", Role: "patient", Scopes: []string{"patient/*.rs"}, PatientID: "p1"}

// searchPage is a search Bundle of n Observations of patient p1, but the
// one at foreign (if any), of p2.
func searchPage(n int, foreign int) string {
	entries := make([]string, n)
	for i := range entries {
		subject := "Patient/p1"
		if i == foreign {
			subject = "Patient/p2"
		}
		entries[i] = fmt.Sprintf(`{"fullUrl":"http://h/fhir/R4/Observation/o%d","resource":{"resourceType":"Observation","id":"o%d",`+
			`"status":"final","code":{"coding":[{"system":"http://loinc.org","code":"29463-7","display":"Body weight"}]},`+
			`"subject":{"reference":"%s"},"effectiveDateTime":"2024-01-0%dT08:00:00Z","valueQuantity":{"value":7%d.5,"unit":"kg"},`+
			`"performer":[{"reference":"Practitioner/pr1"}]},"search":{"mode":"match"}}`, i, i, subject, i%9+1, i%10)
	}
	return `{"resourceType":"Bundle","type":"searchset","total":` + strconv.Itoa(n) + `,"entry":[` + strings.Join(entries, ",") + `]}`
}

// BenchmarkPatientSearch is a patient's search of n of their own
// Observations through the plugin, one request at a time; cpu-µs/op is the
// process's CPU time per request (host, guest and harness).
func BenchmarkPatientSearch(b *testing.B) {
	for _, n := range []int{64, 400} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			p := wasmtest.Load(b, wasmtest.Build(b, "."), wasmtest.Options{Timeout: time.Second})
			req := wasmtest.Request{Path: "/fhir/R4/Observation", Identity: patientID, Upstream: wasmtest.Upstream{Body: searchPage(n, -1)}}
			p.Do(b, req) // the instance's first call grows its memory
			cpu0 := cpuTime()
			for b.Loop() {
				if res := p.Do(b, req); res.Decision != wasmtest.Allow {
					b.Fatalf("%s %d", res.Decision, res.Status)
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
