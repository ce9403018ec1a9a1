package gateway

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

var replayBody = strings.Repeat(`{"resourceType":"Patient"},`, 200)

// replayBuffered answers the way a plugin replays a buffered response:
// it declares the Content-Length, then writes an empty chunk and the body.
func replayBuffered(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/fhir+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(replayBody)))
	w.WriteHeader(http.StatusOK)
	w.Write(nil)
	io.WriteString(w, replayBody[:100])
	http.NewResponseController(w).Flush()
	io.WriteString(w, replayBody[100:])
}

// TestCompressedReplayAfterEmptyWrite: an empty write before the body, with
// a Content-Length declared, still gives a gzip body that decodes.
func TestCompressedReplayAfterEmptyWrite(t *testing.T) {
	srv, _ := newTestServer(t, "routes:\n  - fhir: true\n")
	rec := do(srv, "GET", "/fhir/R4/replay", nil, "Accept-Encoding", "gzip")
	if rec.Header().Get("Content-Encoding") != "gzip" || rec.Header().Get("Content-Length") != "" {
		t.Fatalf("headers: %v", rec.Header())
	}
	zr, err := gzip.NewReader(bytes.NewReader(rec.Body.Bytes()))
	if err != nil {
		t.Fatalf("labelled gzip, not gzip: %v %.20q", err, rec.Body.Bytes())
	}
	got, err := io.ReadAll(zr)
	if err != nil || string(got) != replayBody {
		t.Fatalf("decoded %d bytes (%v), want %d", len(got), err, len(replayBody))
	}
	if rec := do(srv, "GET", "/fhir/R4/replay", nil); rec.Body.String() != replayBody || rec.Header().Get("Vary") != "Accept-Encoding" {
		t.Errorf("identity: %d bytes, %v", rec.Body.Len(), rec.Header())
	}
}
