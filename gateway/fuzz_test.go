package gateway

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/gateway/internal/confyaml"
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

// FuzzConfigParse: no config file, however broken, panics the parser, and a
// syntax error always names a line inside the file.
func FuzzConfigParse(f *testing.F) {
	for _, s := range []string{
		"listen: ':1'\nroutes:\n  - path: /a\n    upstream: http://h\n   bad: indent\n",
		"routes: [{path: /a, upstream: 'http://h'}]\n",
		"log:\n  level: info\n format: json\n",
		"a: \"unterminated\nb: 1\n",
		"routes:\n  - fhir: true\n    plugins: [x]\nplugins:\n  x: {type: ratelimit, default: {limit: 0}}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := Parse("f.yaml", data, nil)
		var ce *confyaml.Error
		// YAML breaks lines at \n, \r\n and \r.
		lines := bytes.Count(data, []byte("\n")) + bytes.Count(data, []byte("\r")) + 1
		if err != nil && errors.As(err, &ce) && ce.Pos.Line > lines {
			t.Fatalf("error at line %d of a %d-line file: %v", ce.Pos.Line, lines, err)
		}
	})
}
