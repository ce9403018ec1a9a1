package backbone

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/internal/redistest"
)

func managerFor(t *testing.T, srv *redistest.Server) (*Manager, *syncBuilder) {
	t.Helper()
	cfg := gateway.DefaultConfig().Redis
	cfg.URL = srv.URL()
	cfg.ReadTimeout = time.Second // -race on a busy machine
	logs := &syncBuilder{}
	m, err := New(context.Background(), cfg, Options{Logger: newTestLogger(logs), Heartbeat: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, logs
}

func TestSafetyWarnings(t *testing.T) {
	tests := []struct {
		name string
		args []string
		uses map[string]Use
		want []string // substrings, one per expected warning
	}{
		{"evicting policy with a memory limit", []string{"--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru", "--appendonly", "yes"},
			map[string]Use{"sessions": Durable}, []string{"sessions state can be evicted: maxmemory-policy allkeys-lru with maxmemory 67108864"}},
		{"volatile policy evicts keys with a TTL", []string{"--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru", "--appendonly", "yes"},
			map[string]Use{"rate limits": Durable}, []string{"rate limits state can be evicted"}},
		{"no persistence", nil, // redistest's default: save "" and appendonly no
			map[string]Use{"sessions": Durable, "rate limits": Durable}, []string{"rate limits and sessions state is lost when Redis restarts"}},
		{"safe: noeviction and AOF", []string{"--maxmemory", "64mb", "--maxmemory-policy", "noeviction", "--appendonly", "yes"},
			map[string]Use{"sessions": Durable}, nil},
		{"safe: RDB snapshots, no limit", []string{"--save", "900 1"},
			map[string]Use{"sessions": Durable}, nil},
		{"a cache-only Redis may evict and forget", []string{"--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"},
			map[string]Use{"cache": Cache}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t, redistest.Args(tt.args...))
			m, logs := managerFor(t, srv)
			for name, u := range tt.uses {
				m.Declare(name, u)
			}
			got := m.Warnings()
			if len(got) != len(tt.want) {
				t.Fatalf("warnings %q, want %d", got, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("warning %q lacks %q", got[i], w)
				}
				if !strings.Contains(logs.String(), risk(w)) {
					t.Errorf("warning not logged: %s", w)
				}
			}
			if h := m.Health(); len(h.Warnings) != len(tt.want) {
				t.Errorf("/ping health shows %d warnings, want %d", len(h.Warnings), len(tt.want))
			}
			// Logged once, however often and by whichever builtins uses
			// are declared.
			m.Declare("sessions", Durable)
			m.Declare("login throttle", Durable)
			for _, w := range tt.want {
				if n := strings.Count(logs.String(), risk(w)); n != 1 {
					t.Errorf("warning logged %d times: %s\n%s", n, w, logs.String())
				}
			}
		})
	}
}

// risk is a warning's text without the builtins it names, which grow as
// builtins declare their state.
func risk(w string) string {
	if i := strings.Index(w, "state "); i >= 0 {
		return w[i:]
	}
	return w
}

func TestSafetyWithConfigDisabled(t *testing.T) {
	srv := redistest.Start(t, redistest.Args("--rename-command", "CONFIG", ""))
	m, _ := managerFor(t, srv)
	if !m.Up() {
		t.Fatal("a server without CONFIG must still be usable")
	}
	m.Declare("sessions", Durable)
	w := m.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "could not be checked") {
		t.Errorf("warnings %q", w)
	}
}

func TestSafetyRecheckedOnReconnect(t *testing.T) {
	srv := redistest.Start(t, redistest.Args("--appendonly", "yes"))
	m, logs := managerFor(t, srv)
	m.Declare("sessions", Durable)
	if len(m.Warnings()) != 0 {
		t.Fatalf("safe server warned: %q", m.Warnings())
	}
	// The server is replaced by one with an evicting policy.
	if _, err := srv.Do("CONFIG", "SET", "maxmemory", "10mb"); err != nil {
		t.Fatal(err)
	}
	srv.Do("CONFIG", "SET", "maxmemory-policy", "allkeys-lfu")
	m.markDown(context.DeadlineExceeded)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "allkeys-lfu") {
		if time.Now().After(deadline) {
			t.Fatalf("reconnect did not re-check the settings:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuilder collects log output across goroutines.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTestLogger(w *syncBuilder) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
