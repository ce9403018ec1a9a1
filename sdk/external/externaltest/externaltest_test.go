package externaltest_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/sdk/external"
	"github.com/omnigate/omnigate/sdk/external/externaltest"
)

// The test binary re-executes itself as the plugin.
const envServe = "EXTERNALTEST_SERVE_PLUGIN"

func TestMain(m *testing.M) {
	if os.Getenv(envServe) == "1" {
		external.Serve(&policy{})
		return
	}
	os.Exit(m.Run())
}

type policy struct {
	Header string `json:"header"`
}

func (p *policy) Configure(ctx context.Context, c external.Config) error {
	if err := c.Decode(p); err != nil {
		return err
	}
	if p.Header == "" {
		return errors.New("config: header is required")
	}
	return nil
}

func (p *policy) ReadResponseBody() bool { return true }

func (p *policy) OnRequest(ctx context.Context, r *external.Request) error {
	switch {
	case r.Path == "/panic":
		panic("boom")
	case r.Path == "/reply":
		r.Respond(202, []byte("accepted"), "X-Reply", "yes")
		return nil
	case r.Header.Get(p.Header) == "":
		r.Count("denied", 1)
		r.Deny(400, "missing required header "+p.Header)
		return nil
	}
	list, err := r.Interactions()
	if err != nil && !errors.Is(err, external.ErrNotFHIR) {
		r.Deny(403, "the request's FHIR interactions cannot be checked")
		return nil
	}
	for _, in := range list {
		if in.Interaction == "delete" {
			r.Deny(403, "delete not allowed")
			return nil
		}
	}
	if r.Identity != nil {
		r.Header.Set("X-Seen-User", r.Identity.User)
	}
	external.Logger.Info("request allowed", "route", r.Route)
	return nil
}

func (p *policy) OnResponse(ctx context.Context, w *external.Response) error {
	w.Header.Set("X-Checked", "1")
	if w.Status == 404 {
		w.Status = 410
	}
	if strings.Contains(string(w.Body), "secret") {
		w.SetBody([]byte(strings.ReplaceAll(string(w.Body), "secret", "******")))
	}
	return nil
}

func start(t *testing.T, cfg any) *externaltest.Plugin {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return externaltest.Start(t, exe, externaltest.Options{Config: cfg, Env: map[string]string{envServe: "1"}})
}

func TestDo(t *testing.T) {
	p := start(t, map[string]any{"header": "X-Tenant"})
	if rq, _, rs, rsb := p.Phases(); !rq || !rs || !rsb {
		t.Fatalf("phases: request %v, response %v, response body %v", rq, rs, rsb)
	}
	tenant := map[string]string{"X-Tenant": "acme"}
	read := &external.FHIR{Interaction: "read", Type: "Patient", ID: "p1"}
	tests := []struct {
		name    string
		req     externaltest.Request
		want    string
		status  int
		check   func(t *testing.T, r externaltest.Result)
		counter int64
	}{
		{name: "denied without the header", req: externaltest.Request{Path: "/fhir/R4/Patient/p1"}, want: externaltest.Deny, status: 400,
			check: func(t *testing.T, r externaltest.Result) {
				if r.Reason != "missing required header X-Tenant" || r.Phase != "request" || r.UpstreamHeader != nil {
					t.Errorf("reason %q, phase %q, upstream header %v", r.Reason, r.Phase, r.UpstreamHeader)
				}
			}, counter: 1},
		{name: "allowed: request header changes reach the upstream", req: externaltest.Request{Path: "/fhir/R4/Patient/p1", Header: tenant,
			Identity: &external.Identity{User: "dr-who"}, FHIR: read,
			Upstream: externaltest.Upstream{Body: `{"note":"secret"}`, Header: map[string]string{"Content-Type": "application/json"}}},
			want: externaltest.Allow, status: 200,
			check: func(t *testing.T, r externaltest.Result) {
				if r.UpstreamHeader.Get("X-Seen-User") != "dr-who" || r.Header.Get("X-Checked") != "1" ||
					r.Header.Get("Content-Type") != "application/json" || string(r.Body) != `{"note":"******"}` {
					t.Errorf("upstream header %v, header %v, body %s", r.UpstreamHeader, r.Header, r.Body)
				}
			}, counter: 1},
		{name: "response status changed", req: externaltest.Request{Path: "/x", Header: tenant, Upstream: externaltest.Upstream{Status: 404}},
			want: externaltest.Allow, status: 410, counter: 1},
		{name: "a local reply", req: externaltest.Request{Path: "/reply"}, want: externaltest.Respond, status: 202,
			check: func(t *testing.T, r externaltest.Result) {
				if string(r.Body) != "accepted" || r.Header.Get("X-Reply") != "yes" {
					t.Errorf("header %v, body %q", r.Header, r.Body)
				}
			}, counter: 1},
		{name: "a batch entry is decided", req: externaltest.Request{Method: "POST", Path: "/fhir/R4", Header: tenant,
			FHIR:         &external.FHIR{Interaction: "batch"},
			Interactions: []external.Interaction{{FHIR: external.FHIR{Interaction: "delete", Type: "Observation", ID: "o1"}, Method: "DELETE", URL: "Observation/o1"}}},
			want: externaltest.Deny, status: 403, counter: 1},
		{name: "a Bundle the gateway cannot list", req: externaltest.Request{Method: "POST", Path: "/fhir/R4", Header: tenant,
			FHIR: &external.FHIR{Interaction: "batch"}, InteractionsErr: external.ErrInteractionsTooLarge},
			want: externaltest.Deny, status: 403, counter: 1},
		{name: "a panic fails the call", req: externaltest.Request{Path: "/panic"}, want: externaltest.Fail,
			check: func(t *testing.T, r externaltest.Result) {
				if r.Err == nil || !strings.Contains(r.Err.Error(), "boom") {
					t.Errorf("error %v", r.Err)
				}
			}, counter: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := p.Do(t, tt.req)
			if r.Decision != tt.want || r.Status != tt.status {
				t.Fatalf("got %s %d (%q, %v), want %s %d", r.Decision, r.Status, r.Reason, r.Err, tt.want, tt.status)
			}
			if tt.check != nil {
				tt.check(t, r)
			}
			if got := p.Counter("denied"); got != tt.counter {
				t.Errorf("denied = %d, want %d", got, tt.counter)
			}
		})
	}
	logs := strings.Join(p.Logs(), "\n")
	if !strings.Contains(logs, "INFO request allowed route=test") || !strings.Contains(logs, "boom") {
		t.Errorf("logs:\n%s", logs)
	}
}

func TestConfigRefused(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]any{
		"missing header": map[string]any{},
		"unknown key":    []byte(`{"header":"X","hedaer":"Y"}`),
	} {
		t.Run(name, func(t *testing.T) {
			p, err := externaltest.Open(exe, externaltest.Options{Config: cfg, Env: map[string]string{envServe: "1"}})
			if err == nil {
				p.Close()
				t.Fatal("started with a bad config")
			}
			if !strings.Contains(err.Error(), "plugin refused its config: config:") {
				t.Fatalf("error: %v", err)
			}
		})
	}
}

func TestNotAPlugin(t *testing.T) {
	if _, err := externaltest.Open("/bin/true", externaltest.Options{}); err == nil {
		t.Fatal("started /bin/true as a plugin")
	}
}
