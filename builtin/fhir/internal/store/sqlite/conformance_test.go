package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/storetest"
)

// The conformance suite, on a store file (a read pool apart from the
// writer, as the server runs it) and in memory (one connection).
func TestConformance(t *testing.T) {
	for _, c := range []struct {
		name string
		path func(t *testing.T) string
	}{
		{"file", func(t *testing.T) string { return filepath.Join(t.TempDir(), "s.db") }},
		{"memory", func(t *testing.T) string { return ":memory:" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) store.Store {
				s, err := Open(context.Background(), c.path(t), Options{Sync: "normal", CacheBytes: 1 << 20})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				return s
			})
		})
	}
}
