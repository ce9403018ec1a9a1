package session

import (
	"net/http"

	"github.com/julienschmidt/httprouter"

	"github.com/omnigate/omnigate/gateway"
)

// mountAdmin mounts the admin endpoints on one user's sessions (besides
// GET /admin/sessions/stats and DELETE /admin/users/:user/sessions):
//
//	GET    /admin/users/:user/sessions      the user's live sessions, by id (never a token)
//	DELETE /admin/users/:user/sessions/:id  end one of them
func (p *Plugin) mountAdmin(env *gateway.Env) {
	env.HandleAdmin(http.MethodGet, "/admin/users/:user/sessions", http.HandlerFunc(p.listUser))
	env.HandleAdmin(http.MethodDelete, "/admin/users/:user/sessions/:id", http.HandlerFunc(p.revokeUserSession))
}

// listUser answers with the user's live sessions, oldest first, as their
// owner sees them in GET /auth/sessions: ids, the SHA-256 of the tokens,
// never the tokens.
func (p *Plugin) listUser(w http.ResponseWriter, r *http.Request) {
	user := httprouter.ParamsFromContext(r.Context()).ByName("user")
	all, err := p.store.list(r.Context(), user)
	if err != nil {
		gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	out := make([]sessionView, len(all))
	for i, s := range all {
		out[i] = view(s, "")
	}
	gateway.WriteJSON(w, http.StatusOK, map[string]any{"user": user, "sessions": out})
}

// revokeUserSession ends one session of the user, on every instance; 404
// when the user has no live session with that id.
func (p *Plugin) revokeUserSession(w http.ResponseWriter, r *http.Request) {
	ps := httprouter.ParamsFromContext(r.Context())
	user, id := ps.ByName("user"), ps.ByName("id")
	all, err := p.store.list(r.Context(), user)
	if err != nil {
		gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
		return
	}
	for _, s := range all {
		if s.ID != id {
			continue
		}
		if err := p.store.delete(r.Context(), s.ID); err != nil {
			gateway.Error(w, r, http.StatusServiceUnavailable, "session store unavailable")
			return
		}
		p.logger.Info("session revoked by an administrator", "user", user, "session", id)
		gateway.WriteJSON(w, http.StatusOK, map[string]any{"user": user, "revoked": 1})
		return
	}
	gateway.Error(w, r, http.StatusNotFound, "no live session "+id+" of "+user)
}
