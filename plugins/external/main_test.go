package external

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/omnigate/omnigate/sdk/external"
	"github.com/omnigate/omnigate/sdk/external/contract"
)

// The test binary is also the test plugin: started with helperEnv set it
// serves the policy that the variable names instead of running tests
// (go-plugin's helper-process pattern).
const (
	helperEnv = "OMNIGATE_EXTERNAL_TEST_PLUGIN"
	// markEnv names a directory where the plugin marks that a request
	// reached it ("blocked"), for tests that act while it is in the call.
	markEnv = "OMNIGATE_EXTERNAL_TEST_MARKS"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		serveHelper(mode)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func serveHelper(mode string) {
	switch mode {
	case "policy":
		external.Serve(&testPolicy{})
	case "response":
		external.Serve(&responsePolicy{withBody: true})
	case "response-headers":
		external.Serve(&responsePolicy{})
	case "require-header":
		external.Serve(&requireHeader{})
	case "interactions":
		external.Serve(&interactionsPolicy{})
	case "interactions-body":
		external.Serve(&interactionsPolicy{readBody: true})
	case "mismatch": // built against a later contract
		cfg := external.ServeConfig(&testPolicy{})
		cfg.ProtocolVersion = contract.ProtocolVersion + 1
		plugin.Serve(cfg)
	case "cookie": // a go-plugin plugin of another program
		cfg := external.ServeConfig(&testPolicy{})
		cfg.MagicCookieKey, cfg.MagicCookieValue = "OTHER_PROGRAM_PLUGIN", "other"
		plugin.Serve(cfg)
	case "not-a-plugin":
		fmt.Println("hello")
	default:
		fmt.Fprintln(os.Stderr, "unknown test plugin", mode)
		os.Exit(2)
	}
}

// testPolicy acts on the X-Test request header.
type testPolicy struct {
	Greeting string `json:"greeting"`
	Refuse   bool   `json:"refuse"`
}

func (p *testPolicy) Configure(ctx context.Context, c external.Config) error {
	if err := c.Decode(p); err != nil {
		return err
	}
	if p.Refuse {
		return errors.New("config: refused as asked")
	}
	external.Logger.Info("configured", "name", c.Name)
	return nil
}

func (p *testPolicy) ReadRequestBody() bool { return true }

func (p *testPolicy) OnRequest(ctx context.Context, r *external.Request) error {
	r.Header.Set("X-Seen-Greeting", p.Greeting)
	r.Header.Set("X-Seen-Pid", fmt.Sprint(os.Getpid()))
	r.Header.Set("X-Seen-Env", os.Getenv("OMNIGATE_TEST_ENV"))
	r.Header.Del("X-Seen-Remove")
	if r.Identity != nil {
		r.Header.Set("X-Seen-User", r.Identity.User+"/"+r.Identity.Role+"/"+strings.Join(r.Identity.Scopes, ","))
	}
	if f := r.FHIR; f != nil {
		r.Header.Set("X-Seen-FHIR", strings.Join([]string{f.Interaction, f.Type, f.ID, f.CompartmentType, f.CompartmentID}, " "))
	}
	if r.Body != nil {
		r.Header.Set("X-Seen-Body", fmt.Sprint(len(r.Body)))
	}
	if r.BodyTooLarge {
		r.Header.Set("X-Seen-Body", "too large")
	}
	r.Count("requests", 1)
	switch r.Header.Get("X-Test") {
	case "deny":
		r.ReplyHeader().Set("Retry-After", "7")
		r.Deny(403, "denied by the test policy")
	case "respond":
		r.Respond(418, []byte("short and stout"), "X-Teapot", "yes")
	case "error":
		return errors.New("consent service unreachable")
	case "panic":
		panic("test policy panics")
	case "exit":
		os.Exit(3)
	case "bad-header":
		r.Header.Set("Content-Length", "1")
	case "hang": // ignores its deadline
		time.Sleep(10 * time.Second)
	case "block": // waits until the gateway gives up
		mark("blocked")
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
	case "log":
		external.Logger.Warn("structured line", "answer", 42)
		fmt.Fprintln(os.Stderr, "plain stderr line")
		fmt.Println("plain stdout line")
	}
	return nil
}

func mark(name string) {
	if dir := os.Getenv(markEnv); dir != "" {
		os.WriteFile(filepath.Join(dir, name), nil, 0o644)
	}
}

// responsePolicy changes responses: it upper-cases the body (withBody),
// adds a header, and turns X-Test: teapot into a 418 reply.
type responsePolicy struct {
	external.ResponseOnly
	withBody bool
}

func (p *responsePolicy) ReadResponseBody() bool { return p.withBody }

func (p *responsePolicy) OnResponse(ctx context.Context, r *external.Response) error {
	r.Header.Set("X-Response-Seen", fmt.Sprintf("%d %s", r.Status, r.Request.Path))
	switch r.Request.Header.Get("X-Test") {
	case "teapot":
		r.Respond(418, []byte("no"))
		return nil
	case "status":
		r.Status = 203
	case "error":
		return errors.New("cannot decide")
	}
	if r.Body != nil {
		r.SetBody(bytes.ToUpper(r.Body))
	}
	return nil
}

// interactionsPolicy tells what it saw of the request's FHIR interactions:
// in the request header X-Seen-Interactions (which the test upstream
// echoes) and in the response header X-Response-Interactions.
type interactionsPolicy struct{ readBody bool }

func (p *interactionsPolicy) ReadRequestBody() bool { return p.readBody }

func (p *interactionsPolicy) OnRequest(ctx context.Context, r *external.Request) error {
	r.Header.Set("X-Seen-Interactions", describeInteractions(r))
	if r.Body != nil {
		r.Header.Set("X-Seen-Body", fmt.Sprint(len(r.Body)))
	}
	return nil
}

func (p *interactionsPolicy) OnResponse(ctx context.Context, w *external.Response) error {
	w.Header.Set("X-Response-Interactions", describeInteractions(w.Request))
	return nil
}

func describeInteractions(r *external.Request) string {
	list, err := r.Interactions()
	if err != nil {
		return "error: " + err.Error()
	}
	b, _ := json.Marshal(list)
	return string(b)
}

// requireHeader is the benchmarks' trivial policy.
type requireHeader struct{ Header string }

func (p *requireHeader) Configure(ctx context.Context, c external.Config) error {
	p.Header = "X-Tenant"
	return c.Decode(p)
}

func (p *requireHeader) OnRequest(ctx context.Context, r *external.Request) error {
	if r.Header.Get(p.Header) == "" {
		r.Deny(400, "missing required header "+p.Header)
	}
	return nil
}
