package session

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
)

// The admin listener lists a user's sessions by id (never a token) and
// ends one of them, on memory and on Redis.
func TestAdminUserSessions(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			g := newGateway(t, be.url, usersFile(t), "")
			phone := g.login("alice", "User-Agent", "phone")
			laptop := g.login("alice", "User-Agent", "laptop")
			other := g.login("nina")
			admin := func(method, path string) *httptest.ResponseRecorder {
				rec := httptest.NewRecorder()
				g.admin.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
				return rec
			}

			rec := admin("GET", "/admin/users/alice/sessions")
			var list struct {
				User     string
				Sessions []sessionView
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil || rec.Code != 200 {
				t.Fatalf("list: %d %s", rec.Code, rec.Body)
			}
			agents := map[string]string{}
			for _, s := range list.Sessions {
				agents[s.ID] = s.UserAgent
				if s.User != "alice" || s.Role != "physician" || s.Current {
					t.Errorf("session %+v", s)
				}
			}
			if list.User != "alice" || len(agents) != 2 || agents[recordID(phone)] != "phone" || agents[recordID(laptop)] != "laptop" {
				t.Errorf("alice's sessions: %+v", list)
			}
			for _, tok := range []string{phone, laptop, other} {
				if strings.Contains(rec.Body.String(), tok) {
					t.Fatal("a session token is in the admin answer")
				}
			}
			if rec := admin("GET", "/admin/users/nobody/sessions"); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"sessions": []`) {
				t.Errorf("a user without sessions: %d %s", rec.Code, rec.Body)
			}

			// Another user's session id, or one that does not exist: 404.
			for _, id := range []string{recordID(other), "0000"} {
				if rec := admin("DELETE", "/admin/users/alice/sessions/"+id); rec.Code != 404 {
					t.Errorf("revoke %s as alice's: %d", id, rec.Code)
				}
			}
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(other)...); rec.Code != 200 {
				t.Errorf("nina's session ended: %d", rec.Code)
			}
			if rec := admin("DELETE", "/admin/users/alice/sessions/"+recordID(phone)); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"revoked": 1`) {
				t.Fatalf("revoke the phone: %d %s", rec.Code, rec.Body)
			}
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(phone)...); rec.Code != 401 {
				t.Errorf("the revoked phone still works: %d", rec.Code)
			}
			if rec := g.do("GET", "/fhir/R4/x", "", bearer(laptop)...); rec.Code != 200 {
				t.Errorf("the laptop's session ended: %d", rec.Code)
			}
			json.Unmarshal(admin("GET", "/admin/users/alice/sessions").Body.Bytes(), &list)
			if len(list.Sessions) != 1 || list.Sessions[0].ID != recordID(laptop) {
				t.Errorf("after the revoke: %+v", list.Sessions)
			}
		})
	}
}
