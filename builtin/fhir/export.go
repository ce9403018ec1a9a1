package fhir

// Bulk data export (FHIR Bulk Data Access 2.0): $export at the base, on
// Patient and on a Group kicks off a job that writes NDJSON files in the
// background; its status URL is polled until the manifest lists them, and
// they are downloaded from the server. Only the identity that started an
// export may poll, cancel or download it, and the export holds what the
// access policy of its kick-off let that identity search (a
// patient-scoped caller exports only its compartment).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/gateway/outcome"
)

// exportKind is the level an export was invoked at.
type exportKind string

const (
	exportSystem  exportKind = "system"
	exportPatient exportKind = "patient"
	exportGroup   exportKind = "group"
)

// outputFormats are the _outputFormat values accepted; all mean NDJSON.
var outputFormats = []string{"application/fhir+ndjson", "application/ndjson", "ndjson"}

// exportRetryAfter is the Retry-After, in seconds, of status answers while
// an export runs.
const exportRetryAfter = "2"

// exportKickoff starts an export: it checks the request and what the
// policy allows, records the job and answers 202 with the status URL in
// Content-Location.
func (h *Handler) exportKickoff(w http.ResponseWriter, req *request, kind exportKind, group string) error {
	ctx := req.Context()
	if !preferAsync(req.Header.Values("Prefer")) {
		return errorf(http.StatusBadRequest, "$export runs asynchronously: send Prefer: respond-async")
	}
	params, err := h.operationParams(req)
	if err != nil {
		return err
	}
	j := &exportJob{Kind: kind, Group: group, Owner: ownerKey(ctx), Request: requestURL(req)}
	if err := h.parseExport(ctx, req, params, j); err != nil {
		return err
	}
	if kind == exportGroup {
		if err := h.readable(ctx, w, "Group", group); err != nil {
			return err
		}
		members, err := h.groupMembers(ctx, group)
		if err != nil {
			return err
		}
		if j.Patients != nil {
			members = slices.DeleteFunc(members, func(id string) bool { return !slices.Contains(j.Patients, id) })
		}
		j.Patients = members
	}
	if err := h.export.start(ctx, h, j, h.localBases(req)); err != nil {
		return err
	}
	status := req.base + "/" + opExportStatus + "?_jobId=" + j.ID
	w.Header().Set("Content-Location", status)
	oo := outcome.Of(outcome.Issue{Severity: "information", Code: "informational",
		Diagnostics: "export " + j.ID + " accepted: poll " + status})
	outcome.Write(w, http.StatusAccepted, oo)
	return nil
}

// preferAsync reports whether Prefer asks for respond-async.
func preferAsync(vals []string) bool {
	for _, v := range vals {
		for _, part := range strings.Split(v, ",") {
			for _, tok := range strings.Split(part, ";") {
				if strings.TrimSpace(tok) == "respond-async" {
					return true
				}
			}
		}
	}
	return false
}

// preferLenient reports whether Prefer asks for handling=lenient.
func preferLenient(vals []string) bool {
	for _, v := range vals {
		for _, part := range strings.Split(v, ",") {
			for _, kv := range strings.Split(part, ";") {
				k, val, _ := strings.Cut(strings.TrimSpace(kv), "=")
				if strings.TrimSpace(k) == "handling" && strings.Trim(strings.TrimSpace(val), `"`) == "lenient" {
					return true
				}
			}
		}
	}
	return false
}

// requestURL is the absolute URL of the request, as the manifest repeats it.
func requestURL(req *request) string {
	u := req.base + "/" + strings.Join(req.segs, "/")
	if req.URL.RawQuery != "" {
		u += "?" + req.URL.RawQuery
	}
	return u
}

// ownerKey identifies the caller for the exports it starts: its user id
// and the patient in context, hashed. Anonymous callers share one key.
func ownerKey(ctx context.Context) string {
	var user, patient string
	if id := gateway.IdentityFrom(ctx); id != nil {
		user, patient = id.UserID, id.PatientID
	}
	if p := access.FromContext(ctx); p != nil && p.Patient() != "" {
		patient = p.Patient()
	}
	sum := sha256.Sum256([]byte(user + "\x00" + patient))
	return hex.EncodeToString(sum[:])
}

// parseExport reads the kick-off parameters into j: _outputFormat, _since,
// _type, _typeFilter and, at patient and group level, patient. Types the
// policy does not let the caller search or read are refused (403) when
// listed in _type; unsupported parameters are a 400 unless Prefer says
// handling=lenient.
func (h *Handler) parseExport(ctx context.Context, req *request, params url.Values, j *exportJob) error {
	lenient := preferLenient(req.Header.Values("Prefer"))
	var bad []issue
	fail := func(name, format string, args ...any) {
		is := newIssue(http.StatusBadRequest, "$export: "+name+": "+fmt.Sprintf(format, args...))
		is.Expression = []string{name}
		bad = append(bad, is)
	}
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		vals := params[name]
		switch name {
		case "_outputFormat":
			if f := vals[len(vals)-1]; !slices.Contains(outputFormats, f) {
				fail(name, "%q is not supported: use application/fhir+ndjson", f)
			}
		case "_since":
			s, err := instant(vals[len(vals)-1])
			if err != nil {
				fail(name, "%v", err)
				continue
			}
			j.Since = s
		case "_type":
			set, err := typeList(vals)
			if err != nil {
				fail(name, "%v", err)
				continue
			}
			for t := range set {
				j.Types = append(j.Types, t)
			}
			sort.Strings(j.Types)
		case "_typeFilter":
			// Checked below, once _type is known.
		case "patient":
			if j.Kind == exportSystem {
				fail(name, "only Patient/$export and Group/[id]/$export take patient")
				continue
			}
			c := newCollector(h, h.localBases(req))
			for _, v := range vals {
				for _, ref := range strings.Split(v, ",") {
					typ, id, ok := c.localRef(strings.TrimSpace(ref))
					if !ok || typ != "Patient" {
						fail(name, "%q is not a reference to a Patient of this server", ref)
						continue
					}
					if !slices.Contains(j.Patients, id) {
						j.Patients = append(j.Patients, id)
					}
				}
			}
			if j.Patients == nil {
				j.Patients = []string{}
			}
		case "_format", "_pretty":
		default:
			if !lenient {
				fail(name, "not supported by this server (send Prefer: handling=lenient to have it ignored)")
			}
		}
	}
	for _, v := range params["_typeFilter"] {
		typ, query, ok := strings.Cut(v, "?")
		if !ok || !spec.IsResourceType(typ) {
			fail("_typeFilter", "%q: want [type]?[search parameters]", v)
			continue
		}
		if j.Types != nil && !slices.Contains(j.Types, typ) {
			fail("_typeFilter", "%q: %s is not listed in _type", v, typ)
			continue
		}
		q, err := url.ParseQuery(query)
		if err != nil || len(q) == 0 {
			fail("_typeFilter", "%q: bad query", v)
			continue
		}
		if _, err := search.ParseConstraint(typ, q, h.now()); err != nil {
			fail("_typeFilter", "%q: %v", v, err)
			continue
		}
		if j.TypeFilters == nil {
			j.TypeFilters = map[string][]string{}
		}
		j.TypeFilters[typ] = append(j.TypeFilters[typ], q.Encode())
	}
	if len(bad) > 0 {
		return &httpError{status: http.StatusBadRequest, issues: bad}
	}
	// An export is the searches it amounts to: each type listed must be
	// one the caller may search (or, outside the compartment, read).
	for _, t := range j.Types {
		if _, err := h.guardFor(ctx, access.Search, t, ""); err != nil {
			if _, err2 := h.guardFor(ctx, access.Read, t, ""); err2 != nil {
				return forbidden("$export: ", "%s: %v", t, err)
			}
		}
	}
	return nil
}

// groupMembers returns the ids of the Patients a Group lists as active
// members (Group.member.entity).
func (h *Handler) groupMembers(ctx context.Context, id string) ([]string, error) {
	v, err := h.current(ctx, h.store, "Group", id, "")
	if err != nil {
		return nil, err
	}
	var g struct {
		Member []struct {
			Entity   struct{ Reference string } `json:"entity"`
			Inactive bool                       `json:"inactive"`
		} `json:"member"`
	}
	if err := json.Unmarshal(v.Body, &g); err != nil {
		return nil, fmt.Errorf("decode Group/%s: %w", id, err)
	}
	out := []string{}
	for _, m := range g.Member {
		typ, pid, ok := strings.Cut(m.Entity.Reference, "/")
		if ok && typ == "Patient" && validID(pid) && !m.Inactive && !slices.Contains(out, pid) {
			out = append(out, pid)
		}
	}
	return out, nil
}

// runExport writes the export's files: every type in name order, each in
// files of at most MaxLines resources.
func (h *Handler) runExport(ctx context.Context, x *exporter, j *exportJob) error {
	c := newCollector(h, j.local)
	c.since = j.Since
	c.until = j.TransactionTime
	if j.Types != nil {
		c.types = map[string]bool{}
		for _, t := range j.Types {
			c.types[t] = true
		}
	}
	for t, qs := range j.TypeFilters {
		for _, s := range qs {
			q, err := url.ParseQuery(s)
			if err != nil {
				return fmt.Errorf("type filter: %w", err)
			}
			if c.filters == nil {
				c.filters = map[string][]url.Values{}
			}
			c.filters[t] = append(c.filters[t], q)
		}
	}
	var groups []typedMatches
	switch j.Kind {
	case exportSystem:
		types := j.Types
		if types == nil {
			types = spec.ResourceTypes
		}
		for _, t := range types {
			ms, err := c.find(ctx, t, "", nil)
			if err != nil {
				return err
			}
			if len(ms) > 0 {
				groups = append(groups, typedMatches{t, ms})
			}
		}
	default:
		patients := j.Patients
		if j.Kind == exportPatient {
			all, err := h.visiblePatients(ctx)
			if err != nil {
				return err
			}
			if patients != nil {
				all = slices.DeleteFunc(all, func(id string) bool { return !slices.Contains(patients, id) })
			}
			patients = all
		}
		var err error
		if groups, err = c.patientGroups(ctx, patients); err != nil {
			return err
		}
	}
	total := 0
	for _, g := range groups {
		total += len(g.ms)
	}
	x.progress(j, 0, total, "")
	done := 0
	for _, g := range groups {
		if err := x.writeType(ctx, h, j, g, &done, total); err != nil {
			return err
		}
	}
	return nil
}

// patientGroups returns the matches of the patients' compartments and of
// what they reference outside every compartment, by type in name order,
// each resource once.
func (c *collector) patientGroups(ctx context.Context, patients []string) ([]typedMatches, error) {
	byType := map[string][]store.Match{}
	seen := map[int64]bool{}
	for _, pid := range patients {
		groups, err := c.compartment(ctx, pid)
		if err != nil {
			return nil, err
		}
		for _, g := range groups {
			for _, m := range g.ms {
				if !seen[m.Key] {
					seen[m.Key] = true
					byType[g.typ] = append(byType[g.typ], m)
				}
			}
		}
	}
	refs := refSet{}
	for _, ms := range byType {
		if err := c.scanMatches(ctx, refs, ms); err != nil {
			return nil, err
		}
	}
	inc, err := c.resolve(ctx, refs)
	if err != nil {
		return nil, err
	}
	for _, g := range inc {
		byType[g.typ] = g.ms
	}
	types := make([]string, 0, len(byType))
	for t := range byType {
		types = append(types, t)
	}
	sort.Strings(types)
	out := make([]typedMatches, 0, len(types))
	for _, t := range types {
		ms := byType[t]
		sort.Slice(ms, func(i, j int) bool { return ms[i].Key < ms[j].Key })
		out = append(out, typedMatches{t, ms})
	}
	return out, nil
}

// ndjsonLine appends body to b as one NDJSON line.
func ndjsonLine(b *bytes.Buffer, body []byte) error {
	if bytes.ContainsAny(body, "\n\r") {
		if err := json.Compact(b, body); err != nil {
			return err
		}
	} else {
		b.Write(body)
	}
	b.WriteByte('\n')
	return nil
}

// lookupJob returns the job the request names (_jobId) if the caller
// started it; otherwise the 404 of an unknown export.
func (h *Handler) lookupJob(req *request) (*exportJob, error) {
	id := req.query.Get("_jobId")
	j := h.export.get(id)
	if j == nil || j.Owner != ownerKey(req.Context()) {
		return nil, errorf(http.StatusNotFound, "no export %q", id)
	}
	return j, nil
}

// exportStatus answers a status request: 202 with X-Progress while the
// export runs, then 200 with the manifest.
func (h *Handler) exportStatus(w http.ResponseWriter, req *request) error {
	j, err := h.lookupJob(req)
	if err != nil {
		return err
	}
	st := h.export.snapshot(j)
	if !st.finished() {
		w.Header().Set("X-Progress", st.progressText())
		w.Header().Set("Retry-After", exportRetryAfter)
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
	m := map[string]any{
		"transactionTime":     st.TransactionTime,
		"request":             st.Request,
		"requiresAccessToken": true,
		"output":              h.manifestFiles(req, st, st.Output),
		"error":               h.manifestFiles(req, st, st.Errors),
	}
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Expires", st.Completed.Add(h.export.retentionTime()).UTC().Format(http.TimeFormat))
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
	return nil
}

func (h *Handler) manifestFiles(req *request, j exportJob, fs []exportFile) []map[string]any {
	out := []map[string]any{}
	for _, f := range fs {
		out = append(out, map[string]any{"type": f.Type, "url": req.base + "/" + opExportFile + "?_jobId=" + j.ID + "&file=" + url.QueryEscape(f.Name),
			"count": f.Count})
	}
	return out
}

// exportCancel answers DELETE on the status URL: the export stops (if it
// runs) and its files are deleted.
func (h *Handler) exportCancel(w http.ResponseWriter, req *request) error {
	j, err := h.lookupJob(req)
	if err != nil {
		return err
	}
	if err := h.export.remove(req.Context(), j); err != nil {
		return err
	}
	oo := outcome.Of(outcome.Issue{Severity: "information", Code: "informational", Diagnostics: "export " + j.ID + " cancelled and deleted"})
	outcome.Write(w, http.StatusAccepted, oo)
	return nil
}

// exportFile serves one file of a completed export.
func (h *Handler) exportFile(w http.ResponseWriter, req *request) error {
	j, err := h.lookupJob(req)
	if err != nil {
		return err
	}
	name := req.query.Get("file")
	st := h.export.snapshot(j)
	if !st.finished() || !slices.ContainsFunc(append(slices.Clone(st.Output), st.Errors...), func(f exportFile) bool { return f.Name == name }) {
		return errorf(http.StatusNotFound, "export %s has no file %q", j.ID, name)
	}
	f, size, err := h.export.open(j, name)
	if err != nil {
		if errors.Is(err, errExpired) {
			return errorf(http.StatusNotFound, "export %s has no file %q", j.ID, name)
		}
		return err
	}
	defer f.Close()
	hd := w.Header()
	hd.Set("Content-Type", "application/fhir+ndjson")
	hd.Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	if req.Method == http.MethodHead {
		return nil
	}
	_, err = copyBuffer(w, f)
	if err != nil {
		h.log.Warn("export file download interrupted", "job", j.ID, "file", name, "error", err.Error())
	}
	return nil
}
