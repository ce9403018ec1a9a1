package authz

import (
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/omnigate/omnigate/gateway"
)

// checkReason validates a break-glass reason as a client sent it: trimmed
// of surrounding spaces, non-empty, at most max bytes of valid UTF-8,
// without control or format characters (which could forge log lines or
// hide text from whoever reviews them).
func checkReason(v string, max int) (string, error) {
	v = strings.TrimSpace(v)
	switch {
	case v == "":
		return "", errors.New("the break-glass reason is empty")
	case len(v) > max:
		return "", errors.New("the break-glass reason is longer than " + strconv.Itoa(max) + " bytes")
	case !utf8.ValidString(v):
		return "", errors.New("the break-glass reason is not valid UTF-8")
	}
	for _, r := range v {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return "", errors.New("the break-glass reason holds a control character")
		}
	}
	return v, nil
}

// Access is one break-glass access, as GET /admin/authz/break-glass lists
// it. It holds no resource content, id or token.
type Access struct {
	Time        time.Time `json:"time"`
	Plugin      string    `json:"plugin"`
	RequestID   string    `json:"request_id"`
	User        string    `json:"user"`
	Role        string    `json:"role"`
	Reason      string    `json:"reason"`
	Route       string    `json:"route"`
	Interaction string    `json:"interaction"`
	Type        string    `json:"type,omitempty"`
	// Allowed says whether the widened policy allowed the request.
	Allowed bool `json:"allowed"`
}

// accessRing keeps the most recent break-glass accesses.
type accessRing struct {
	mu    sync.Mutex
	buf   []Access
	next  int
	full  bool
	total int64
}

func newAccessRing(n int) *accessRing { return &accessRing{buf: make([]Access, n)} }

func (r *accessRing) add(a Access) {
	r.mu.Lock()
	r.buf[r.next] = a
	r.next = (r.next + 1) % len(r.buf)
	r.full = r.full || r.next == 0
	r.total++
	r.mu.Unlock()
}

func (r *accessRing) totalCount() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// recent returns the kept accesses, newest first, and how many there were
// since the plugin started.
func (r *accessRing) recent() ([]Access, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.buf)
	}
	out := make([]Access, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, r.buf[(r.next-i+len(r.buf))%len(r.buf)])
	}
	return out, r.total
}

// BreakGlassList is the body of GET /admin/authz/break-glass.
type BreakGlassList struct {
	// Total counts break-glass accesses since the plugin was loaded.
	Total int64 `json:"total"`
	// Recent are the newest, newest first (at most break_glass.recent).
	Recent []Access `json:"recent"`
}

// serveBreakGlass answers GET /admin/authz/break-glass: the recent
// accesses of every authz instance of the config, newest first.
func (reg *registry) serveBreakGlass(w http.ResponseWriter, r *http.Request) {
	reg.mu.Lock()
	plugins := slices.Clone(reg.plugins)
	reg.mu.Unlock()
	out := BreakGlassList{Recent: []Access{}}
	for _, p := range plugins {
		recent, total := p.ring.recent()
		out.Total += total
		out.Recent = append(out.Recent, recent...)
	}
	slices.SortStableFunc(out.Recent, func(a, b Access) int { return b.Time.Compare(a.Time) })
	gateway.WriteJSON(w, http.StatusOK, out)
}

// recordBreakGlass counts, logs and lists one break-glass access. The log
// line names who, why and what kind of interaction, never a resource id,
// content or credential.
func (p *Plugin) recordBreakGlass(c *call, interaction, typ string, allowed bool) {
	a := Access{
		Time: p.now().UTC(), Plugin: p.name, RequestID: gateway.RequestID(c.r.Context()), User: c.id.UserID, Role: c.id.Role,
		Reason: c.bg, Route: c.route, Interaction: interaction, Type: typ, Allowed: allowed,
	}
	p.ring.add(a)
	p.metrics.breakGlass.WithLabelValues(p.cfg.roleLabel(c.id.Role)).Inc()
	p.logger.LogAttrs(c.r.Context(), slog.LevelWarn, "break-glass access",
		slog.String("request_id", a.RequestID),
		slog.String("user", a.User),
		slog.String("role", a.Role),
		slog.String("reason", a.Reason),
		slog.String("route", a.Route),
		slog.String("interaction", a.Interaction),
		slog.String("type", a.Type),
		slog.Bool("allowed", a.Allowed),
	)
}
