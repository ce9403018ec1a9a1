package wasm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/gateway"
)

// gatewayConfig returns a gateway config with the wasm plugin "policy"
// running module in front of upstream. extra holds more keys of the plugin
// (indented by four spaces); a timeout there replaces the generous default.
func gatewayConfig(t *testing.T, upstream, module, extra string) *gateway.Config {
	t.Helper()
	if !strings.Contains(extra, "    timeout:") {
		extra += fmt.Sprintf("    timeout: %s\n", generousTimeout)
	}
	yaml := fmt.Sprintf(`
log: {access_log: false}
plugins:
  policy:
    type: wasm
    path: %s
    instances: 2
    cache_dir: %s
%s
routes:
  - name: fhir
    path: /fhir/R4/*path
    upstream: %s
    fhir_errors: true
    plugins: [policy]
`, module, cacheDir, extra, upstream)
	cfg, err := gateway.Parse("test.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestGateway(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		for k, v := range r.Header {
			if strings.HasPrefix(k, "X-Seen") {
				w.Header()[k] = v
			}
		}
		io.WriteString(w, `{"resourceType":"Patient","id":"p1"}`)
	}))
	defer up.Close()
	logs := &logBuffer{}
	// The memory cap stops membomb soon, and the generous deadline never
	// cuts a call of this config.
	srv, err := gateway.New(context.Background(), gatewayConfig(t, up.URL, guest(t, "testguest"), "    memory_limit: 16MiB\n"),
		gateway.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	get := func(test string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "/fhir/R4/Patient/p1/_history/2", nil)
		r.Header.Set("X-Test", test)
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		return w
	}
	if w := get("echo"); w.Code != 200 || w.Header().Get("X-Seen-FHIR") != "vread Patient p1 /" {
		t.Fatalf("echo: %d %v %s", w.Code, w.Header(), w.Body)
	}
	for _, test := range []string{"panic", "membomb"} {
		if w := get(test); w.Code != 500 || !strings.Contains(w.Body.String(), "OperationOutcome") {
			t.Fatalf("%s: %d %s", test, w.Code, w.Body)
		}
		if w := get("echo"); w.Code != 200 {
			t.Fatalf("after %s the gateway answered %d", test, w.Code)
		}
	}
	// A guest that loops forever is cut at the deadline configured, short
	// here; the config with the generous one then serves again.
	if err := srv.Reload(context.Background(), gatewayConfig(t, up.URL, guest(t, "testguest"), "    timeout: 20ms\n")); err != nil {
		t.Fatal(err)
	}
	if w := get("loop"); w.Code != 500 || !strings.Contains(w.Body.String(), "OperationOutcome") {
		t.Fatalf("loop: %d %s", w.Code, w.Body)
	}
	if err := srv.Reload(context.Background(), gatewayConfig(t, up.URL, guest(t, "testguest"), "")); err != nil {
		t.Fatal(err)
	}
	if w := get("echo"); w.Code != 200 {
		t.Fatalf("after loop the gateway answered %d", w.Code)
	}
	ping := func() gateway.PingResponse {
		w := httptest.NewRecorder()
		srv.AdminHandler().ServeHTTP(w, httptest.NewRequest("GET", "/ping", nil))
		var p gateway.PingResponse
		json.Unmarshal(w.Body.Bytes(), &p)
		return p
	}
	if h := ping().Plugins["policy"]; h.Type != "wasm" || h.Status != gateway.StatusUp {
		t.Errorf("ping: %+v", h)
	}

	// A reload (SIGHUP) rebuilds the plugin; a module that fails to load
	// keeps the old config serving.
	if err := srv.Reload(context.Background(), gatewayConfig(t, up.URL, guest(t, "respguest"), "")); err != nil {
		t.Fatal(err)
	}
	if w := get("status"); w.Header().Get("X-Module") != "respguest" {
		t.Fatalf("reloaded module not serving: %v", w.Header())
	}
	err = srv.Reload(context.Background(), gatewayConfig(t, up.URL, moduleFile(t, "badversion", badVersion), ""))
	if err == nil || !strings.Contains(err.Error(), "plugins.policy") || !strings.Contains(err.Error(), "ABI version 2") {
		t.Fatalf("bad reload: %v", err)
	}
	if w := get("status"); w.Code != 200 || w.Header().Get("X-Module") != "respguest" {
		t.Fatalf("after a failed reload: %d %v", w.Code, w.Header())
	}
}

func TestConfigValidation(t *testing.T) {
	_, err := gateway.Parse("test.yaml", []byte(`
plugins:
  policy:
    type: wasm
    fail: sometimes
    timeout: 0s
    memory_limit: 1MiB
routes:
  - path: /x
    upstream: http://127.0.0.1:9
    plugins: [policy]
`), nil)
	if err == nil {
		t.Fatal("bad config accepted")
	}
	_, err2 := gateway.Parse("test.yaml", []byte(`
plugins:
  policy: {type: wasm, path: /nonexistent/p.wasm}
routes:
  - path: /x
    upstream: http://127.0.0.1:9
    plugins: [policy]
`), nil)
	if err2 == nil || !strings.Contains(err2.Error(), "plugins.policy.path: stat /nonexistent/p.wasm: no such file") {
		t.Errorf("missing module: %v", err2)
	}
	for _, want := range []string{
		"plugins.policy.path: required",
		"plugins.policy.fail: must be closed or open",
		"plugins.policy.timeout: must be positive",
		"plugins.policy.memory_limit: must be at least 4MiB",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}
