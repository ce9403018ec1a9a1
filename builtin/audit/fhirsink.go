package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// maxBundleEntries bounds the AuditEvents of one batch Bundle.
const maxBundleEntries = 200

// fhirSink writes AuditEvents into the embedded FHIR server, in process
// (not through any route, so they are neither audited again nor subject
// to access control), as batch Bundles of PUT AuditEvent/<id>: writing a
// record twice (after a crash, a retry) leaves one AuditEvent.
type fhirSink struct {
	deps sinkDeps
}

func newFHIRSink(deps sinkDeps) *fhirSink { return &fhirSink{deps: deps} }

func (s *fhirSink) close() error { return nil }

func (s *fhirSink) write(ctx context.Context, lines [][]byte) (int, error) {
	rejected := 0
	var events []auditEvent
	for _, l := range lines {
		var rec Record
		if err := json.Unmarshal(l, &rec); err != nil || rec.ID == "" {
			rejected++
			continue
		}
		events = append(events, auditEvents(&rec, s.deps)...)
	}
	for len(events) > 0 {
		n := min(len(events), maxBundleEntries)
		rej, err := s.post(ctx, events[:n])
		if err != nil {
			return rejected, err
		}
		rejected += rej
		events = events[n:]
	}
	return rejected, nil
}

type bundleRequest struct {
	Method string `json:"method"`
	URL    string `json:"url"`
}

type bundleEntry struct {
	Resource *auditEvent   `json:"resource"`
	Request  bundleRequest `json:"request"`
}

type batchBundle struct {
	ResourceType string        `json:"resourceType"`
	Type         string        `json:"type"`
	Entry        []bundleEntry `json:"entry"`
}

// post writes events as one batch; entries the server refuses for good
// (4xx) are counted as rejected, any other failure fails the whole batch.
func (s *fhirSink) post(ctx context.Context, events []auditEvent) (int, error) {
	b := batchBundle{ResourceType: "Bundle", Type: "batch", Entry: make([]bundleEntry, len(events))}
	for i := range events {
		b.Entry[i] = bundleEntry{Resource: &events[i], Request: bundleRequest{Method: http.MethodPut, URL: "AuditEvent/" + events[i].ID}}
	}
	body, err := json.Marshal(b)
	if err != nil {
		return 0, fmt.Errorf("fhir sink: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.deps.base, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("fhir sink: %w", err)
	}
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "return=minimal")
	res := newResponseBuffer()
	s.deps.fhir.ServeHTTP(res, req)
	if res.status != http.StatusOK {
		return 0, fmt.Errorf("fhir sink: the FHIR server answered %d: %s", res.status, diagnostics(res.body.Bytes()))
	}
	var out struct {
		Entry []struct {
			Response struct {
				Status  string          `json:"status"`
				Outcome json.RawMessage `json:"outcome"`
			} `json:"response"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(res.body.Bytes(), &out); err != nil || len(out.Entry) != len(events) {
		return 0, fmt.Errorf("fhir sink: unexpected batch response (%d entries for %d)", len(out.Entry), len(events))
	}
	rejected, firstWhy := 0, ""
	for i, e := range out.Entry {
		code, _ := strconv.Atoi(strings.Fields(e.Response.Status + " 0")[0])
		switch {
		case code >= 200 && code < 300:
		case code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests:
			rejected++
			if firstWhy == "" {
				firstWhy = "AuditEvent/" + events[i].ID + ": " + e.Response.Status + " " + diagnostics(e.Response.Outcome)
			}
		default:
			return 0, fmt.Errorf("fhir sink: AuditEvent/%s: %s %s", events[i].ID, e.Response.Status, diagnostics(e.Response.Outcome))
		}
	}
	if rejected > 0 && s.deps.log != nil {
		s.deps.log.Error("audit: the FHIR server refused AuditEvents; they are not retried", "count", rejected, "first", firstWhy)
	}
	return rejected, nil
}

// diagnostics returns the first issue's diagnostics of an OperationOutcome.
func diagnostics(b []byte) string {
	var oo struct {
		Issue []struct {
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
	}
	if json.Unmarshal(b, &oo) == nil && len(oo.Issue) > 0 {
		return oo.Issue[0].Diagnostics
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return string(b)
}

// responseBuffer is the ResponseWriter of in-process requests.
type responseBuffer struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newResponseBuffer() *responseBuffer { return &responseBuffer{header: http.Header{}} }

func (r *responseBuffer) Header() http.Header { return r.header }

func (r *responseBuffer) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

func (r *responseBuffer) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}
