package audit

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/gateway"
)

func TestConfigDefaults(t *testing.T) {
	cfg, err := gateway.Parse("t.yaml", []byte("plugins:\n  audit: {type: audit}\nroutes:\n  - fhir: true\n    plugins: [audit]\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Plugins[0].Config.(*Config)
	if c.SpoolDir != "./data/audit" || c.FlushInterval.String() != "1s" || c.MaxSpoolBytes != 1<<30 || c.SegmentBytes != 16<<20 ||
		c.OnSinkFailure != "block" || len(c.Sinks) != 1 || c.Sinks[0].Type != "fhir" || c.Sinks[0].Name != "fhir" ||
		c.BatchSize != 100 || c.RetryMin.String() != "1s" || c.RetryMax.String() != "1m0s" || c.MaxPatients != 100 ||
		c.InspectBytes != 1<<20 || c.Site == "" || c.ShutdownTimeout.String() != "10s" {
		t.Errorf("defaults: %+v", c)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct{ keys, want string }{
		{"on_sink_failure: maybe", "audit.on_sink_failure: must be block or drop"},
		{"flush_interval: 0s", "audit.flush_interval: must be at least 1ms"},
		{"max_spool_bytes: 1MiB\n    segment_bytes: 2MiB", "audit.segment_bytes: must be positive and at most max_spool_bytes"},
		{"sinks: [{type: kafka}]", `audit.sinks[0].type: unknown sink type "kafka"`},
		{"sinks: [{type: file}]", "audit.sinks[0].path: required"},
		{"sinks: [{type: fhir, path: x}]", "audit.sinks[0].path: fhir sinks have no path"},
		{"sinks: [{type: file, path: a}, {type: file, path: b}]", `audit.sinks[1].name: sink "file" is named twice`},
		{"sinks: [{type: file, name: 'a b', path: a}]", "audit.sinks[0].name: must be 1 to 64 letters"},
		{"retry_min: 2s\n    retry_max: 1s", "audit.retry_min"},
		{"max_patients: 0", "audit.max_patients: must be at least 1"},
		{"colour: blue", `unknown key "colour"`},
	} {
		_, err := gateway.Parse("t.yaml", []byte("plugins:\n  audit:\n    type: audit\n    "+c.keys+"\nroutes:\n  - fhir: true\n    plugins: [audit]\n"), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.keys, err, c.want)
		}
	}
}

// The fhir sink needs the embedded FHIR server, writable with PUT.
func TestFHIRSinkNeedsTheServer(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ text, want string }{
		{"routes:\n  - path: /api/*rest\n    upstream: http://127.0.0.1:1\n    plugins: [audit]\n", "no route has fhir: true"},
		{"fhir: {update_create: false, store: {path: ':memory:'}}\nroutes:\n  - fhir: true\n    plugins: [audit]\n", "fhir.update_create must be true"},
	} {
		text := "admin: off\nplugins:\n  audit: {type: audit, spool_dir: " + strconv.Quote(dir) + "}\n" + c.text
		cfg, err := gateway.Parse("t.yaml", []byte(text), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.DiscardHandler)})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v, want %q", err, c.want)
		}
	}
	// A file sink in front of an upstream is fine.
	text := "admin: off\nplugins:\n  audit: {type: audit, spool_dir: " + strconv.Quote(dir) + ", sinks: [{type: file, path: " +
		strconv.Quote(filepath.Join(dir, "a.jsonl")) + "}]}\nroutes:\n  - path: /api/*rest\n    upstream: http://127.0.0.1:1\n    plugins: [audit]\n"
	cfg, err := gateway.Parse("t.yaml", []byte(text), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv.Shutdown(context.Background())
}

// A reload that keeps the spool folder keeps the spool: records before and
// after it are all shipped, once; a reload that adds a sink starts it; one
// that removes the plugin ships what is left and releases the folder.
func TestReloadKeepsTheSpool(t *testing.T) {
	g := newGateway(t, gwOptions{})
	first := g.p.pipe
	g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "k0")
	if err := g.reload(g.text); err != nil {
		t.Fatal(err)
	}
	if g.p.pipe != first {
		t.Fatal("the reload opened another spool")
	}
	g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "k1")
	g.settle()
	uniqueIDs(t, g.records(), "k", 2)

	second := filepath.Join(t.TempDir(), "second.jsonl")
	text := strings.Replace(g.text, "sinks: [", fmt.Sprintf("sinks: [{type: file, name: second, path: %q}, ", second), 1)
	if err := g.reload(text); err != nil {
		t.Fatal(err)
	}
	g.must(404, nurse, "GET", "/fhir/R4/Patient/none", "", "X-Request-Id", "k2")
	g.settle()
	uniqueIDs(t, g.records(), "k", 3)
	if got := byRequest(readRecords(t, second), "k2"); len(got) != 1 {
		t.Errorf("the added sink: %+v", got)
	}

	// Without the plugin: the spool is released, another can open it.
	noAudit := strings.Replace(text, "plugins: [as, audit, authz]", "plugins: [as, authz]", 1)
	i, j := strings.Index(noAudit, "  audit:\n"), strings.Index(noAudit, "\nroutes:")
	noAudit = noAudit[:i] + noAudit[j:]
	if err := g.reload(noAudit); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the spool released", func() bool {
		s, err := openSpool(g.dir, 1<<20, newTestClock().Now, discard())
		if err == nil {
			s.close()
		}
		return err == nil
	})
}
