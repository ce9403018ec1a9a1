package session

import (
	"context"
	"log/slog"
	"slices"
	"sort"
	"time"
)

// Sessions follow the user directory: every users.reload_interval the
// plugin checks the file, and when it changed, ends the sessions the new
// directory no longer grants. A user disabled, removed or given a new
// password loses all of them, through a revoke-all marker that every
// instance applies (its local cache included) and that also bars sessions
// written back later from an instance's memory; a user whose role,
// scopes, patient or FHIR user changed loses the sessions made with the
// old ones, deleted one by one and broadcast, so a login made with the new
// ones survives. Until an instance has read the change itself, the
// broadcast ends those sessions there; once it has, it also refuses any
// password session its directory no longer grants (grants), whatever its
// cache or Redis holds.

// watchUsers checks the directory every interval until the plugin
// closes.
func (p *Plugin) watchUsers(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
			p.syncUsers()
		}
	}
}

// syncUsers reads the directory again when it changed and ends the
// sessions it no longer grants.
func (p *Plugin) syncUsers() {
	before, after, changed, err := p.users.reload()
	if err != nil {
		p.logger.Error("user directory changed but cannot be read; keeping the previous users", "error", err)
		return
	}
	if !changed {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	names := make([]string, 0, len(before))
	for name := range before {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		old, cur := before[name], after[name]
		switch {
		case cur == nil || cur.Disabled && !old.Disabled || cur.PasswordHash != old.PasswordHash:
			res, err := p.store.deleteUser(ctx, name, "")
			if err != nil {
				p.logger.LogAttrs(ctx, slog.LevelError, "ending the sessions of a changed user failed",
					slog.String("user", name), slog.String("error", err.Error()))
				continue
			}
			p.logger.LogAttrs(ctx, slog.LevelInfo, "user disabled, removed or given a new password: sessions ended",
				slog.String("user", name), slog.Int("sessions", res.Revoked), slog.Bool("pending_replay", res.Pending))
		case old.Role != cur.Role || !slices.Equal(old.Scopes, cur.Scopes) || old.Patient != cur.Patient || old.FHIRUser != cur.FHIRUser:
			p.endUngranted(ctx, cur)
		}
	}
}

// endUngranted ends the password sessions of u that carry grants the
// directory no longer gives.
func (p *Plugin) endUngranted(ctx context.Context, u *User) {
	recs, err := p.store.list(ctx, u.Username)
	if err != nil {
		p.logger.LogAttrs(ctx, slog.LevelError, "listing the sessions of a changed user failed",
			slog.String("user", u.Username), slog.String("error", err.Error()))
		return
	}
	ended := 0
	for _, r := range recs {
		if r.Method != "password" || u.grants(r) {
			continue
		}
		if err := p.store.delete(ctx, r.ID); err != nil {
			p.logger.LogAttrs(ctx, slog.LevelError, "ending a session of a changed user failed",
				slog.String("user", u.Username), slog.String("error", err.Error()))
			continue
		}
		ended++
	}
	p.logger.LogAttrs(ctx, slog.LevelInfo, "user's role or scopes changed: sessions with the old ones ended",
		slog.String("user", u.Username), slog.Int("sessions", ended))
}

// granted reports whether this instance's directory still grants a
// session: always for sessions that did not come from a password login.
func (p *Plugin) granted(r *Record) bool {
	if r.Method != "password" || p.users == nil {
		return true
	}
	u := p.users.lookup(r.UserID)
	return u != nil && !u.Disabled && u.grants(r)
}
