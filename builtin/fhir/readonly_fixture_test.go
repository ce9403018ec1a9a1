package fhir

import (
	"context"
	"os"
	"sync"
	"testing"
)

// shared is the fixture of the tests that only read: the example Bundles
// of patients 85, 355 and 888 loaded once, in one server, whose exports go
// to a temporary folder.
var shared struct {
	once sync.Once
	f    *accessFixture
	dir  string
}

// readOnlyFixture returns the shared fixture, loading it on first use. The
// tests given it must not write to it (exports are fine).
func readOnlyFixture(t *testing.T) *accessFixture {
	t.Helper()
	shared.once.Do(func() {
		dir, err := os.MkdirTemp("", "omnigate-fhir-test-")
		if err != nil {
			t.Fatal(err)
		}
		shared.dir = dir
		off := false
		cfg := DefaultConfig()
		cfg.Store.Path, cfg.SchemaValidation, cfg.Export.Dir = ":memory:", &off, dir
		h, err := Open(context.Background(), cfg, Options{Now: newTestClock(testEpoch).Now})
		if err != nil {
			t.Fatal(err)
		}
		shared.f = loadAccessFixture(t, h, "85", "355", "888")
	})
	if shared.f == nil {
		t.Fatal("the shared fixture did not load")
	}
	return shared.f
}

// smallFixture is an access fixture of its own holding patient 85's
// Bundle only, for tests that write.
func smallFixture(t *testing.T, mod ...func(*Config)) *accessFixture {
	t.Helper()
	off := false
	return loadAccessFixture(t, newTestServer(t, append([]func(*Config){func(c *Config) { c.SchemaValidation = &off }}, mod...)...), "85")
}

// closeShared closes the shared fixture's server and removes its export
// folder, after the package's tests (see TestMain).
func closeShared() {
	if shared.f != nil {
		shared.f.h.Close()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}
