package gateway

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAdminTokenOfAtLeast32Bytes(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	os.WriteFile(file, []byte("short-token\n"), 0o600)
	tests := []struct{ name, yaml, env, want string }{
		{"short token", "admin: {listen: '127.0.0.1:9090', token: short}\n", "", "admin.token: the admin token must be at least 32 bytes"},
		{"short token file", "admin: {listen: '127.0.0.1:9090', token_file: " + file + "}\n", "", "admin.token_file: the admin token must be at least 32 bytes"},
		{"short token from the environment", "", "short", "admin.token: the admin token must be at least 32 bytes"},
		{"32 bytes", "admin: {listen: '127.0.0.1:9090', token: " + strings.Repeat("x", 32) + "}\n", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := func(k string) (string, bool) {
				if k == EnvAdminToken && tt.env != "" {
					return tt.env, true
				}
				return "", false
			}
			_, err := Parse("f.yaml", []byte(tt.yaml+"routes: [{path: /a, upstream: 'http://h'}]\n"), env)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestUpstreamIdentityConfig(t *testing.T) {
	key := strings.Repeat("k", 32)
	tests := []struct{ name, identity, want string }{
		{"no key", "{}", "routes[0].upstream.identity: key_file (or key) is required"},
		{"short key", "{key: short}", "routes[0].upstream.identity.key: must be at least 32 bytes"},
		{"both keys", "{key: " + key + ", key_file: /k}", "routes[0].upstream.identity.key_file: set only one of key and key_file"},
		{"missing key file", "{key_file: /nonexistent/k}", "routes[0].upstream.identity.key_file:"},
		{"short ttl", "{key: " + key + ", ttl: 10ms}", "routes[0].upstream.identity.ttl: must be at least 1s"},
		{"valid", "{key: " + key + "}", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("f.yaml", []byte("routes:\n  - name: r\n    path: /a\n    upstream: {url: 'http://h', identity: "+tt.identity+"}\n"), nil)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want %q", err, tt.want)
			case tt.want == "":
				id := cfg.Routes[0].Upstream.Identity
				if id.Header != DefaultIdentityHeader || id.TTL != time.Minute || id.Audience != "r" {
					t.Errorf("defaults: %+v", id)
				}
			}
		})
	}
}

func TestSignedIdentityRoundTrip(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	now := time.Date(2031, 3, 14, 9, 0, 0, 0, time.UTC)
	id := &Identity{UserID: "pat", Role: "patient", Scopes: []string{"patient/*.rs", "openid"}, PatientID: "85",
		FHIRUser: "Patient/85", SessionID: "secret-session-id", Method: "session"}
	v := SignIdentity(id, key, "reports", "req-1", now, time.Minute)
	if strings.Contains(v, "secret-session-id") {
		t.Fatalf("the session id is sent")
	}
	got, err := VerifyIdentity(v, key, "reports", now.Add(59*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if got.UserID != "pat" || got.Role != "patient" || len(got.Scopes) != 2 || got.PatientID != "85" ||
		got.FHIRUser != "Patient/85" || got.Method != "session" || got.SessionID != "" {
		t.Errorf("identity %+v", got)
	}
	for name, check := range map[string]func() error{
		"expired":        func() error { _, err := VerifyIdentity(v, key, "reports", now.Add(time.Minute)); return err },
		"other audience": func() error { _, err := VerifyIdentity(v, key, "other", now); return err },
		"other key":      func() error { _, err := VerifyIdentity(v, []byte(strings.Repeat("j", 32)), "reports", now); return err },
		"tampered": func() error {
			parts := strings.Split(v, ".")
			forged := SignIdentity(&Identity{UserID: "admin", Role: "admin"}, key, "reports", "", now, time.Minute)
			_, err := VerifyIdentity(parts[0]+"."+strings.Split(forged, ".")[1]+"."+parts[2], key, "reports", now)
			return err
		},
	} {
		if check() == nil {
			t.Errorf("%s: verified", name)
		}
	}
}

func TestStripCredentials(t *testing.T) {
	creds := []Credential{{Cookie: "sid", Authorization: func(v string) bool { return strings.HasPrefix(v, "Bearer gw.") }}}
	tests := []struct {
		name               string
		in                 http.Header
		wantAuth, wantCook string
	}{
		{"cookie among others", http.Header{"Cookie": {"a=1; sid=x; b=2"}}, "", "a=1; b=2"},
		{"cookie in a second line", http.Header{"Cookie": {"a=1", "sid=x"}}, "", "a=1"},
		{"cookie alone", http.Header{"Cookie": {"sid=x"}}, "", ""},
		{"similar name kept", http.Header{"Cookie": {"sidx=1; xsid=2"}}, "", "sidx=1; xsid=2"},
		{"gateway bearer", http.Header{"Authorization": {"Bearer gw.abc"}}, "", ""},
		{"other authorization kept", http.Header{"Authorization": {"Basic abc"}}, "Basic abc", ""},
		{"identity header removed", http.Header{"X-Omnigate-Identity": {"forged"}, "Cookie": {"a=1"}}, "", "a=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stripCredentials(tt.in, creds, DefaultIdentityHeader)
			if got := tt.in.Get("Authorization"); got != tt.wantAuth {
				t.Errorf("Authorization %q, want %q", got, tt.wantAuth)
			}
			if got := strings.Join(tt.in.Values("Cookie"), "; "); got != tt.wantCook {
				t.Errorf("Cookie %q, want %q", got, tt.wantCook)
			}
			if tt.in.Get(DefaultIdentityHeader) != "" {
				t.Errorf("identity header kept")
			}
		})
	}
}

// FuzzStripCredentials: whatever Cookie header a client sends, no cookie
// named as a gateway credential is left, and every other one is.
func FuzzStripCredentials(f *testing.F) {
	for _, s := range []string{"a=1; sid=x; b=2", "sid=x", ";;sid=;", " sid = x ; c", "sid", "=sid; sid=sid"} {
		f.Add(s)
	}
	creds := []Credential{{Cookie: "sid"}}
	f.Fuzz(func(t *testing.T, cookie string) {
		h := http.Header{"Cookie": {cookie}}
		stripCredentials(h, creds)
		for _, line := range h.Values("Cookie") {
			for _, part := range strings.Split(line, ";") {
				name, _, _ := strings.Cut(part, "=")
				if strings.TrimSpace(name) == "sid" {
					t.Fatalf("%q: credential cookie left in %q", cookie, line)
				}
			}
		}
		var want []string
		present := false
		for _, part := range strings.Split(cookie, ";") {
			name, _, _ := strings.Cut(part, "=")
			switch {
			case strings.TrimSpace(name) == "sid":
				present = true
			case strings.TrimSpace(part) != "":
				want = append(want, strings.TrimSpace(part))
			}
		}
		got := strings.Join(h.Values("Cookie"), "; ")
		if present && got != strings.Join(want, "; ") || !present && got != cookie {
			t.Fatalf("%q: kept %q, want the other cookies %q", cookie, got, want)
		}
	})
}

// FuzzVerifyIdentity: an upstream verifying whatever arrives in the
// header never panics, and accepts nothing not signed with the key.
func FuzzVerifyIdentity(f *testing.F) {
	key := []byte(strings.Repeat("k", 32))
	now := time.Date(2031, 3, 14, 9, 0, 0, 0, time.UTC)
	f.Add(SignIdentity(&Identity{UserID: "u"}, key, "a", "r", now, time.Minute))
	f.Add("a.b.c")
	f.Add("..")
	f.Fuzz(func(t *testing.T, v string) {
		id, err := VerifyIdentity(v, key, "a", now)
		if err == nil && (id == nil || id.UserID == "") {
			t.Fatalf("%q verified without a subject", v)
		}
	})
}
