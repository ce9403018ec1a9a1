package backbone

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Use says what a builtin keeps in a Redis deployment, so the manager can
// tell whether that deployment's settings put it at risk.
type Use int

const (
	// Durable state (sessions, rate-limit windows and blocks) must be
	// neither evicted under memory pressure nor lost on restart.
	Durable Use = iota
	// Cache entries may be evicted and lost: they are fetched again.
	Cache
)

// Declare records that the builtin name keeps state of kind use in this
// Redis; the safety warnings (Health, the log) take it into account.
func (m *Manager) Declare(name string, use Use) {
	m.mu.Lock()
	if m.uses == nil {
		m.uses = map[string]Use{}
	}
	m.uses[name] = use
	m.mu.Unlock()
	m.warn()
}

// redisSettings are the Redis settings that decide whether state survives.
type redisSettings struct {
	known      bool // false when CONFIG GET is disabled or renamed
	maxmemory  int64
	policy     string
	save       string
	appendonly string
}

// readSettings reads maxmemory, maxmemory-policy, save and appendonly
// (from every primary on Cluster, keeping the riskiest values). A server
// where CONFIG is disabled gives known false, not an error.
func readSettings(ctx context.Context, c redis.UniversalClient) redisSettings {
	get := func(c redis.Cmdable) (redisSettings, bool) {
		vals, err := c.ConfigGet(ctx, "*").Result()
		if err != nil {
			return redisSettings{}, false
		}
		s := redisSettings{known: true, policy: vals["maxmemory-policy"], save: vals["save"], appendonly: vals["appendonly"]}
		s.maxmemory, _ = strconv.ParseInt(vals["maxmemory"], 10, 64)
		return s, true
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		var out redisSettings
		first := true
		var mu sync.Mutex // ForEachMaster calls concurrently
		err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			s, ok := get(node)
			if !ok {
				return fmt.Errorf("config get refused")
			}
			mu.Lock()
			defer mu.Unlock()
			if first || s.maxmemory > 0 && evicting(s.policy) {
				out.maxmemory, out.policy = s.maxmemory, s.policy
			}
			if first || s.save == "" && s.appendonly != "yes" {
				out.save, out.appendonly = s.save, s.appendonly
			}
			out.known, first = true, false
			return nil
		})
		if err != nil {
			return redisSettings{}
		}
		return out
	}
	s, _ := get(c)
	return s
}

func evicting(policy string) bool {
	return strings.HasPrefix(policy, "allkeys-") || strings.HasPrefix(policy, "volatile-")
}

// warning is one operator warning: its kind (what is at risk, whatever
// builtins keep state here) and its text.
type warning struct{ kind, text string }

// warnings derives the operator warnings from the settings and the uses.
func warnings(s redisSettings, uses map[string]Use) []warning {
	var durable []string
	for name, u := range uses {
		if u == Durable {
			durable = append(durable, name)
		}
	}
	if len(durable) == 0 {
		return nil
	}
	slices.Sort(durable)
	what := strings.Join(durable, " and ")
	if !s.known {
		return []warning{{"unchecked", "CONFIG GET is not allowed on this Redis: eviction and persistence settings could not be checked for " + what}}
	}
	var out []warning
	if s.maxmemory > 0 && evicting(s.policy) {
		out = append(out, warning{"eviction", fmt.Sprintf("%s state can be evicted: maxmemory-policy %s with maxmemory %d bytes; use noeviction here and put the cache on its own Redis (cache_redis)",
			what, s.policy, s.maxmemory)})
	}
	if s.save == "" && s.appendonly != "yes" {
		out = append(out, warning{"persistence", fmt.Sprintf("%s state is lost when Redis restarts: no RDB snapshots (save \"\") and no AOF (appendonly no); enable one of them", what)})
	}
	return out
}

// checkSettings reads the settings of a freshly connected client.
func (m *Manager) checkSettings(ctx context.Context, c redis.UniversalClient) {
	s := readSettings(ctx, c)
	m.settings.Store(&s)
	m.mu.Lock()
	m.warned = nil // a new connection (or server) is reported afresh
	m.mu.Unlock()
	m.warn()
}

// warn logs each kind of warning once per connection: builtins declaring
// their state one after another (which changes the text, not the risk)
// do not log it again; /ping shows the current text.
func (m *Manager) warn() {
	s := m.settings.Load()
	if s == nil {
		return
	}
	m.mu.Lock()
	ws := warnings(*s, m.uses)
	var fresh []string
	for _, w := range ws {
		if !slices.Contains(m.warned, w.kind) {
			m.warned = append(m.warned, w.kind)
			fresh = append(fresh, w.text)
		}
	}
	m.mu.Unlock()
	for _, w := range fresh {
		m.logger.Warn("redis settings put state at risk", "redis", m.mode, "warning", w)
	}
}

// Warnings returns the current safety warnings (also shown on /ping).
func (m *Manager) Warnings() []string {
	s := m.settings.Load()
	if s == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, w := range warnings(*s, m.uses) {
		out = append(out, w.text)
	}
	return out
}
