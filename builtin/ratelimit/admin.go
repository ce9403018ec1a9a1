package ratelimit

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/omnigate/omnigate/gateway"
)

// adminRegistry lets every ratelimit instance of a config load share one
// set of admin endpoints:
//
//	GET    /admin/ratelimit/stats         decisions by result, role, route; top limited keys
//	GET    /admin/ratelimit/blocks        blocked clients
//	DELETE /admin/ratelimit/blocks/{key}  lift a block on every instance
//
// Each takes ?plugin=NAME to address one instance.
type adminRegistry struct {
	mu    sync.Mutex
	byCfg map[*gateway.Config][]*Limiter
}

func mountAdmin(env *gateway.Env, l *Limiter) *adminRegistry {
	v, _ := env.Shared("ratelimit:admin", func() (any, error) {
		return &adminRegistry{byCfg: map[*gateway.Config][]*Limiter{}}, nil
	})
	reg := v.(*adminRegistry)
	cfg := env.Config
	reg.mu.Lock()
	first := len(reg.byCfg[cfg]) == 0
	reg.byCfg[cfg] = append(reg.byCfg[cfg], l)
	reg.mu.Unlock()
	if first {
		env.HandleAdmin(http.MethodGet, "/admin/ratelimit/stats", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reg.stats(w, r, cfg)
		}))
		env.HandleAdmin(http.MethodGet, "/admin/ratelimit/blocks", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reg.blocks(w, r, cfg)
		}))
		env.HandleAdmin(http.MethodDelete, "/admin/ratelimit/blocks/*key", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reg.unblock(w, r, cfg)
		}))
	}
	return reg
}

func (reg *adminRegistry) remove(l *Limiter) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	ls := reg.byCfg[l.cfgID]
	for i, x := range ls {
		if x == l {
			ls = append(ls[:i:i], ls[i+1:]...)
			break
		}
	}
	if len(ls) == 0 {
		delete(reg.byCfg, l.cfgID)
	} else {
		reg.byCfg[l.cfgID] = ls
	}
}

// limiters returns the instances of cfg, or the one named by ?plugin=.
func (reg *adminRegistry) limiters(r *http.Request, cfg *gateway.Config) []*Limiter {
	reg.mu.Lock()
	ls := append([]*Limiter(nil), reg.byCfg[cfg]...)
	reg.mu.Unlock()
	if name := r.URL.Query().Get("plugin"); name != "" {
		ls = filter(ls, func(l *Limiter) bool { return l.name == name })
	}
	return ls
}

func filter[T any](s []T, keep func(T) bool) []T {
	out := s[:0]
	for _, v := range s {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
}

// PluginStats is one instance in GET /admin/ratelimit/stats. Counts are
// this gateway instance's since it loaded the config; Prometheus has them
// for the fleet.
type PluginStats struct {
	Store      string           `json:"store"`
	Instances  int              `json:"live_instances"`
	Total      int64            `json:"total"`
	ByResult   map[string]int64 `json:"by_result"`
	ByRole     map[string]int64 `json:"by_role"`
	ByRoute    map[string]int64 `json:"by_route"`
	BySource   map[string]int64 `json:"by_source"`
	TopLimited []KeyCount       `json:"top_limited"`
}

// KeyCount is a client key and how many of its requests were refused.
type KeyCount struct {
	Key      string `json:"key"`
	Rejected int64  `json:"rejected"`
}

func (reg *adminRegistry) stats(w http.ResponseWriter, r *http.Request, cfg *gateway.Config) {
	out := map[string]PluginStats{}
	for _, l := range reg.limiters(r, cfg) {
		out[l.name] = l.stats()
	}
	gateway.WriteJSON(w, http.StatusOK, map[string]any{"plugins": out})
}

func (l *Limiter) stats() PluginStats {
	st := PluginStats{
		Store: "memory", Instances: l.m.Instances(),
		ByResult: map[string]int64{}, ByRole: map[string]int64{},
		ByRoute: map[string]int64{}, BySource: map[string]int64{},
	}
	switch {
	case l.engine.Redis():
		st.Store = "redis"
	case l.m.Enabled():
		st.Store = fmt.Sprintf("memory (redis down; on_redis_down: %s)", l.cfg.OnRedisDown)
	}
	l.counters.Range(func(k, v any) bool {
		sk, n := k.(statKey), v.(*stat).n.Load()
		st.Total += n
		st.ByResult[sk.result] += n
		st.ByRole[sk.role] += n
		st.ByRoute[sk.route] += n
		st.BySource[sk.source] += n
		return true
	})
	l.top.each(func(k string, e *topEntry) bool {
		st.TopLimited = append(st.TopLimited, KeyCount{k, e.n.Load()})
		return false
	})
	sort.Slice(st.TopLimited, func(i, j int) bool {
		a, b := st.TopLimited[i], st.TopLimited[j]
		return a.Rejected > b.Rejected || a.Rejected == b.Rejected && a.Key < b.Key
	})
	if len(st.TopLimited) > 20 {
		st.TopLimited = st.TopLimited[:20]
	}
	return st
}

// BlockInfo is one entry of GET /admin/ratelimit/blocks.
type BlockInfo struct {
	Plugin      string    `json:"plugin"`
	Key         string    `json:"key"`
	Until       time.Time `json:"until"`
	SecondsLeft int64     `json:"seconds_left"`
}

func (reg *adminRegistry) blocks(w http.ResponseWriter, r *http.Request, cfg *gateway.Config) {
	out := []BlockInfo{}
	for _, l := range reg.limiters(r, cfg) {
		bs, err := l.engine.Blocks(r.Context())
		if err != nil {
			gateway.Error(w, r, http.StatusServiceUnavailable, "list blocks of "+l.name+": "+err.Error())
			return
		}
		for _, b := range bs {
			out = append(out, BlockInfo{Plugin: l.name, Key: b.Key, Until: b.Until,
				SecondsLeft: ceilSeconds(time.Until(b.Until))})
		}
	}
	gateway.WriteJSON(w, http.StatusOK, map[string]any{"blocks": out})
}

func (reg *adminRegistry) unblock(w http.ResponseWriter, r *http.Request, cfg *gateway.Config) {
	key := strings.TrimPrefix(httprouter.ParamsFromContext(r.Context()).ByName("key"), "/")
	if key == "" {
		gateway.Error(w, r, http.StatusBadRequest, "missing key: DELETE /admin/ratelimit/blocks/{key}")
		return
	}
	found := false
	for _, l := range reg.limiters(r, cfg) {
		ok, err := l.engine.Unblock(r.Context(), key)
		if err != nil {
			gateway.Error(w, r, http.StatusServiceUnavailable, "unblock in "+l.name+": "+err.Error())
			return
		}
		found = found || ok
	}
	if !found {
		gateway.Error(w, r, http.StatusNotFound, "no block for "+key)
		return
	}
	gateway.WriteJSON(w, http.StatusOK, map[string]any{"key": key, "unblocked": true})
}
