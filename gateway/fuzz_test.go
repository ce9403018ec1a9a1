package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// FuzzRouting sends arbitrary paths and request ids through a server with
// overlapping routes: it must never panic, every answer must carry a valid
// request id, and path cleaning must be idempotent and never escape "/".
func FuzzRouting(f *testing.F) {
	for _, seed := range []string{
		"/fhir/R4/Patient/1", "/fhir/R4", "/fhir/R4/../../etc/passwd", "//fhir//R4//metadata",
		"/fhir/R4/./Patient/", "/a/%2e%2e/b", "", "/./", "/fhir/R4/Patient/:id", "/*",
	} {
		f.Add(seed, "GET", "abc-1")
	}
	f.Add("/x", "POST", "bad id with spaces")
	srv, err := fuzzServer()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, p, method, rid string) {
		c, _ := cleanPath(p)
		if c2, changed := cleanPath(c); changed || c2 != c {
			t.Fatalf("cleanPath not idempotent: %q -> %q -> %q", p, c, c2)
		}
		if !strings.HasPrefix(c, "/") || strings.Contains(c, "/../") || strings.HasSuffix(c, "/..") {
			t.Fatalf("cleanPath(%q) = %q escapes the root", p, c)
		}
		if validRequestID(rid) != (len(rid) > 0 && len(rid) <= 128 && strings.Trim(rid,
			"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:+/=-") == "") {
			t.Fatalf("validRequestID(%q) disagrees with its definition", rid)
		}
		if !validMethodToken(method) {
			return
		}
		req := &http.Request{Method: method, URL: &url.URL{Path: p}, Header: http.Header{}, Host: "x", RemoteAddr: "127.0.0.1:1"}
		req = req.WithContext(t.Context())
		req.Header.Set("X-Request-Id", rid)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if got := rec.Header().Get("X-Request-Id"); !validRequestID(got) {
			t.Fatalf("answered request id %q is not well-formed", got)
		}
		if rec.Code == 0 {
			t.Fatal("no status")
		}
	})
}

func validMethodToken(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range m {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

func fuzzServer() (*Server, error) {
	cfg, err := Parse("fuzz.yaml", []byte(`
log: {level: error}
routes:
  - fhir: true
  - path: /fhir/R4/metadata
    methods: [GET]
    fhir: true
  - path: /fhir/R4/Patient/:id
    fhir: true
  - path: /a/*rest
    methods: [GET]
    fhir: true
`), nil)
	if err != nil {
		return nil, err
	}
	cfg.Log.AccessLog = new(bool)
	return New(context.Background(), cfg, Options{Logger: discardLogger()})
}
