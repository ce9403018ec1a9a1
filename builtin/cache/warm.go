package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

// hotRecorder counts requests per cache key, to know which to warm after
// a restart.
type hotRecorder struct {
	mu   sync.Mutex
	seen map[string]*hotEntry
}

type hotEntry struct {
	req  WarmRequest
	hits int64
}

const maxHotTracked = 10000

func (h *hotRecorder) record(key string, r *http.Request, id *gateway.Identity) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.seen[key]; ok {
		e.hits++
		return
	}
	if len(h.seen) >= maxHotTracked {
		return
	}
	req := WarmRequest{Path: r.URL.RequestURI(), Accept: r.Header.Get("Accept")}
	if id != nil {
		req.As = &WarmIdentity{User: id.UserID, Role: id.Role, Patient: id.PatientID, Scopes: slices.Clone(id.Scopes)}
	}
	h.seen[key] = &hotEntry{req: req, hits: 1}
}

// top returns the n most requested.
func (h *hotRecorder) top(n int) []WarmRequest {
	h.mu.Lock()
	entries := make([]*hotEntry, 0, len(h.seen))
	for _, e := range h.seen {
		entries = append(entries, e)
	}
	h.mu.Unlock()
	slices.SortFunc(entries, func(a, b *hotEntry) int { return int(b.hits - a.hits) })
	out := make([]WarmRequest, 0, min(n, len(entries)))
	for _, e := range entries[:min(n, len(entries))] {
		out = append(out, e.req)
	}
	return out
}

// saveHot writes the hottest requests to the hot file.
func (c *Cache) saveHot() error {
	reqs := c.hot.top(c.cfg.Warm.HotKeys)
	if len(reqs) == 0 {
		return nil
	}
	data, err := json.MarshalIndent(reqs, "", "  ")
	if err != nil {
		return err
	}
	path := c.cfg.Warm.HotFile
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save hot keys: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("save hot keys: %w", err)
	}
	return os.Rename(tmp, path)
}

func loadHot(path string) ([]WarmRequest, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var reqs []WarmRequest
	if err := json.Unmarshal(data, &reqs); err != nil {
		return nil, fmt.Errorf("hot file %s: %w", path, err)
	}
	return reqs, nil
}

// WarmResult summarizes one warming run.
type WarmResult struct {
	Requests int    `json:"requests"`
	Stored   int    `json:"stored"`   // fetched and stored now
	Cached   int    `json:"cached"`   // already in the cache
	NotKept  int    `json:"not_kept"` // answered, but not cacheable
	Failed   int    `json:"failed"`
	Skipped  int    `json:"skipped"` // left when the budget ran out
	Duration string `json:"duration"`
}

// warmList is the configured requests and the hot file's, without
// duplicates.
func (c *Cache) warmList() []WarmRequest {
	reqs := slices.Clone(c.cfg.Warm.Requests)
	if c.cfg.Warm.HotFile != "" {
		hot, err := loadHot(c.cfg.Warm.HotFile)
		if err != nil {
			c.logger.Warn("cache warming: hot file unreadable", "error", err)
		}
		reqs = append(reqs, hot...)
	}
	seen := map[string]bool{}
	out := reqs[:0]
	for _, r := range reqs {
		b, _ := json.Marshal(r)
		if !seen[string(b)] {
			seen[string(b)] = true
			out = append(out, r)
		}
	}
	return out
}

// warm replays reqs through h, at most Concurrency at once, within Budget
// on the cache's clock (requests still running when it ends are
// cancelled), logging progress.
func (c *Cache) warm(ctx context.Context, h http.Handler, reqs []WarmRequest) WarmResult {
	start := c.now()
	c.warming.begin(start)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := c.clock.AfterFunc(c.cfg.Warm.Budget, cancel)
	defer stop()
	var stored, cached, notKept, failed, done atomic.Int64
	sem := make(chan struct{}, c.cfg.Warm.Concurrency)
	var wg sync.WaitGroup
	c.logger.Info("cache warming started", "requests", len(reqs), "concurrency", c.cfg.Warm.Concurrency, "budget", c.cfg.Warm.Budget)
	lastLog := start
	var logMu sync.Mutex
	launched := 0
loop:
	for _, wr := range reqs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		if ctx.Err() != nil {
			// A slot and the end of the budget came together: the
			// request would only be cancelled.
			<-sem
			break
		}
		launched++
		wg.Add(1)
		go func(wr WarmRequest) {
			defer wg.Done()
			defer func() { <-sem }()
			switch warmOne(ctx, h, wr) {
			case "MISS-stored":
				stored.Add(1)
			case "HIT":
				cached.Add(1)
			case "MISS":
				notKept.Add(1)
			default:
				failed.Add(1)
			}
			n := done.Add(1)
			logMu.Lock()
			if now := c.now(); now.Sub(lastLog) > 2*time.Second {
				lastLog = now
				c.logger.Info("cache warming", "done", n, "of", len(reqs))
			}
			logMu.Unlock()
		}(wr)
	}
	wg.Wait()
	res := WarmResult{Requests: len(reqs), Stored: int(stored.Load()), Cached: int(cached.Load()),
		NotKept: int(notKept.Load()), Failed: int(failed.Load()), Skipped: len(reqs) - launched,
		Duration: c.now().Sub(start).Round(time.Millisecond).String()}
	c.warming.end(res, c.now())
	c.logger.Info("cache warming finished", "requests", res.Requests, "stored", res.Stored, "cached", res.Cached,
		"not_kept", res.NotKept, "failed", res.Failed, "skipped", res.Skipped, "duration", res.Duration)
	return res
}

// warmOne makes one request and reports what the cache did with it.
func warmOne(ctx context.Context, h http.Handler, wr WarmRequest) string {
	probe := &warmProbe{}
	rctx := context.WithValue(ctx, warmProbeKey{}, probe)
	if wr.As != nil {
		rctx = gateway.SetIdentity(rctx, &gateway.Identity{UserID: wr.As.User, Role: wr.As.Role,
			PatientID: wr.As.Patient, Scopes: wr.As.Scopes, Method: "warm"})
	}
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, wr.Path, nil)
	if err != nil {
		return "error"
	}
	req.RemoteAddr = "127.0.0.1:0"
	req.Host = "localhost"
	accept := wr.Accept
	if accept == "" {
		accept = "application/fhir+json"
	}
	req.Header.Set("Accept", accept)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	x := rec.Header().Get("X-Cache")
	switch {
	case rec.Code != http.StatusOK:
		return "error"
	case x == "MISS" && probe.stored.Load():
		return "MISS-stored"
	}
	return x
}

// warmProbe tells a warming request whether its response was stored.
type warmProbe struct{ stored atomic.Bool }

type warmProbeKey struct{}

func markStored(ctx context.Context) {
	if p, ok := ctx.Value(warmProbeKey{}).(*warmProbe); ok {
		p.stored.Store(true)
	}
}

func isWarming(ctx context.Context) bool {
	_, ok := ctx.Value(warmProbeKey{}).(*warmProbe)
	return ok
}

func (c *Cache) adminWarm(w http.ResponseWriter, r *http.Request) {
	reqs := c.warmList()
	if r.ContentLength != 0 && r.Body != nil {
		var body struct {
			Requests []WarmRequest `json:"requests"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&body); err != nil {
			gateway.Error(w, r, http.StatusBadRequest, `send {"requests": [{"path": "/fhir/R4/...", "as": {"user": "..."}}]} or no body`)
			return
		}
		for _, q := range body.Requests {
			if !strings.HasPrefix(q.Path, "/") || q.As != nil && q.As.User == "" {
				gateway.Error(w, r, http.StatusBadRequest, "each request needs a path beginning with / (and as.user when as is given)")
				return
			}
		}
		reqs = body.Requests
	}
	gateway.WriteJSON(w, http.StatusOK, c.warm(r.Context(), c.handler, reqs))
}
