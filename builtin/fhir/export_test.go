package fhir

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/gateway"
)

// asUser is h behind a policy for the identity user, as the session and
// authz plugins hand requests on.
func asUser(h http.Handler, p *access.Policy, user string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if p != nil {
			ctx = access.WithPolicy(ctx, p)
		}
		id := &gateway.Identity{UserID: user}
		if p != nil {
			id.PatientID = p.Patient()
		}
		h.ServeHTTP(w, r.WithContext(gateway.SetIdentity(ctx, id)))
	})
}

// newExportFixture is an access fixture holding the Bundles of patients 85
// and 888, whose exports go to a folder of the test's.
func newExportFixture(t *testing.T, mod ...func(*Config)) *accessFixture {
	t.Helper()
	dir := t.TempDir()
	off := false
	h := newTestServer(t, append([]func(*Config){func(c *Config) { c.Export.Dir, c.SchemaValidation = dir, &off }}, mod...)...)
	return loadAccessFixture(t, h, "85", "888")
}

// kickoff starts an export and returns its status path.
func kickoff(t *testing.T, h http.Handler, method, path string, body any) string {
	t.Helper()
	r := do(t, h, method, path, body, "Prefer", "respond-async", "Accept", "application/fhir+json")
	mustStatus(t, r, http.StatusAccepted)
	loc := r.header.Get("Content-Location")
	if !strings.Contains(loc, "/$export-poll-status?_jobId=") {
		t.Fatalf("Content-Location %q", loc)
	}
	return linkPath(loc)
}

// jobOf returns the job a status path names.
func jobOf(t *testing.T, x *exporter, status string) *exportJob {
	t.Helper()
	u, _ := url.Parse(status)
	j := x.get(u.Query().Get("_jobId"))
	if j == nil {
		t.Fatalf("no job for %s", status)
	}
	return j
}

// finish waits for the export to end and returns its manifest.
func finish(t *testing.T, h http.Handler, x *exporter, status string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := x.wait(ctx, jobOf(t, x, status)); err != nil {
		t.Fatalf("export did not finish: %v", err)
	}
	r := do(t, h, "GET", status, nil)
	mustStatus(t, r, 200)
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("manifest Content-Type %q", ct)
	}
	if r.header.Get("Expires") == "" {
		t.Error("no Expires")
	}
	return r.json(t)
}

// exported downloads the files a manifest lists: the resources by
// "Type/id", each file's lines checked to be of its type.
func exported(t *testing.T, h http.Handler, m map[string]any) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, o := range m["output"].([]any) {
		om := o.(map[string]any)
		r := do(t, h, "GET", linkPath(om["url"].(string)), nil, "Accept", "application/fhir+ndjson")
		mustStatus(t, r, 200)
		if ct := r.header.Get("Content-Type"); ct != "application/fhir+ndjson" {
			t.Errorf("file Content-Type %q", ct)
		}
		n := 0
		sc := bufio.NewScanner(bytes.NewReader(r.body))
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			var res map[string]any
			if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
				t.Fatalf("line %d of %s: %v", n+1, om["url"], err)
			}
			if res["resourceType"] != om["type"] {
				t.Errorf("a %v in the %v file", res["resourceType"], om["type"])
			}
			ref := res["resourceType"].(string) + "/" + res["id"].(string)
			if out[ref] != nil {
				t.Errorf("%s exported twice", ref)
			}
			out[ref] = res
			n++
		}
		if float64(n) != om["count"].(float64) {
			t.Errorf("%v: %d lines, count %v", om["url"], n, om["count"])
		}
	}
	return out
}

func refsOf(m map[string]map[string]any) []string {
	out := make([]string, 0, len(m))
	for ref := range m {
		out = append(out, ref)
	}
	sort.Strings(out)
	return out
}

// withoutMeta drops meta.versionId and meta.lastUpdated (and meta if
// nothing else is left).
func withoutMeta(res map[string]any) map[string]any {
	cp := map[string]any{}
	for k, v := range res {
		cp[k] = v
	}
	if m, ok := cp["meta"].(map[string]any); ok {
		mm := map[string]any{}
		for k, v := range m {
			if k != "versionId" && k != "lastUpdated" {
				mm[k] = v
			}
		}
		cp["meta"] = mm
		if len(mm) == 0 {
			delete(cp, "meta")
		}
	}
	return cp
}

// TestExportRoundTrip: a system export of the example data holds every
// resource of the Bundles, one file per type with the Bundles' counts, and
// its resources, imported into an empty store, equal the originals.
func TestExportRoundTrip(t *testing.T) {
	f := readOnlyFixture(t)
	status := kickoff(t, f.h, "GET", "/fhir/R4/$export", nil)
	m := finish(t, f.h, f.h.export, status)
	if m["requiresAccessToken"] != true || m["transactionTime"] == "" || !strings.HasSuffix(m["request"].(string), "/fhir/R4/$export") {
		t.Errorf("manifest %v", m)
	}
	if errs := m["error"].([]any); len(errs) != 0 {
		t.Errorf("errors %v", errs)
	}
	// One file per type, with the number of resources the Bundles hold.
	want := map[string]int{}
	var all []string
	for _, p := range []string{"85", "355", "888"} {
		for i, r := range f.res[p] {
			want[r["resourceType"].(string)]++
			all = append(all, f.refs[p][i])
		}
	}
	got := map[string]int{}
	for _, o := range m["output"].([]any) {
		om := o.(map[string]any)
		got[om["type"].(string)] += int(om["count"].(float64))
		if !strings.HasSuffix(om["url"].(string), "-1.ndjson") {
			t.Errorf("%v: more than one file for a type", om["url"])
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d types exported, the Bundles have %d", len(got), len(want))
	}
	for typ, n := range want {
		if got[typ] != n {
			t.Errorf("%s: %d exported, the Bundles have %d", typ, got[typ], n)
		}
	}
	res := exported(t, f.h, m)
	sort.Strings(all)
	sameRefs(t, "exported", refsOf(res), all)

	// Import into an empty store, by id as the files give it (a batch of
	// PUTs, as the import command writes NDJSON).
	off := false
	empty := newTestServer(t, func(c *Config) { c.SchemaValidation = &off })
	var batch []any
	for ref, r := range res {
		batch = append(batch, map[string]any{"resource": r, "request": map[string]any{"method": "PUT", "url": ref}})
	}
	r := do(t, empty, "POST", "/fhir/R4", map[string]any{"resourceType": "Bundle", "type": "batch", "entry": batch})
	mustStatus(t, r, 200)
	for i, rs := range responses(t, r.json(t)) {
		if rs["status"] != "201 Created" {
			t.Fatalf("import entry %d: %v", i, rs)
		}
	}
	// Every resource of the original store equals its copy.
	everything := func(h *Handler) map[string]map[string]any {
		out := map[string]map[string]any{}
		for _, e := range entries(t, do(t, h, "GET", "/fhir/R4?_count=1000", nil).json(t)) {
			out[e["resourceType"].(string)+"/"+e["id"].(string)] = e
		}
		return out
	}
	orig, copied := everything(f.h), everything(empty)
	sameRefs(t, "the copy", refsOf(copied), refsOf(orig))
	sameRefs(t, "the original store", refsOf(orig), all)
	for ref, a := range orig {
		if b := copied[ref]; !jsonEqual(withoutMeta(a), withoutMeta(b)) {
			t.Errorf("%s differs after the round trip:\n%s\n%s", ref, mustJSON(t, a), mustJSON(t, b))
		}
	}
}

func jsonEqual(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// TestExportParameters: _type, _typeFilter, _since, _outputFormat, the
// file size limit, the patient and group levels, and the kick-off's
// errors.
func TestExportParameters(t *testing.T) {
	f := newExportFixture(t, func(c *Config) { c.Export.MaxLines = 25 })
	x := f.h.export
	t.Run("_type and _typeFilter", func(t *testing.T) {
		q := url.Values{"_type": {"Observation,Condition"}, "_typeFilter": {"Observation?category=laboratory"}, "_outputFormat": {"ndjson"}}
		m := finish(t, f.h, x, kickoff(t, f.h, "GET", "/fhir/R4/$export?"+q.Encode(), nil))
		want := join(f.lab("85"), f.lab("888"), f.all("Condition"))
		sameRefs(t, "exported", refsOf(exported(t, f.h, m)), want)
	})
	t.Run("files of at most max_lines", func(t *testing.T) {
		m := finish(t, f.h, x, kickoff(t, f.h, "GET", "/fhir/R4/$export?_type=Observation", nil))
		var counts []int
		for _, o := range m["output"].([]any) {
			counts = append(counts, int(o.(map[string]any)["count"].(float64)))
		}
		n := len(f.all("Observation"))
		if n <= 50 || len(counts) != (n+24)/25 || counts[0] != 25 || counts[len(counts)-1] != n-25*(len(counts)-1) {
			t.Errorf("file counts %v for %d Observations", counts, n)
		}
		sameRefs(t, "all files", refsOf(exported(t, f.h, m)), f.all("Observation"))
	})
	t.Run("patient level", func(t *testing.T) {
		m := finish(t, f.h, x, kickoff(t, f.h, "GET", "/fhir/R4/Patient/$export", nil))
		var want []string
		for _, p := range []string{"85", "888"} {
			want = append(want, f.members(p, "")...)
			want = append(want, f.outsideRefs(t, p, anyType)...)
		}
		sameRefs(t, "exported", refsOf(exported(t, f.h, m)), join(want))
	})
	t.Run("patient parameter, POST", func(t *testing.T) {
		body := `{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/888"}},{"name":"_type","valueString":"Patient,Coverage"}]}`
		m := finish(t, f.h, x, kickoff(t, f.h, "POST", "/fhir/R4/Patient/$export", body))
		sameRefs(t, "exported", refsOf(exported(t, f.h, m)), join(f.members("888", "Patient"), f.members("888", "Coverage")))
	})
	t.Run("group level", func(t *testing.T) {
		g := `{"resourceType":"Group","id":"g","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/85"}},{"entity":{"reference":"Patient/888"}},{"entity":{"reference":"Patient/355"},"inactive":true}]}`
		mustStatus(t, do(t, f.h, "PUT", "/fhir/R4/Group/g", g), 201)
		m := finish(t, f.h, x, kickoff(t, f.h, "GET", "/fhir/R4/Group/g/$export", nil))
		want := join(f.members("85", ""), f.members("888", ""), f.outsideRefs(t, "85", anyType), f.outsideRefs(t, "888", anyType), []string{"Group/g"})
		sameRefs(t, "exported", refsOf(exported(t, f.h, m)), want)
		r := do(t, f.h, "GET", "/fhir/R4/Group/none/$export", nil, "Prefer", "respond-async")
		mustStatus(t, r, 404)
	})
	t.Run("_since", func(t *testing.T) {
		obs := f.members("85", "Observation")[3]
		r := do(t, f.h, "GET", "/fhir/R4/"+obs, nil)
		r = do(t, f.h, "PUT", "/fhir/R4/"+obs, r.body)
		mustStatus(t, r, 200)
		since := r.json(t)["meta"].(map[string]any)["lastUpdated"].(string)
		m := finish(t, f.h, x, kickoff(t, f.h, "GET", "/fhir/R4/$export?_since="+url.QueryEscape(since), nil))
		sameRefs(t, "updated since", refsOf(exported(t, f.h, m)), []string{obs})
		if m["transactionTime"].(string) < since {
			t.Errorf("transactionTime %v before %s", m["transactionTime"], since)
		}
	})
	t.Run("kick-off errors", func(t *testing.T) {
		for _, c := range []struct {
			path, prefer string
			status       int
			msg          string
		}{
			{"/fhir/R4/$export", "", 400, "respond-async"},
			{"/fhir/R4/$export?_outputFormat=text/csv", "respond-async", 400, "_outputFormat"},
			{"/fhir/R4/$export?_since=yesterday", "respond-async", 400, "_since"},
			{"/fhir/R4/$export?_type=Nothing", "respond-async", 400, "_type"},
			{"/fhir/R4/$export?_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal", "respond-async", 400, "not listed in _type"},
			{"/fhir/R4/$export?_typeFilter=Observation%3Fbogus%3D1", "respond-async", 400, "bogus"},
			{"/fhir/R4/$export?_typeFilter=Observation%3F_count%3D1", "respond-async", 400, "_count"},
			{"/fhir/R4/$export?patient=Patient/85", "respond-async", 400, "patient"},
			{"/fhir/R4/$export?includeAssociatedData=x", "respond-async", 400, "includeAssociatedData"},
			{"/fhir/R4/$export?_elements=id", "respond-async", 400, "_elements"},
		} {
			r := do(t, f.h, "GET", c.path, nil, "Prefer", c.prefer)
			if r.status != c.status {
				t.Errorf("%s: %d, want %d: %s", c.path, r.status, c.status, r.body)
				continue
			}
			if _, d := outcomeOf(t, r); !strings.Contains(d, c.msg) {
				t.Errorf("%s: %q, want it to mention %q", c.path, d, c.msg)
			}
		}
		// Lenient handling ignores what is not supported.
		r := do(t, f.h, "GET", "/fhir/R4/$export?_type=Patient&includeAssociatedData=x", nil, "Prefer", "respond-async, handling=lenient")
		mustStatus(t, r, 202)
		finish(t, f.h, x, linkPath(r.header.Get("Content-Location")))
	})
}

// TestExportAccess: a patient-scoped caller exports its own compartment
// (and the readable types) only, at every level; only the identity that
// started an export polls, downloads and cancels it.
func TestExportAccess(t *testing.T) {
	f := newExportFixture(t)
	x := f.h.export
	p85 := asUser(f.h, patient85, "alice")
	var readableAll []string
	for _, t := range readable {
		readableAll = append(readableAll, f.all(t)...)
	}
	check := func(t *testing.T, h http.Handler, m map[string]any, want []string) {
		t.Helper()
		res := exported(t, h, m)
		sameRefs(t, "exported", refsOf(res), want)
		for ref, r := range res {
			// A Group the patient is a member of is in its compartment:
			// exported as a read of it answers, other members included.
			if !strings.HasPrefix(ref, "Group/") {
				f.noLeak(t, ref, mustJSON(t, r))
			}
		}
	}
	t.Run("system level", func(t *testing.T) {
		m := finish(t, p85, x, kickoff(t, p85, "GET", "/fhir/R4/$export", nil))
		check(t, p85, m, join(f.members("85", ""), readableAll))
	})
	t.Run("patient level", func(t *testing.T) {
		m := finish(t, p85, x, kickoff(t, p85, "GET", "/fhir/R4/Patient/$export", nil))
		check(t, p85, m, join(f.members("85", ""), f.outsideRefs(t, "85", anyType, typesOf(readable...))))
	})
	t.Run("patient parameter naming another", func(t *testing.T) {
		m := finish(t, p85, x, kickoff(t, p85, "GET", "/fhir/R4/Patient/$export?patient=Patient/355", nil))
		check(t, p85, m, nil)
	})
	t.Run("group level", func(t *testing.T) {
		g := `{"resourceType":"Group","id":"all","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/85"}},{"entity":{"reference":"Patient/888"}}]}`
		mustStatus(t, do(t, f.h, "PUT", "/fhir/R4/Group/all", g), 201)
		m := finish(t, p85, x, kickoff(t, p85, "GET", "/fhir/R4/Group/all/$export", nil))
		check(t, p85, m, join(f.members("85", ""), f.outsideRefs(t, "85", anyType, typesOf(readable...)), []string{"Group/all"}))
		// A group without the patient is not one it may read.
		g2 := `{"resourceType":"Group","id":"others","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/888"}}]}`
		mustStatus(t, do(t, f.h, "PUT", "/fhir/R4/Group/others", g2), 201)
		mustStatus(t, do(t, p85, "GET", "/fhir/R4/Group/others/$export", nil, "Prefer", "respond-async"), 404)
	})
	t.Run("types the policy refuses", func(t *testing.T) {
		mustStatus(t, do(t, p85, "GET", "/fhir/R4/$export?_type=Device", nil, "Prefer", "respond-async"), 403)
		mustStatus(t, do(t, asUser(f.h, nobody, "n"), "GET", "/fhir/R4/$export?_type=Patient", nil, "Prefer", "respond-async"), 403)
	})
	t.Run("only its owner", func(t *testing.T) {
		status := kickoff(t, p85, "GET", "/fhir/R4/$export?_type=Patient", nil)
		m := finish(t, p85, x, status)
		file := linkPath(m["output"].([]any)[0].(map[string]any)["url"].(string))
		for name, h := range map[string]http.Handler{
			"another user":                      asUser(f.h, patient85, "mallory"),
			"the same user for another patient": asUser(f.h, access.NewPolicy(access.ParseScopes([]string{"patient/*.rs"}), access.PolicyOptions{Patient: "355"}), "alice"),
			"a physician":                       asUser(f.h, physician, "bob"),
			"no identity":                       f.h,
		} {
			for _, req := range [][2]string{{"GET", status}, {"GET", file}, {"DELETE", status}} {
				r := do(t, h, req[0], req[1], nil)
				if r.status != 404 {
					t.Errorf("%s: %s %s: %d, want 404", name, req[0], req[1], r.status)
				}
				f.noLeak(t, name, r.body)
			}
		}
		// The owner still has it.
		mustStatus(t, do(t, p85, "GET", file, nil), 200)
		mustStatus(t, do(t, p85, "DELETE", status, nil), 202)
		mustStatus(t, do(t, p85, "GET", status, nil), 404)
		mustStatus(t, do(t, p85, "GET", file, nil), 404)
	})
}

// TestExportLifecycle: progress while running, cancellation, bounded
// jobs, retention, the admin listing, and restarts.
func TestExportLifecycle(t *testing.T) {
	dir := t.TempDir()
	clock := newTestClock(testEpoch)
	open := func() *Handler {
		off := false
		return newTestServerAt(t, clock, func(c *Config) {
			c.Export.Dir, c.Export.Concurrency, c.Export.MaxJobs, c.SchemaValidation = dir, 1, 2, &off
		})
	}
	h := open()
	mustStatus(t, do(t, h, "POST", "/fhir/R4", sharedExample(t, "carin_bundle_patient_888.json")), 200)
	// Jobs wait in onRun until released (or cancelled).
	release := make(chan struct{})
	running := make(chan *exportJob, 4)
	h.export.onRun = func(ctx context.Context, j *exportJob) {
		running <- j
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	first := kickoff(t, h, "GET", "/fhir/R4/$export", nil)
	<-running
	r := do(t, h, "GET", first, nil)
	mustStatus(t, r, 202)
	if r.header.Get("X-Progress") == "" || r.header.Get("Retry-After") == "" {
		t.Errorf("running: X-Progress %q, Retry-After %q", r.header.Get("X-Progress"), r.header.Get("Retry-After"))
	}
	second := kickoff(t, h, "GET", "/fhir/R4/$export?_type=Patient", nil)
	if r := do(t, h, "GET", second, nil); r.status != 202 || r.header.Get("X-Progress") != "queued" {
		t.Errorf("queued: %d %q", r.status, r.header.Get("X-Progress"))
	}
	// max_jobs: 2 unfinished.
	r = do(t, h, "GET", "/fhir/R4/$export", nil, "Prefer", "respond-async")
	mustStatus(t, r, 429)

	// The admin listing shows both.
	w := httptest.NewRecorder()
	h.export.adminHandler().ServeHTTP(w, httptest.NewRequest("GET", "/admin/fhir/exports", nil))
	var list struct {
		Exports []struct{ ID, Status string } `json:"exports"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || len(list.Exports) != 2 {
		t.Fatalf("admin listing: %v %s", err, w.Body)
	}
	statuses := []string{list.Exports[0].Status, list.Exports[1].Status}
	sort.Strings(statuses)
	if !slices.Equal(statuses, []string{jobAccepted, jobRunning}) {
		t.Errorf("statuses %v", statuses)
	}

	// Cancelling the running one frees its slot: the queued one runs.
	firstJob := jobOf(t, h.export, first)
	mustStatus(t, do(t, h, "DELETE", first, nil), 202)
	mustStatus(t, do(t, h, "GET", first, nil), 404)
	if _, err := os.Stat(filepath.Join(dir, firstJob.ID)); !os.IsNotExist(err) {
		t.Errorf("the cancelled export's folder is still there: %v", err)
	}
	<-running
	close(release)
	m := finish(t, h, h.export, second)
	if len(m["output"].([]any)) != 1 {
		t.Fatalf("manifest %v", m)
	}
	file := linkPath(m["output"].([]any)[0].(map[string]any)["url"].(string))

	// A restart: the completed export is still served; one that was
	// running fails, its manifest saying why, its partial files gone.
	crashed := "0123456789abcdef0123456789abcdef"
	os.MkdirAll(filepath.Join(dir, crashed), 0o700)
	os.WriteFile(filepath.Join(dir, crashed, "Patient-1.ndjson"), []byte(`{"resourceType":"Patient","id":"half"}`+"\n"), 0o600)
	state := `{"id":"` + crashed + `","owner":"` + ownerKey(context.Background()) + `","kind":"system","request":"http://fhir.test/fhir/R4/$export","status":"in-progress","created":"2024-06-01T12:00:00Z","output":[],"errors":[]}`
	os.WriteFile(filepath.Join(dir, crashed, "job.json"), []byte(state), 0o600)
	h.Close()
	h2 := open()
	mustStatus(t, do(t, h2, "GET", second, nil), 200)
	r = do(t, h2, "GET", file, nil)
	mustStatus(t, r, 200)
	if !strings.Contains(string(r.body), `"id":"888"`) {
		t.Errorf("the file after the restart: %s", r.body)
	}
	r = do(t, h2, "GET", "/fhir/R4/$export-poll-status?_jobId="+crashed, nil)
	mustStatus(t, r, 200)
	cm := r.json(t)
	if len(cm["output"].([]any)) != 0 || len(cm["error"].([]any)) != 1 {
		t.Fatalf("manifest of the interrupted export: %s", r.body)
	}
	errFile := linkPath(cm["error"].([]any)[0].(map[string]any)["url"].(string))
	r = do(t, h2, "GET", errFile, nil)
	mustStatus(t, r, 200)
	if !strings.Contains(string(r.body), "OperationOutcome") || !strings.Contains(string(r.body), "restart") {
		t.Errorf("error file %s", r.body)
	}
	if _, err := os.Stat(filepath.Join(dir, crashed, "Patient-1.ndjson")); !os.IsNotExist(err) {
		t.Error("the partial file of the interrupted export is still there")
	}

	// A server that stops while an export runs fails it the same way.
	h2.export.onRun = func(ctx context.Context, j *exportJob) {
		running <- j
		<-ctx.Done()
	}
	stopped := kickoff(t, h2, "GET", "/fhir/R4/$export", nil)
	<-running
	h2.Close()
	h3 := open()
	r = do(t, h3, "GET", stopped, nil)
	mustStatus(t, r, 200)
	if errs := r.json(t)["error"].([]any); len(errs) != 1 {
		t.Errorf("manifest of an export the stop ended: %s", r.body)
	}

	// Retention: an hour after completion, the export and its files are
	// gone.
	clock.Advance(time.Hour + time.Second)
	h3.export.sweep()
	for _, p := range []string{second, file, stopped} {
		mustStatus(t, do(t, h3, "GET", p, nil), 404)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("%d folders left after the retention", len(ents))
	}
}

// TestExportConfig: the export keys are validated, each error naming its
// key.
func TestExportConfig(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"export: {dir: \"\"}", "export.dir"},
		{"export: {retention: 0s}", "export.retention"},
		{"export: {max_lines: 0}", "export.max_lines"},
		{"export: {concurrency: 0}", "export.concurrency"},
		{"export: {concurrency: 4, max_jobs: 2}", "export.max_jobs"},
	} {
		_, err := gateway.Parse("t.yaml", []byte("fhir:\n  "+c.yaml+"\nroutes:\n  - name: fhir\n    fhir: true\n"), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to name %q", c.yaml, err, c.want)
		}
	}
	d := DefaultConfig().Export
	if d.Dir != "./data/exports" || d.Retention != time.Hour || d.MaxLines != 100000 || d.Concurrency != 2 || d.MaxJobs != 16 {
		t.Errorf("defaults %+v", d)
	}
}
