package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/storetest"
	"github.com/omnigate/omnigate/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// open opens a store on a new database of the test server, closed when
// the test ends.
func open(t testing.TB, opt Options) *Store {
	t.Helper()
	if opt.URL == "" {
		opt.URL = pgtest.NewDatabase(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// The conformance suite, with the read cache and without.
func TestConformance(t *testing.T) {
	for _, c := range []struct {
		name string
		opt  Options
	}{
		{"cache", Options{CacheBytes: 1 << 20}},
		{"nocache", Options{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) store.Store { return open(t, c.opt) })
		})
	}
}

// pgtestShared is the test binary's server.
func pgtestShared(ctx context.Context) (*pgtest.Server, error) { return pgtest.SharedServer(ctx) }
