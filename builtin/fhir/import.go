package fhir

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/gateway"
)

// ConfigFrom returns the FHIR server's config from a loaded gateway config
// (its top-level "fhir:" key, already checked by gateway.Parse), with the
// defaults for keys it leaves out.
func ConfigFrom(c *gateway.Config) (*Config, error) {
	cfg := DefaultConfig()
	if c.FHIR.Kind != 0 {
		if err := c.FHIR.Decode(cfg); err != nil {
			return nil, fmt.Errorf("decode fhir config: %w", err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("fhir config: %w", err)
	}
	return cfg, nil
}

// ImportSummary counts what Import did.
type ImportSummary struct {
	// Resources is how many resources (Bundle entries, NDJSON lines) were
	// read.
	Resources int
	// Created, Updated and Deleted count the writes; Unchanged counts
	// conditional creates that found their resource and reads.
	Created, Updated, Deleted, Unchanged int
	// Failed counts entries that were rejected; Errors holds the first
	// messages.
	Failed int
	Errors []string
}

// maxImportErrors bounds ImportSummary.Errors.
const maxImportErrors = 20

// ndjsonChunk is how many NDJSON resources go into one transaction.
const ndjsonChunk = 500

func (s *ImportSummary) add(o ImportSummary) {
	s.Resources += o.Resources
	s.Created += o.Created
	s.Updated += o.Updated
	s.Deleted += o.Deleted
	s.Unchanged += o.Unchanged
	s.Failed += o.Failed
	for _, e := range o.Errors {
		if len(s.Errors) < maxImportErrors {
			s.Errors = append(s.Errors, e)
		}
	}
}

// Import loads r into the store: a transaction or batch Bundle (processed
// as if POSTed to the base), another kind of Bundle (its entries'
// resources), or NDJSON, one resource per line, the bulk data format.
// Resources that carry an id are written with PUT, so importing the same
// data again adds versions, not duplicates; those without one are created.
// progress, if not nil, is called as the import goes (see ImportProgress).
// An error is returned only for unreadable input; rejected entries are
// counted in the summary.
func (h *Handler) Import(ctx context.Context, r io.Reader, progress func(ImportProgress)) (ImportSummary, error) {
	tr := &progressTracker{fn: progress}
	ctx = context.WithValue(ctx, progressKey{}, tr)
	cr := &countingReader{r: r, progress: tr.read}
	br := bufio.NewReaderSize(cr, 1<<20)
	first, err := readLine(br)
	if err != nil && !errors.Is(err, io.EOF) {
		return ImportSummary{}, fmt.Errorf("read: %w", err)
	}
	if json.Valid(first) || len(bytes.TrimSpace(first)) == 0 && errors.Is(err, io.EOF) {
		tr.stream = true
		return h.importNDJSON(ctx, first, br)
	}
	rest, err := io.ReadAll(br)
	if err != nil {
		return ImportSummary{}, fmt.Errorf("read: %w", err)
	}
	return h.importDocument(ctx, append(first, rest...))
}

// ImportProgress is how far an import has come.
type ImportProgress struct {
	// Read is the number of bytes read.
	Read int64
	// Done is the number of resources (entries) processed, written or
	// refused.
	Done int
	// Total is the number of resources the input holds, once known (a
	// Bundle's entries, when its head is parsed); 0 for NDJSON, whose
	// length is known only at its end.
	Total int
}

// progressTracker reports an import's progress to fn.
type progressTracker struct {
	fn     func(ImportProgress)
	p      ImportProgress
	stream bool // NDJSON: no total
}

type progressKey struct{}

func trackerOf(ctx context.Context) *progressTracker {
	t, _ := ctx.Value(progressKey{}).(*progressTracker)
	return t
}

func (t *progressTracker) report() {
	if t != nil && t.fn != nil {
		t.fn(t.p)
	}
}

func (t *progressTracker) read(n int64) {
	if t != nil {
		t.p.Read = n
		t.report()
	}
}

func (t *progressTracker) total(n int) {
	if t != nil && !t.stream {
		t.p.Total += n
		t.report()
	}
}

func (t *progressTracker) done(n int) {
	if t != nil {
		t.p.Done += n
		t.report()
	}
}

type countingReader struct {
	r        io.Reader
	n        int64
	progress func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.progress != nil && n > 0 {
		c.progress(c.n)
	}
	return n, err
}

// readLine reads one line, however long, without its end.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		line = append(line, chunk...)
		if err != nil || !isPrefix {
			return line, err
		}
	}
}

// importDocument loads one JSON document: a Bundle or a single resource.
func (h *Handler) importDocument(ctx context.Context, doc []byte) (ImportSummary, error) {
	var head struct {
		ResourceType string `json:"resourceType"`
		Type         string `json:"type"`
		Entry        []struct {
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(doc, &head); err != nil {
		if _, jerr := decodeJSON(doc); jerr != nil {
			return ImportSummary{}, jerr
		}
		return ImportSummary{}, fmt.Errorf("not a FHIR resource: %w", err)
	}
	tr := trackerOf(ctx)
	if head.ResourceType == "Bundle" && (head.Type == "transaction" || head.Type == "batch") {
		tr.total(len(head.Entry))
		sum := h.postBundle(ctx, doc, len(head.Entry))
		tr.done(len(head.Entry))
		return sum, nil
	}
	var resources []json.RawMessage
	if head.ResourceType == "Bundle" {
		for _, e := range head.Entry {
			if len(e.Resource) > 0 {
				resources = append(resources, e.Resource)
			}
		}
	} else {
		resources = []json.RawMessage{doc}
	}
	tr.total(len(resources))
	var sum ImportSummary
	for start := 0; start < len(resources); start += ndjsonChunk {
		chunk := resources[start:min(len(resources), start+ndjsonChunk)]
		sum.add(h.importResources(ctx, chunk))
		tr.done(len(chunk))
	}
	return sum, nil
}

func (h *Handler) importNDJSON(ctx context.Context, first []byte, br *bufio.Reader) (ImportSummary, error) {
	var sum ImportSummary
	var chunk []json.RawMessage
	flush := func() {
		if len(chunk) > 0 {
			sum.add(h.importResources(ctx, chunk))
			trackerOf(ctx).done(len(chunk))
			chunk = nil
		}
	}
	line, lineNo := first, 1
	for {
		if t := bytes.TrimSpace(line); len(t) > 0 {
			var head struct {
				ResourceType string `json:"resourceType"`
				Type         string `json:"type"`
			}
			switch err := json.Unmarshal(t, &head); {
			case err != nil:
				sum.Resources++
				sum.Failed++
				if len(sum.Errors) < maxImportErrors {
					sum.Errors = append(sum.Errors, fmt.Sprintf("line %d: malformed JSON", lineNo))
				}
				trackerOf(ctx).done(1)
			case head.ResourceType == "Bundle" && (head.Type == "transaction" || head.Type == "batch"):
				flush()
				s, err := h.importDocument(ctx, t)
				if err != nil {
					return sum, fmt.Errorf("line %d: %w", lineNo, err)
				}
				sum.add(s)
			default:
				chunk = append(chunk, append(json.RawMessage(nil), t...))
				if len(chunk) >= ndjsonChunk {
					flush()
				}
			}
		}
		var err error
		line, err = readLine(br)
		lineNo++
		if errors.Is(err, io.EOF) && len(line) == 0 {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return sum, fmt.Errorf("read line %d: %w", lineNo, err)
		}
		if err := ctx.Err(); err != nil {
			return sum, err
		}
	}
	flush()
	return sum, nil
}

// importResources writes resources in one transaction (PUT when they have
// an id, POST otherwise), or entry by entry as a batch if the transaction
// fails, so that one bad resource does not keep out the others.
func (h *Handler) importResources(ctx context.Context, resources []json.RawMessage) ImportSummary {
	type req struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	}
	type ent struct {
		Resource json.RawMessage `json:"resource"`
		Request  req             `json:"request"`
	}
	ents := make([]ent, 0, len(resources))
	for _, r := range resources {
		var head struct {
			ResourceType string `json:"resourceType"`
			ID           string `json:"id"`
		}
		json.Unmarshal(r, &head)
		e := ent{Resource: r, Request: req{Method: "POST", URL: head.ResourceType}}
		if head.ID != "" && validID(head.ID) {
			e.Request = req{Method: "PUT", URL: head.ResourceType + "/" + head.ID}
		}
		if head.ResourceType == "" {
			e.Request.URL = "Resource"
		}
		ents = append(ents, e)
	}
	bundle := func(typ string) []byte {
		b, _ := json.Marshal(map[string]any{"resourceType": "Bundle", "type": typ, "entry": ents})
		return b
	}
	sum := h.postBundle(ctx, bundle("transaction"), len(ents))
	if sum.Failed == 0 {
		return sum
	}
	return h.postBundle(ctx, bundle("batch"), len(ents))
}

// postBundle processes a batch or transaction Bundle through the handler
// and counts the outcome of its entries.
func (h *Handler) postBundle(ctx context.Context, doc []byte, n int) ImportSummary {
	sum := ImportSummary{Resources: n}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, h.base, bytes.NewReader(doc))
	if err != nil {
		sum.Failed = n
		sum.Errors = []string{err.Error()}
		return sum
	}
	r.Header.Set("Content-Type", "application/fhir+json")
	cw := &captureWriter{header: http.Header{}}
	h.ServeHTTP(cw, r)
	var resp struct {
		Issue []struct {
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
		Entry []struct {
			Response struct {
				Status  string `json:"status"`
				Outcome struct {
					Issue []struct {
						Diagnostics string `json:"diagnostics"`
					} `json:"issue"`
				} `json:"outcome"`
			} `json:"response"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(cw.body.Bytes(), &resp); err != nil || cw.status != http.StatusOK {
		sum.Failed = n
		for _, is := range resp.Issue {
			if len(sum.Errors) < maxImportErrors {
				sum.Errors = append(sum.Errors, is.Diagnostics)
			}
		}
		if len(sum.Errors) == 0 {
			sum.Errors = []string{"bundle rejected with status " + strconv.Itoa(cw.status)}
		}
		return sum
	}
	var req struct {
		Entry []struct {
			Request struct {
				Method string `json:"method"`
			} `json:"request"`
		} `json:"entry"`
	}
	json.Unmarshal(doc, &req)
	for i, e := range resp.Entry {
		code, _, _ := strings.Cut(e.Response.Status, " ")
		method := ""
		if i < len(req.Entry) {
			method = strings.ToUpper(req.Entry[i].Request.Method)
		}
		switch {
		case code == "201":
			sum.Created++
		case code == "200" && (method == "PUT" || method == "PATCH"):
			sum.Updated++
		case code == "200" || code == "304":
			sum.Unchanged++
		case code == "204":
			sum.Deleted++
		default:
			sum.Failed++
			for _, is := range e.Response.Outcome.Issue {
				if len(sum.Errors) < maxImportErrors {
					sum.Errors = append(sum.Errors, is.Diagnostics)
				}
			}
		}
	}
	return sum
}
