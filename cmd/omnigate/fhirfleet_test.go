package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnigate/omnigate/internal/pgtest"
)

// fleetClient talks to the gateways of these tests: keep-alive
// connections, a bound on every request.
var fleetClient = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

// answer is an HTTP response, read.
type answer struct {
	status int
	header http.Header
	body   []byte
	took   time.Duration
	err    error
}

// call sends a FHIR request (body JSON, or nil) with headers given as
// name, value pairs.
func call(method, url string, body any, headers ...string) answer {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return answer{err: err}
	}
	req.Header.Set("Content-Type", "application/fhir+json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	t0 := time.Now()
	resp, err := fleetClient.Do(req)
	if err != nil {
		return answer{err: err, took: time.Since(t0)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: data, took: time.Since(t0), err: err}
}

func (a answer) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("status %d, body not JSON: %v: %.300s", a.status, err, a.body)
	}
	return m
}

// fhirConfig writes a config whose FHIR store is the PostgreSQL database
// url, without the read cache (a read on one instance sees a write made on
// another at once), and without schema validation (compiling the schema
// takes the race-enabled binary half a minute on a loaded machine).
func fhirConfig(t *testing.T, url, timeout string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "omnigate.yaml")
	cfg := fmt.Sprintf("fhir:\n  validate: false\n  store: {driver: postgres, url: %q, statement_timeout: %s, read_cache: 0}\nroutes:\n  - name: fhir\n    fhir: true\n", url, timeout)
	if err := os.WriteFile(f, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// fhirBase is the FHIR base URL of a running gateway.
func fhirBase(p *proc) string { return "http://" + p.listen + "/fhir/R4" }

// Two gateway processes on one PostgreSQL database: racing updates,
// If-Match races, conditional creates, transaction Bundles, and paging
// from one instance to the other.
func TestFHIRFleetOnPostgres(t *testing.T) {
	cfg := fhirConfig(t, pgtest.NewDatabase(t), "5s")
	a, b := startServe(t, "-config", cfg), startServe(t, "-config", cfg)
	bases := []string{fhirBase(a), fhirBase(b)}

	t.Run("racing updates", func(t *testing.T) {
		if r := call("PUT", bases[0]+"/Patient/race", `{"resourceType":"Patient","id":"race"}`); r.status != 201 {
			t.Fatalf("create: %d %s", r.status, r.body)
		}
		// 4 writers, 2 per instance, 8 updates each.
		const writers, updates = 4, 8
		var mu sync.Mutex
		acked := map[string]string{} // versionId to the writer's mark
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range updates {
					mark := fmt.Sprintf("w%d-u%d", w, i)
					r := call("PUT", bases[w%2]+"/Patient/race", `{"resourceType":"Patient","id":"race","name":[{"family":"`+mark+`"}]}`)
					if r.status != 200 {
						t.Errorf("%s: %d %s", mark, r.status, r.body)
						continue
					}
					v := strings.Trim(strings.TrimPrefix(r.header.Get("ETag"), "W/"), `"`)
					mu.Lock()
					if prev, dup := acked[v]; dup {
						t.Errorf("version %s acknowledged to %s and %s", v, prev, mark)
					}
					acked[v] = mark
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		hist := call("GET", bases[1]+"/Patient/race/_history?_count=100", nil).json(t)
		if hist["total"] != float64(writers*updates+1) {
			t.Errorf("history total %v, want %d", hist["total"], writers*updates+1)
		}
		prev := int64(1 << 62)
		for _, e := range hist["entry"].([]any) {
			res := e.(map[string]any)["resource"].(map[string]any)
			var v int64
			fmt.Sscan(res["meta"].(map[string]any)["versionId"].(string), &v)
			if v >= prev {
				t.Errorf("history not strictly decreasing: %d after %d", v, prev)
			}
			prev = v
			if mark, ok := acked[fmt.Sprint(v)]; ok {
				if got := res["name"].([]any)[0].(map[string]any)["family"]; got != mark {
					t.Errorf("version %d holds %v, acknowledged to %s", v, got, mark)
				}
				delete(acked, fmt.Sprint(v))
			}
		}
		if len(acked) > 0 {
			t.Errorf("acknowledged versions missing from the history: %v", acked)
		}
	})

	t.Run("If-Match races", func(t *testing.T) {
		if r := call("PUT", bases[0]+"/Patient/im", `{"resourceType":"Patient","id":"im"}`); r.status != 201 {
			t.Fatalf("create: %d %s", r.status, r.body)
		}
		for round := range 6 {
			etag := call("GET", bases[round%2]+"/Patient/im", nil).header.Get("ETag")
			statuses := make([]int, 2)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					body := fmt.Sprintf(`{"resourceType":"Patient","id":"im","name":[{"family":"r%d-w%d"}]}`, round, i)
					statuses[i] = call("PUT", bases[i]+"/Patient/im", body, "If-Match", etag).status
				}()
			}
			wg.Wait()
			sort.Ints(statuses)
			if statuses[0] != 200 || (statuses[1] != 409 && statuses[1] != 412) {
				t.Errorf("round %d (If-Match %s): statuses %v, want one 200 and one 409 or 412", round, etag, statuses)
			}
		}
	})

	t.Run("conditional creates", func(t *testing.T) {
		for round := range 6 {
			ident := fmt.Sprintf("urn:test:cc|r%d", round)
			statuses := make([]int, 2)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					body := `{"resourceType":"Patient","identifier":[{"system":"urn:test:cc","value":"r` + fmt.Sprint(round) + `"}]}`
					statuses[i] = call("POST", bases[i]+"/Patient", body, "If-None-Exist", "identifier="+ident).status
				}()
			}
			wg.Wait()
			sort.Ints(statuses)
			if statuses[0] != 200 || statuses[1] != 201 {
				t.Errorf("round %d: statuses %v, want one 201 and one 200", round, statuses)
			}
			n := call("GET", bases[round%2]+"/Patient?_summary=count&identifier="+url.QueryEscape(ident), nil).json(t)["total"]
			if n != float64(1) {
				t.Errorf("round %d: %v patients with %s", round, n, ident)
			}
		}
	})

	t.Run("transaction Bundles", func(t *testing.T) {
		// Each Bundle creates the patient of its round unless it exists,
		// and an Observation of it; the third fails on its If-Match and
		// writes nothing.
		bundle := func(round, i int, doomed bool) map[string]any {
			ent := []any{
				map[string]any{"fullUrl": "urn:uuid:p", "resource": map[string]any{"resourceType": "Patient",
					"identifier": []any{map[string]any{"system": "urn:test:tx", "value": fmt.Sprint(round)}}},
					"request": map[string]any{"method": "POST", "url": "Patient", "ifNoneExist": fmt.Sprintf("identifier=urn:test:tx|%d", round)}},
				map[string]any{"resource": map[string]any{"resourceType": "Observation", "status": "final", "code": map[string]any{"text": "x"},
					"identifier": []any{map[string]any{"system": "urn:test:tx-obs", "value": fmt.Sprintf("%d-%d", round, i)}},
					"subject":    map[string]any{"reference": "urn:uuid:p"}},
					"request": map[string]any{"method": "POST", "url": "Observation"}},
			}
			if doomed {
				ent = append(ent, map[string]any{"resource": map[string]any{"resourceType": "Patient", "id": "im"},
					"request": map[string]any{"method": "PUT", "url": "Patient/im", "ifMatch": `W/"999"`}})
			}
			return map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": ent}
		}
		for round := range 4 {
			statuses := make([]int, 3)
			var wg sync.WaitGroup
			for i := range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					statuses[i] = call("POST", bases[i%2], bundle(round, i, i == 2)).status
				}()
			}
			wg.Wait()
			if statuses[0] != 200 || statuses[1] != 200 || (statuses[2] != 409 && statuses[2] != 412) {
				t.Errorf("round %d: statuses %v, want 200, 200 and 409 or 412", round, statuses)
			}
			pats := call("GET", fmt.Sprintf("%s/Patient?identifier=urn:test:tx|%d", bases[1], round), nil).json(t)
			if pats["total"] != float64(1) {
				t.Fatalf("round %d: %v patients, want 1", round, pats["total"])
			}
			pid := pats["entry"].([]any)[0].(map[string]any)["resource"].(map[string]any)["id"].(string)
			obs := call("GET", fmt.Sprintf("%s/Observation?subject=Patient/%s", bases[0], pid), nil).json(t)
			if obs["total"] != float64(2) {
				t.Errorf("round %d: %v observations of the patient, want the 2 of the Bundles that succeeded", round, obs["total"])
			}
			doomed := call("GET", fmt.Sprintf("%s/Observation?_summary=count&identifier=urn:test:tx-obs|%d-2", bases[0], round), nil).json(t)
			if doomed["total"] != float64(0) {
				t.Errorf("round %d: the failed Bundle wrote its Observation", round)
			}
		}
	})

	t.Run("paging across instances", func(t *testing.T) {
		for i := range 12 {
			body := fmt.Sprintf(`{"resourceType":"Patient","id":"pg%02d","name":[{"family":"Pager"}]}`, i)
			if r := call("PUT", fmt.Sprintf("%s/Patient/pg%02d", bases[i%2], i), body); r.status != 201 {
				t.Fatalf("create: %d %s", r.status, r.body)
			}
		}
		var got []string
		next := bases[0] + "/Patient?family=Pager&_count=5&_sort=_id"
		for page := 0; next != ""; page++ {
			if page > 5 {
				t.Fatal("more pages than there are patients")
			}
			r := call("GET", next, nil)
			if r.status != 200 {
				t.Fatalf("page %d: %d %s", page, r.status, r.body)
			}
			m := r.json(t)
			for _, e := range m["entry"].([]any) {
				got = append(got, e.(map[string]any)["resource"].(map[string]any)["id"].(string))
			}
			next = ""
			for _, l := range m["link"].([]any) {
				if l.(map[string]any)["relation"] == "next" {
					// The next page from the other instance.
					u, _ := url.Parse(l.(map[string]any)["url"].(string))
					u.Host = []string{a.listen, b.listen}[(page+1)%2]
					next = u.String()
				}
			}
			if page == 0 {
				// A deletion between pages does not shift them: the pages
				// come from the snapshot the first one made.
				call("DELETE", bases[1]+"/Patient/pg02", nil)
			}
		}
		want := []string{"pg00", "pg01", "pg02", "pg03", "pg04", "pg05", "pg06", "pg07", "pg08", "pg09", "pg10", "pg11"}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("pages across instances: %v, want %v", got, want)
		}
	})
}

// kill -9 of one of two gateways during writes: every write acknowledged
// before the kill is read through the other.
func TestFHIRFleetKill(t *testing.T) {
	cfg := fhirConfig(t, pgtest.NewDatabase(t), "5s")
	a, b := startServe(t, "-config", cfg), startServe(t, "-config", cfg)
	var mu sync.Mutex
	var acked []string
	stop := writeUntilStopped(4, 200, func(w, i int) bool {
		id := fmt.Sprintf("k%d-%d", w, i)
		r := call("PUT", fhirBase(a)+"/Patient/"+id, `{"resourceType":"Patient","id":"`+id+`"}`)
		if r.err != nil {
			return false // the instance is gone
		}
		if r.status == 201 {
			mu.Lock()
			acked = append(acked, id)
			mu.Unlock()
		}
		return true
	})
	waitFor(t, "some writes", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 20 })
	a.cmd.Process.Kill()
	stop()
	mu.Lock()
	defer mu.Unlock()
	for _, id := range acked {
		if r := call("GET", fhirBase(b)+"/Patient/"+id, nil); r.status != 200 {
			t.Errorf("Patient/%s, acknowledged before the kill: %d %s", id, r.status, r.body)
		}
	}
	t.Logf("%d writes acknowledged before the kill, all read through the other instance", len(acked))
}

// A PostgreSQL restart while clients write transaction Bundles through the
// gateway: during the outage requests get 503 with Retry-After and an
// OperationOutcome, never a 500 nor a wait much past the statement
// timeout, and /readyz is 503; the gateway recovers by itself; every
// acknowledged Bundle is stored whole and every other either whole or not
// at all.
func TestFHIRPostgresRestartThroughGateway(t *testing.T) {
	srv := pgtest.Start(t)
	const timeout = time.Second
	p := startServe(t, "-config", fhirConfig(t, srv.NewDatabase(t), timeout.String()))
	base, admin := fhirBase(p), "http://"+p.admin

	// Bundle n: a patient and an Observation of it, both identified by n.
	bundle := func(n string) string {
		return `{"resourceType":"Bundle","type":"transaction","entry":[
			{"fullUrl":"urn:uuid:p","resource":{"resourceType":"Patient","identifier":[{"system":"urn:test:rs","value":"` + n + `"}]},"request":{"method":"POST","url":"Patient"}},
			{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"identifier":[{"system":"urn:test:rs","value":"` + n + `"}],
			 "subject":{"reference":"urn:uuid:p"}},"request":{"method":"POST","url":"Observation"}}]}`
	}
	var mu sync.Mutex
	var acked, failed []string
	unavailable := 0
	stop := writeUntilStopped(2, 2000, func(w, i int) bool {
		n := fmt.Sprintf("w%d-%d", w, i)
		r := call("POST", base, bundle(n))
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.err != nil:
			t.Errorf("bundle %s: %v", n, r.err)
		case r.status == 200:
			acked = append(acked, n)
		case r.status == 503:
			unavailable++
			failed = append(failed, n)
			if r.header.Get("Retry-After") == "" || !bytes.Contains(r.body, []byte(`"OperationOutcome"`)) {
				t.Errorf("bundle %s: 503 without Retry-After or OperationOutcome: %v %s", n, r.header, r.body)
			}
		default:
			failed = append(failed, n)
			t.Errorf("bundle %s: %d %s", n, r.status, r.body)
		}
		// Generous bound for a loaded machine; a hang would be the
		// client's 20 seconds.
		if r.took > timeout+5*time.Second {
			t.Errorf("bundle %s: answered after %s, statement timeout %s", n, r.took, timeout)
		}
		if r.status == 503 {
			// A client backs off (not holding mu: the test reads the lists).
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			mu.Lock()
		}
		return true
	})
	count := func(list *[]string) int { mu.Lock(); defer mu.Unlock(); return len(*list) }
	waitFor(t, "writes before the outage", func() bool { return count(&acked) >= 5 })
	srv.Stop()
	waitFor(t, "503s during the outage", func() bool { return count(&failed) >= 3 })
	waitFor(t, "/readyz 503 during the outage", func() bool { code, _ := httpGet(t, admin+"/readyz"); return code == 503 })
	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := count(&acked)
	waitFor(t, "writes after the restart", func() bool { return count(&acked) >= before+5 })
	waitFor(t, "/readyz 200 after the restart", func() bool { code, _ := httpGet(t, admin+"/readyz"); return code == 200 })
	stop()

	countOf := func(typ, n string) float64 {
		r := call("GET", base+"/"+typ+"?_summary=count&identifier=urn:test:rs|"+n, nil)
		if r.status != 200 {
			t.Fatalf("count %s %s: %d %s", typ, n, r.status, r.body)
		}
		return r.json(t)["total"].(float64)
	}
	for _, n := range acked {
		if p, o := countOf("Patient", n), countOf("Observation", n); p != 1 || o != 1 {
			t.Errorf("acknowledged bundle %s: %v patients, %v observations", n, p, o)
		}
	}
	for _, n := range failed {
		if p, o := countOf("Patient", n), countOf("Observation", n); p != o || p > 1 {
			t.Errorf("bundle %s answered 503: %v patients, %v observations (partial)", n, p, o)
		}
	}
	t.Logf("%d bundles acknowledged, %d answered 503", len(acked), unavailable)
}

// writeUntilStopped runs n writers, each calling write(w, i) for i from 0
// to limit-1 until write returns false or stop is called; stop waits for
// them.
func writeUntilStopped(n, limit int, write func(w, i int) bool) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < limit; i++ {
				select {
				case <-done:
					return
				default:
				}
				if !write(w, i) {
					return
				}
			}
		}()
	}
	return func() {
		close(done)
		wg.Wait()
	}
}
