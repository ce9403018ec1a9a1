package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/omnigate/omnigate/builtin/ratelimit"
	"github.com/omnigate/omnigate/gateway"
)

func (p *Plugin) mount(env *gateway.Env) {
	m := p.cfg.Mount
	env.Handle(http.MethodPost, m+"/login", http.HandlerFunc(p.login))
	env.Handle(http.MethodPost, m+"/logout", http.HandlerFunc(p.logout))
	env.Handle(http.MethodGet, m+"/session", http.HandlerFunc(p.whoami))
	env.Handle(http.MethodPost, m+"/session", http.HandlerFunc(p.exchange))
	env.Handle(http.MethodGet, m+"/sessions", http.HandlerFunc(p.listMine))
	env.Handle(http.MethodDelete, m+"/sessions", http.HandlerFunc(p.revokeMine))
	env.Handle(http.MethodDelete, m+"/sessions/:id", http.HandlerFunc(p.revokeOne))
	env.HandleAdmin(http.MethodGet, "/admin/sessions/stats", http.HandlerFunc(p.stats))
	env.HandleAdmin(http.MethodDelete, "/admin/users/:user/sessions", http.HandlerFunc(p.revokeUser))
	p.mountAdmin(env)
}

// loginResponse is the body of a successful login or exchange.
type loginResponse struct {
	Token       string    `json:"token"`
	TokenType   string    `json:"token_type"`
	ExpiresAt   time.Time `json:"expires_at"`
	IdleTimeout int64     `json:"idle_timeout_seconds"`
	User        string    `json:"user"`
	Role        string    `json:"role"`
	Scopes      []string  `json:"scopes,omitempty"`
	Patient     string    `json:"patient,omitempty"`
	SessionID   string    `json:"session_id"`
}

// login takes {"username","password"} as JSON or a form and starts a
// session. Failures say nothing about which part was wrong. A login made
// by a browser from another origin is refused (login CSRF: a hostile page
// must not log its visitor into the attacker's account).
func (p *Plugin) login(w http.ResponseWriter, r *http.Request) {
	if p.users == nil {
		gateway.Error(w, r, http.StatusNotFound, "password logins are off")
		return
	}
	if !p.loginOriginOK(r) {
		p.metrics.logins.WithLabelValues("password", "cross_site").Inc()
		gateway.Error(w, r, http.StatusForbidden, "cross-site login refused: log in from the gateway's own origin or one of csrf.trusted_origins")
		return
	}
	username, password, err := readLogin(r)
	if err != nil {
		gateway.Error(w, r, http.StatusBadRequest, err.Error())
		return
	}
	ctx := r.Context()
	ip := gateway.ClientIP(r)
	held, wait, err := p.reserveAttempt(ctx, username, ip)
	if err != nil {
		p.metrics.logins.WithLabelValues("password", "unavailable").Inc()
		gateway.Error(w, r, http.StatusServiceUnavailable, "login throttle unavailable; try again shortly")
		return
	}
	if held == nil {
		p.metrics.logins.WithLabelValues("password", "throttled").Inc()
		w.Header().Set("Retry-After", strconv.FormatInt(int64((wait+time.Second-1)/time.Second), 10))
		gateway.Error(w, r, http.StatusTooManyRequests, "too many failed logins; try again later")
		return
	}
	u, ok := p.users.authenticate(username, password)
	if !ok {
		// The attempt stays counted: it is the failure.
		p.metrics.logins.WithLabelValues("password", "failure").Inc()
		p.logger.LogAttrs(ctx, slog.LevelWarn, "login failed", slog.String("request_id", gateway.RequestID(ctx)),
			slog.String("client_ip", ip.String()))
		gateway.Error(w, r, http.StatusUnauthorized, "invalid username or password")
		return
	}
	p.releaseAttempt(ctx, held)
	p.start(w, r, &gateway.Identity{UserID: u.Username, Role: u.Role, Scopes: u.Scopes,
		PatientID: patientOf(u.Patient, u.FHIRUser), FHIRUser: u.FHIRUser}, "password", time.Time{})
}

// exchange trades a valid bearer JWT for a server session.
func (p *Plugin) exchange(w http.ResponseWriter, r *http.Request) {
	cred, present, malformed := readCredential(r, p.cfg.Cookie.Name)
	if p.jwt == nil || !present || malformed || !cred.jwt {
		w.Header().Set("WWW-Authenticate", `Bearer realm="omnigate"`)
		gateway.Error(w, r, http.StatusUnauthorized, "send the identity provider's JWT as Authorization: Bearer")
		return
	}
	id, exp, err := p.jwt.verify(r.Context(), cred.value)
	if err != nil {
		p.metrics.logins.WithLabelValues("jwt", "failure").Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="omnigate", error="invalid_token"`)
		gateway.Error(w, r, http.StatusUnauthorized, err.Error())
		return
	}
	p.start(w, r, id, "jwt", exp)
}

// start creates a session for id and answers with its token and cookie. A
// session the request already had ends: every login gets a new token. A
// non-zero until caps the session's absolute lifetime (the expiry of the
// JWT it was exchanged from): it never outlives the credential it came
// from.
func (p *Plugin) start(w http.ResponseWriter, r *http.Request, id *gateway.Identity, method string, until time.Time) {
	ctx := r.Context()
	pol := p.cfg.policy(id.Role)
	absolute := pol.Absolute
	if !until.IsZero() {
		left := until.Sub(p.now())
		if left < time.Second {
			w.Header().Set("WWW-Authenticate", `Bearer realm="omnigate", error="invalid_token"`)
			gateway.Error(w, r, http.StatusUnauthorized, "the token expires too soon to start a session")
			return
		}
		absolute = min(absolute, left)
	}
	if old, present, malformed := readCredential(r, p.cfg.Cookie.Name); present && !malformed && !old.jwt {
		p.store.delete(ctx, recordID(old.value))
	}
	token, rid := newToken()
	rec := &Record{
		ID: rid, UserID: id.UserID, Role: id.Role, Scopes: id.Scopes, PatientID: id.PatientID, FHIRUser: id.FHIRUser, Method: method,
		IdleTimeout: min(pol.Idle, absolute), UserAgent: truncate(r.UserAgent(), 256), ClientIP: gateway.ClientIP(r).String(),
	}
	evicted, err := p.store.create(ctx, rec, absolute, pol.MaxSessions)
	if err != nil {
		p.metrics.logins.WithLabelValues(method, "unavailable").Inc()
		p.logger.LogAttrs(ctx, slog.LevelError, "create session failed", slog.String("request_id", gateway.RequestID(ctx)), slog.String("error", err.Error()))
		gateway.Error(w, r, http.StatusServiceUnavailable, "sessions are unavailable; try again shortly")
		return
	}
	p.metrics.logins.WithLabelValues(method, "success").Inc()
	p.logger.LogAttrs(ctx, slog.LevelInfo, "login", slog.String("request_id", gateway.RequestID(ctx)),
		slog.String("user", rec.UserID), slog.String("role", rec.Role), slog.String("method", method),
		slog.Int("evicted_sessions", len(evicted)))
	p.setCookie(w, r, token, rec.Expires)
	w.Header().Set("Cache-Control", "no-store")
	writeCompactJSON(w, loginResponse{
		Token: token, TokenType: "Bearer", ExpiresAt: rec.Ends().UTC(), IdleTimeout: int64(pol.Idle / time.Second),
		User: rec.UserID, Role: rec.Role, Scopes: rec.Scopes, Patient: rec.PatientID, SessionID: rec.ID,
	})
}

func (p *Plugin) setCookie(w http.ResponseWriter, r *http.Request, value string, expires time.Time) {
	c := &http.Cookie{
		Name: p.cfg.Cookie.Name, Value: value, Path: p.cfg.Cookie.Path, Domain: p.cfg.Cookie.Domain,
		HttpOnly: true, Secure: p.secure(r),
	}
	switch p.cfg.Cookie.SameSite {
	case "strict":
		c.SameSite = http.SameSiteStrictMode
	case "none":
		c.SameSite = http.SameSiteNoneMode
	default:
		c.SameSite = http.SameSiteLaxMode
	}
	if value == "" {
		c.MaxAge = -1
	} else {
		c.Expires = expires
	}
	http.SetCookie(w, c)
}

// secure reports whether the cookie gets the Secure attribute: always,
// never, or (auto) unless the request is to a loopback host.
func (p *Plugin) secure(r *http.Request) bool {
	switch p.cfg.Cookie.Secure {
	case "always":
		return true
	case "never":
		return false
	}
	host := r.Host
	if h, _, err := splitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return false
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err != nil || !a.IsLoopback()
}

func splitHostPort(s string) (string, string, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.HasSuffix(s, "]") {
		return s, "", errors.New("no port")
	}
	return s[:i], s[i+1:], nil
}

// current authenticates a request to the endpoints: the session itself is
// needed (not a stateless JWT).
func (p *Plugin) current(w http.ResponseWriter, r *http.Request) (*Record, bool) {
	cred, present, malformed := readCredential(r, p.cfg.Cookie.Name)
	if !present || malformed || cred.jwt {
		p.unauthorized(w, r, errNoCredential)
		return nil, false
	}
	if cred.fromCookie && !p.csrfOK(r) {
		p.csrfRefused(w, r)
		return nil, false
	}
	rec, err := p.sessionOf(r.Context(), cred)
	if errors.Is(err, errStore) {
		gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
		return nil, false
	}
	if err != nil {
		p.unauthorized(w, r, err)
		return nil, false
	}
	gateway.SetIdentity(r.Context(), identityOf(rec))
	return rec, true
}

func (p *Plugin) logout(w http.ResponseWriter, r *http.Request) {
	rec, ok := p.current(w, r)
	if !ok {
		return
	}
	if err := p.store.delete(r.Context(), rec.ID); err != nil {
		gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	p.setCookie(w, r, "", time.Time{})
	w.WriteHeader(http.StatusNoContent)
}

// sessionView is a session as its owner sees it.
type sessionView struct {
	ID          string    `json:"id"`
	Current     bool      `json:"current"`
	User        string    `json:"user"`
	Role        string    `json:"role"`
	Scopes      []string  `json:"scopes,omitempty"`
	Patient     string    `json:"patient,omitempty"`
	Method      string    `json:"method"`
	Created     time.Time `json:"created"`
	LastSeen    time.Time `json:"last_seen"`
	IdleExpires time.Time `json:"idle_expires"`
	Expires     time.Time `json:"expires"`
	UserAgent   string    `json:"user_agent,omitempty"`
	ClientIP    string    `json:"client_ip,omitempty"`
}

func view(r *Record, current string) sessionView {
	return sessionView{ID: r.ID, Current: r.ID == current, User: r.UserID, Role: r.Role, Scopes: r.Scopes,
		Patient: r.PatientID, Method: r.Method, Created: r.Created.UTC(), LastSeen: r.LastSeen.UTC(),
		IdleExpires: r.IdleExpires().UTC(), Expires: r.Expires.UTC(), UserAgent: r.UserAgent, ClientIP: r.ClientIP}
}

func (p *Plugin) whoami(w http.ResponseWriter, r *http.Request) {
	rec, ok := p.current(w, r)
	if !ok {
		return
	}
	gateway.WriteJSON(w, http.StatusOK, view(rec, rec.ID))
}

func (p *Plugin) listMine(w http.ResponseWriter, r *http.Request) {
	rec, ok := p.current(w, r)
	if !ok {
		return
	}
	all, err := p.store.list(r.Context(), rec.UserID)
	if err != nil {
		gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	out := make([]sessionView, len(all))
	for i, s := range all {
		out[i] = view(s, rec.ID)
	}
	gateway.WriteJSON(w, http.StatusOK, map[string]any{"sessions": out})
}

// revokeOne ends one of the caller's sessions (404 for anyone else's).
func (p *Plugin) revokeOne(w http.ResponseWriter, r *http.Request) {
	rec, ok := p.current(w, r)
	if !ok {
		return
	}
	target := httprouter.ParamsFromContext(r.Context()).ByName("id")
	if target == "" {
		target = r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	}
	all, err := p.store.list(r.Context(), rec.UserID)
	if err != nil {
		gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	for _, s := range all {
		if s.ID == target {
			p.store.delete(r.Context(), s.ID)
			if s.ID == rec.ID {
				p.setCookie(w, r, "", time.Time{})
			}
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	gateway.Error(w, r, http.StatusNotFound, "no such session of yours")
}

// revokeMine logs the caller out everywhere; ?keep=current keeps the
// session making the request.
func (p *Plugin) revokeMine(w http.ResponseWriter, r *http.Request) {
	rec, ok := p.current(w, r)
	if !ok {
		return
	}
	keep := ""
	if r.URL.Query().Get("keep") == "current" {
		keep = rec.ID
	} else {
		p.setCookie(w, r, "", time.Time{})
	}
	res, err := p.store.deleteUser(r.Context(), rec.UserID, keep)
	if err != nil {
		gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	gateway.WriteJSON(w, http.StatusOK, revokeAnswer(res))
}

// revokeAnswer is the body of a revoke-all (DELETE /auth/sessions and
// DELETE /admin/users/:user/sessions).
type revokeAnswer struct {
	// Revoked is the number of sessions ended now.
	Revoked int `json:"revoked"`
	// Pending is true when Redis is down: the revocation holds on this
	// instance now, covers every session of the user created up to now,
	// and is replayed to Redis, and so to every instance, when Redis
	// returns.
	Pending bool `json:"pending"`
}

func (p *Plugin) stats(w http.ResponseWriter, r *http.Request) {
	counts, err := p.store.count(r.Context())
	if err != nil {
		gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	store := "memory"
	if p.store.redisUp() {
		store = "redis"
	}
	out := map[string]any{"active": total, "by_role": counts, "store": store, "pending_replay": p.store.pendingReplays(),
		"cached": p.store.cached()}
	if p.store.cache != nil {
		out["local_cache_entries"] = p.store.cache.len()
	}
	gateway.WriteJSON(w, http.StatusOK, out)
}

func (p *Plugin) revokeUser(w http.ResponseWriter, r *http.Request) {
	user := httprouter.ParamsFromContext(r.Context()).ByName("user")
	res, err := p.store.deleteUser(r.Context(), user, "")
	if err != nil {
		gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	p.logger.Info("sessions revoked by an administrator", "user", user, "sessions", res.Revoked, "pending_replay", res.Pending)
	gateway.WriteJSON(w, http.StatusOK, revokeAnswer(res))
}

// readLogin reads the credentials from a JSON or form body of at most 8 KiB.
func readLogin(r *http.Request) (username, password string, err error) {
	body := http.MaxBytesReader(nil, r.Body, 8<<10)
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/json":
		var in struct{ Username, Password string }
		if err := json.NewDecoder(body).Decode(&in); err != nil {
			return "", "", errors.New("the body must be JSON: {\"username\": …, \"password\": …}")
		}
		username, password = in.Username, in.Password
	case "application/x-www-form-urlencoded":
		r.Body = body
		if err := r.ParseForm(); err != nil {
			return "", "", errors.New("unreadable form")
		}
		username, password = r.PostForm.Get("username"), r.PostForm.Get("password")
	default:
		io.Copy(io.Discard, body)
		return "", "", errors.New("send application/json or application/x-www-form-urlencoded")
	}
	if username == "" || password == "" || len(username) > 256 || len(password) > 1024 {
		return "", "", errors.New("username and password are required")
	}
	return username, password, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Login throttling counts login attempts per username and per client IP
// (IPv6 clients per /64, as the rate limiter counts them) on the rate
// limiter's engine: Redis when up, so every instance sees them, memory
// otherwise. An attempt is reserved atomically before its password is
// checked, and given back when the login succeeds: so of any number of
// concurrent attempts, at most the limit reach the password check, and
// only failures stay counted.

// throttleKey is one throttle counter an attempt is reserved on.
type throttleKey struct {
	key string
	lim Limit
}

// reservation is an attempt counted on each throttle key, to be given back
// when the login succeeds.
type reservation struct {
	keys []throttleKey
	made []ratelimit.Decision
}

func (p *Plugin) throttleKeys(username string, ip netip.Addr) []throttleKey {
	return []throttleKey{
		{"user:" + username, p.cfg.LoginThrottle.PerUser},
		{ratelimit.IPKey(ip, 64), p.cfg.LoginThrottle.PerIP},
	}
}

func (k throttleKey) policy() ratelimit.Policy {
	return ratelimit.Policy{Limit: k.lim.Limit, Window: k.lim.Window}
}

// reserveAttempt counts one attempt on every throttle key. When a key is
// at its limit, the attempts already counted are given back and it
// returns nil and how long to wait.
func (p *Plugin) reserveAttempt(ctx context.Context, username string, ip netip.Addr) (*reservation, time.Duration, error) {
	res := &reservation{}
	for _, k := range p.throttleKeys(username, ip) {
		if k.lim.Limit <= 0 {
			continue
		}
		d, err := p.throttle.Decide(ctx, k.key, "login", k.policy(), 1)
		if err == nil && d.Result == ratelimit.Allowed {
			res.keys, res.made = append(res.keys, k), append(res.made, d)
			continue
		}
		p.releaseAttempt(ctx, res)
		if err != nil {
			return nil, 0, fmt.Errorf("login throttle: %w", err)
		}
		return nil, d.RetryAfter, nil
	}
	return res, 0, nil
}

// releaseAttempt gives back a reserved attempt (the login succeeded).
func (p *Plugin) releaseAttempt(ctx context.Context, res *reservation) {
	for i, k := range res.keys {
		if err := p.throttle.Refund(ctx, k.key, "login", k.policy(), 1, res.made[i]); err != nil {
			p.logger.LogAttrs(ctx, slog.LevelWarn, "login throttle refund failed", slog.String("error", err.Error()))
		}
	}
}

// loginOriginOK reports whether a login may set a session cookie in the
// browser that sent it: its Origin (or, without one, its Referer's origin)
// is the gateway's own or one of csrf.trusted_origins, and the browser does
// not call it cross-site (Sec-Fetch-Site). Requests with neither Origin,
// Referer nor Sec-Fetch-Site come from non-browser clients (curl, apps
// using the bearer token) and pass.
func (p *Plugin) loginOriginOK(r *http.Request) bool {
	origin := requestOrigin(r)
	fetchSite := strings.ToLower(r.Header.Get("Sec-Fetch-Site"))
	if origin == "" {
		return fetchSite != "cross-site" && fetchSite != "same-site"
	}
	if origin == "null" {
		return false
	}
	if p.origins[origin] {
		return true
	}
	return origin == ownOrigin(r) && fetchSite != "cross-site" && fetchSite != "same-site"
}

// writeCompactJSON answers 200 with v as one line of JSON, easy to pick
// apart in a shell script.
func writeCompactJSON(w http.ResponseWriter, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(append(b, '\n'))
}
