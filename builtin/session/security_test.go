package session

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// doFrom is g.do from the client address addr (host:port).
func (g *gw) doFrom(addr, method, path, body string, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "http://127.0.0.1:8080"+path, strings.NewReader(body))
	req.RemoteAddr = addr
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	if req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	g.srv.ServeHTTP(rec, req)
	return rec
}

// parallelWrongLogins sends n wrong passwords for one user at once and
// returns how many reached the password check (were answered 401, not
// 429).
func parallelWrongLogins(t testing.TB, g *gw, user string, n int) int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	checked, other := 0, map[int]int{}
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			rec := g.do("POST", "/auth/login", `{"username":"`+user+`","password":"wrong-password"}`)
			mu.Lock()
			defer mu.Unlock()
			switch rec.Code {
			case 401:
				checked++
			case 429:
			default:
				other[rec.Code]++
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(other) > 0 {
		t.Fatalf("unexpected answers: %v", other)
	}
	return checked
}

// TestParallelWrongLoginsReachThePasswordCheckOnlyUpToTheLimit: the
// attempt is reserved before the password is checked, so of 120
// concurrent wrong passwords for one user exactly the per-user limit (5)
// are checked, on Redis as in memory.
func TestParallelWrongLoginsReachThePasswordCheckOnlyUpToTheLimit(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			g := newGateway(t, be.url, usersFile(t), "")
			const n = 120
			got := parallelWrongLogins(t, g, "alice", n)
			t.Logf("parallel wrong logins reaching the password check (%s): %d of %d, limit 5", be.name, got, n)
			if got != 5 {
				t.Fatalf("%d of %d parallel wrong logins reached the password check, want exactly the limit 5", got, n)
			}
			// The right password is refused too while the failures hold.
			if rec := g.do("POST", "/auth/login", `{"username":"alice","password":"alice-password"}`); rec.Code != 429 {
				t.Fatalf("right password after the limit: %d", rec.Code)
			}
		})
	}
}

// TestSuccessfulLoginsDoNotCount: a reserved attempt is given back when
// the login succeeds, so logging in more often than the limit works.
func TestSuccessfulLoginsDoNotCount(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			g := newGateway(t, be.url, usersFile(t), "login_throttle:\n  per_user: {limit: 2, window: 1m}\n  per_ip: {limit: 3, window: 1m}\n")
			for i := 0; i < 10; i++ {
				g.login("alice")
			}
			// One failure, then more successes, then the second failure
			// reaches the limit.
			g.do("POST", "/auth/login", `{"username":"alice","password":"bad-password"}`)
			g.login("alice")
			if rec := g.do("POST", "/auth/login", `{"username":"alice","password":"bad-password"}`); rec.Code != 401 {
				t.Fatalf("second failure: %d", rec.Code)
			}
			if rec := g.do("POST", "/auth/login", `{"username":"alice","password":"alice-password"}`); rec.Code != 429 {
				t.Fatalf("after 2 failures: %d", rec.Code)
			}
		})
	}
}

// TestLoginThrottleCountsIPv6ClientsPerSlash64: 40 addresses of one /64
// share the per-IP limit of 20; another /64 has its own.
func TestLoginThrottleCountsIPv6ClientsPerSlash64(t *testing.T) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) {
			g := newGateway(t, be.url, usersFile(t), "login_throttle:\n  per_user: {limit: 0}\n  per_ip: {limit: 20, window: 15m}\n")
			checked := 0
			for i := 1; i <= 40; i++ {
				addr := fmt.Sprintf("[2001:db8:1:2::%x]:4000", i)
				switch rec := g.doFrom(addr, "POST", "/auth/login", `{"username":"alice","password":"wrong-password"}`); rec.Code {
				case 401:
					checked++
				case 429:
				default:
					t.Fatalf("address %s: %d", addr, rec.Code)
				}
			}
			if checked != 20 {
				t.Fatalf("40 addresses of one /64 got %d tries, want 20", checked)
			}
			if rec := g.doFrom("[2001:db8:1:3::1]:4000", "POST", "/auth/login", `{"username":"alice","password":"alice-password"}`); rec.Code != 200 {
				t.Fatalf("another /64: %d", rec.Code)
			}
		})
	}
}

// TestCrossSiteLoginSetsNoCookie: a login a hostile page makes the
// browser send (login CSRF) is refused before the password is checked,
// and sets no cookie; same-origin and trusted-origin logins and non-browser
// clients keep working.
func TestCrossSiteLoginSetsNoCookie(t *testing.T) {
	g := newGateway(t, "", usersFile(t), "csrf: {trusted_origins: [\"https://app.example.org\"]}")
	form := "username=alice&password=alice-password"
	formCT := []string{"Content-Type", "application/x-www-form-urlencoded"}
	tests := []struct {
		name string
		body string
		hdr  []string
		want int
	}{
		{"form from another origin", form, append([]string{"Origin", "https://evil.example"}, formCT...), 403},
		{"form with an opaque origin", form, append([]string{"Origin", "null"}, formCT...), 403},
		{"form cross-site without Origin", form, append([]string{"Sec-Fetch-Site", "cross-site"}, formCT...), 403},
		{"form from a sibling site without Origin", form, append([]string{"Sec-Fetch-Site", "same-site"}, formCT...), 403},
		{"form with a foreign Referer", form, append([]string{"Referer", "https://evil.example/page"}, formCT...), 403},
		{"JSON from another origin", `{"username":"alice","password":"alice-password"}`, []string{"Origin", "https://evil.example"}, 403},
		{"form from the same origin", form, append([]string{"Origin", "http://127.0.0.1:8080", "Sec-Fetch-Site", "same-origin"}, formCT...), 200},
		{"form from a trusted origin", form, append([]string{"Origin", "https://app.example.org", "Sec-Fetch-Site", "cross-site"}, formCT...), 200},
		{"JSON from a non-browser client", `{"username":"alice","password":"alice-password"}`, nil, 200},
		{"form from a non-browser client", form, formCT, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := g.do("POST", "/auth/login", tt.body, tt.hdr...)
			if rec.Code != tt.want {
				t.Fatalf("%d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			if cookies := rec.Result().Cookies(); tt.want != 200 && len(cookies) > 0 {
				t.Fatalf("refused login set a cookie: %v", cookies)
			}
		})
	}
}
