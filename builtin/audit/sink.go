package audit

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
)

// sink is a destination of records. write gets record lines (JSON, without
// newlines) in spool order and either takes them all or fails: a failed
// batch is retried whole, so a sink must be idempotent or tolerate
// duplicates. rejected counts records the destination refused for good
// (they are not retried).
type sink interface {
	write(ctx context.Context, lines [][]byte) (rejected int, err error)
	close() error
}

// sinkDeps is what sinks may use from the gateway.
type sinkDeps struct {
	// fhir is the embedded FHIR server, in process (Env.FHIRHandler).
	fhir http.Handler
	// base is the FHIR base path (/fhir/R4).
	base string
	// site names the gateway.
	site string
	// serverAddress is the FHIR server's address as clients see it
	// (fhir.base_url), "" when unknown.
	serverAddress string
	// log receives what a sink refused for good.
	log *slog.Logger
}

// sinkTypes builds sinks by type. Tests add their own.
var sinkTypes = map[string]func(sc SinkConfig, deps sinkDeps) (sink, error){
	"file": func(sc SinkConfig, _ sinkDeps) (sink, error) { return newFileSink(sc.Path), nil },
	"fhir": func(_ SinkConfig, deps sinkDeps) (sink, error) { return newFHIRSink(deps), nil },
}

// fileSink appends JSON lines to a file, or writes them to standard
// output. The file is reopened when it was moved or deleted (log
// rotation). Each batch is fsynced before it counts as shipped.
type fileSink struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func newFileSink(path string) *fileSink { return &fileSink{path: path} }

func (s *fileSink) write(_ context.Context, lines [][]byte) (int, error) {
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.path == "-" {
		_, err := os.Stdout.Write(b.Bytes())
		return 0, err
	}
	if err := s.open(); err != nil {
		return 0, err
	}
	if _, err := s.f.Write(b.Bytes()); err != nil {
		s.f.Close()
		s.f = nil
		return 0, fmt.Errorf("file sink: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		s.f.Close()
		s.f = nil
		return 0, fmt.Errorf("file sink: %w", err)
	}
	return 0, nil
}

// open opens the file, or reopens it when the path no longer names the
// open file.
func (s *fileSink) open() error {
	if s.f != nil {
		cur, err1 := os.Stat(s.path)
		open, err2 := s.f.Stat()
		if err1 == nil && err2 == nil && os.SameFile(cur, open) {
			return nil
		}
		s.f.Close()
		s.f = nil
	}
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("file sink: %w", err)
	}
	s.f = f
	return nil
}

func (s *fileSink) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
