// Package externaltest runs an OmniGate external policy plugin inside go
// test, the way the gateway runs it: it builds the plugin's binary, starts
// it through go-plugin with the gateway's handshake, configures it over the
// gRPC contract, and sends it requests and responses. It needs no gateway:
// a plugin in its own repository imports it from the sdk/external module.
//
//	func TestRequireHeader(t *testing.T) {
//		p := externaltest.Start(t, externaltest.Build(t, "."), externaltest.Options{
//			Config: map[string]any{"header": "X-Tenant"},
//		})
//		res := p.Do(t, externaltest.Request{Path: "/fhir/R4/Patient/1"})
//		if res.Decision != externaltest.Deny || res.Status != 400 {
//			t.Errorf("got %s %d: %s", res.Decision, res.Status, res.Reason)
//		}
//	}
//
// A request goes through the plugin's request phase, then, unless the
// plugin stopped it or skipped the response, through a stub upstream
// (Request.Upstream) and the plugin's response phase, as in the gateway.
// The gateway's own rendering is not here: a Deny is reported with its
// status and reason, not as the OperationOutcome the gateway would write.
package externaltest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/status"

	"github.com/omnigate/omnigate/sdk/external"
	"github.com/omnigate/omnigate/sdk/external/contract"
	pb "github.com/omnigate/omnigate/sdk/external/proto"
)

// Decisions, as in Result.Decision.
const (
	// Allow: the request went on to the upstream, and its response (changed
	// or not by the response phase) is the answer.
	Allow = "allow"
	// Deny: the plugin denied the request or the response (Deny).
	Deny = "deny"
	// Respond: the plugin answered with a reply of its own (Respond).
	Respond = "respond"
	// Fail: a call failed (an error, a panic, a missed deadline, a process
	// that died); the gateway would apply the plugin's failure mode.
	Fail = "fail"
)

// DefaultTimeout bounds each call in tests: generous, since a test machine
// may be loaded. The gateway's default for a plugin's calls is 50ms.
const DefaultTimeout = 10 * time.Second

// Build compiles the main package pkg (a directory or an import path) with
// "go build" into a temporary directory of t and returns the binary's
// path. It fails the test with the compiler's output when the build fails.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	name := filepath.Base(pkg)
	if abs, err := filepath.Abs(pkg); err == nil && (pkg == "." || strings.HasPrefix(pkg, ".")) {
		name = filepath.Base(abs)
	}
	out := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// Options configure a plugin process.
type Options struct {
	// Name is the plugin's name in the gateway config. Default "test".
	Name string
	// Config is the plugin's "config" key: a []byte or json.RawMessage is
	// sent as is, anything else is encoded to JSON. Default null.
	Config any
	// Env is added to the process's environment (the test's own is
	// inherited).
	Env map[string]string
	// Timeout bounds each call, and the start (process, handshake and
	// Configure). Default DefaultTimeout.
	Timeout time.Duration
}

// Plugin is one running plugin process.
type Plugin struct {
	opts   Options
	client *plugin.Client
	rpc    *contract.Client
	phases *pb.ConfigureResponse
	logs   *logBuffer

	mu       sync.Mutex
	counters map[string]int64
}

// Start starts the plugin binary bin and configures it; it fails the test
// when that fails, and stops the process when t ends.
func Start(t testing.TB, bin string, o Options) *Plugin {
	t.Helper()
	p, err := Open(bin, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// Open is Start without a test: the caller closes the plugin. Its error
// says why the plugin did not start, or, wrapping the plugin's own
// message, that it refused its config ("plugin refused its config: …").
func Open(bin string, o Options) (*Plugin, error) {
	if o.Name == "" {
		o.Name = "test"
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	cfg, err := configJSON(o.Config)
	if err != nil {
		return nil, err
	}
	logs := &logBuffer{}
	cmd := exec.Command(bin)
	cmd.Env = os.Environ()
	for k, v := range o.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  contract.Handshake,
		Plugins:          contract.PluginSet(nil),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     o.Timeout,
		Stderr:           logs,
		Logger:           hclog.NewNullLogger(),
	})
	p := &Plugin{opts: o, client: client, logs: logs, counters: map[string]int64{}}
	proto, err := client.Client()
	if err != nil {
		client.Kill()
		return nil, fmt.Errorf("start %s: %w (output: %s)", bin, err, strings.Join(logs.lines(), " | "))
	}
	raw, err := proto.Dispense(contract.PluginName)
	if err != nil {
		client.Kill()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p.rpc = raw.(*contract.Client)
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	defer cancel()
	p.phases, err = p.rpc.Configure(ctx, &pb.ConfigureRequest{
		PluginName: o.Name, Config: cfg, Version: contract.ProtocolVersion,
	})
	if err != nil {
		client.Kill()
		return nil, fmt.Errorf("plugin refused its config: %s", status.Convert(err).Message())
	}
	return p, nil
}

func configJSON(v any) ([]byte, error) {
	switch c := v.(type) {
	case nil:
		return []byte("null"), nil
	case []byte:
		return c, nil
	case json.RawMessage:
		return c, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	return b, nil
}

// Close stops the process: it is asked to exit, then killed.
func (p *Plugin) Close() { p.client.Kill() }

// Phases reports which phases the plugin takes part in, as it answered
// Configure.
func (p *Plugin) Phases() (request, requestBody, response, responseBody bool) {
	return p.phases.Request, p.phases.RequestBody, p.phases.Response, p.phases.ResponseBody
}

// Logs returns the plugin's log lines so far: its Logger records as
// "LEVEL message key=value …", and whatever else it wrote to stderr.
func (p *Plugin) Logs() []string { return p.logs.lines() }

// Counter returns the sum of the plugin's Count calls for name so far.
func (p *Plugin) Counter(name string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counters[name]
}

// Request is a request sent through the plugin. Every field is optional.
type Request struct {
	// Method is the HTTP method. Default GET.
	Method string
	// Path is the URL path. Default "/".
	Path string
	// RawQuery is the query string, without "?".
	RawQuery string
	// Header holds the request's headers.
	Header map[string]string
	// Route is the name of the route. Default "test".
	Route string
	// ClientIP is the client's address. Default "127.0.0.1".
	ClientIP string
	// ID is the request id. Default "test-<n>".
	ID string
	// Identity is the caller; nil for an anonymous request.
	Identity *external.Identity
	// FHIR is the request's FHIR interaction, as the gateway classifies it
	// on a FHIR route; nil off FHIR routes.
	FHIR *external.FHIR
	// Interactions is the list Request.Interactions returns in the plugin.
	// Default: none off FHIR routes, else the request itself (FHIR, with
	// Method and the path as URL). Set InteractionsErr to
	// external.ErrInteractionsTooLarge or ErrInteractionsInvalid for the
	// gateway's answer to a Bundle it cannot list.
	Interactions    []external.Interaction
	InteractionsErr error
	// Body is the request body, sent to a plugin that reads request bodies.
	Body []byte
	// Upstream is the answer of the rest of the chain, for the response
	// phase.
	Upstream Upstream
}

// Upstream is the response the rest of the chain gives a request that the
// plugin lets through.
type Upstream struct {
	// Status defaults to 200.
	Status int
	// Header holds the response's headers.
	Header map[string]string
	// Body is the response body.
	Body string
}

// Result is what came of a request.
type Result struct {
	// Decision is Allow, Deny, Respond or Fail.
	Decision string
	// Status is the answer's status: the upstream's (maybe changed by the
	// response phase), the Deny's or the reply's; 0 on Fail.
	Status int
	// Reason is the reason given to Deny.
	Reason string
	// Header holds the answer's headers: the upstream's after the response
	// phase's changes, or the reply's.
	Header http.Header
	// Body is the answer's body: the upstream's (maybe replaced) or the
	// reply's; nil on Deny (the gateway writes its own error document).
	Body []byte
	// UpstreamHeader holds the request headers the upstream got, after the
	// request phase's changes; nil when the request did not reach it.
	UpstreamHeader http.Header
	// Phase is the phase that stopped or failed the request: "request",
	// "response", or "" when it was allowed.
	Phase string
	// Err is the call's error on Fail.
	Err error
}

var seq struct {
	sync.Mutex
	n int
}

// Do sends req through the plugin and returns what came of it. It fails
// the test only when req cannot be sent (an invalid Interactions error).
func (p *Plugin) Do(t testing.TB, req Request) Result {
	t.Helper()
	m, err := requestProto(req)
	if err != nil {
		t.Fatal(err)
	}
	res := Result{}
	skip := false
	if p.phases.Request {
		if !p.phases.RequestBody {
			m.Body, m.BodyState = nil, pb.BodyState_BODY_ABSENT
		}
		d, err := p.call(func(ctx context.Context) (*pb.Decision, error) { return p.rpc.OnRequest(ctx, m) })
		if err != nil {
			return Result{Decision: Fail, Phase: "request", Err: err}
		}
		if d.Action == pb.Action_ACTION_STOP {
			return reply(d.Reply, "request")
		}
		skip = d.Action == pb.Action_ACTION_SKIP_RESPONSE
		h := headersFrom(m.Headers)
		contract.ApplyHeaderChanges(h, d.HeaderChanges)
		m.Headers = contract.Headers(h)
	}
	res.UpstreamHeader = headersFrom(m.Headers)
	res.Decision, res.Status = Allow, req.Upstream.Status
	if res.Status == 0 {
		res.Status = 200
	}
	res.Header = http.Header{}
	for k, v := range req.Upstream.Header {
		res.Header.Set(k, v)
	}
	res.Body = []byte(req.Upstream.Body)
	if !p.phases.Response || skip {
		return res
	}
	rm := &pb.Response{Request: m, Status: int32(res.Status), Headers: contract.Headers(res.Header)}
	if p.phases.ResponseBody && len(res.Body) > 0 {
		rm.BodyState, rm.Body = pb.BodyState_BODY_PRESENT, res.Body
	}
	d, err := p.call(func(ctx context.Context) (*pb.Decision, error) { return p.rpc.OnResponse(ctx, rm) })
	if err != nil {
		return Result{Decision: Fail, Phase: "response", Err: err, UpstreamHeader: res.UpstreamHeader}
	}
	if d.Action == pb.Action_ACTION_STOP {
		out := reply(d.Reply, "response")
		out.UpstreamHeader = res.UpstreamHeader
		return out
	}
	contract.ApplyHeaderChanges(res.Header, d.HeaderChanges)
	if d.Status != 0 {
		res.Status = int(d.Status)
	}
	if d.ReplaceBody {
		res.Body = d.Body
	}
	return res
}

// call runs one call under the timeout and adds its counters.
func (p *Plugin) call(f func(context.Context) (*pb.Decision, error)) (*pb.Decision, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.Timeout)
	defer cancel()
	d, err := f(ctx)
	if err != nil {
		return nil, errors.New(status.Convert(err).Message())
	}
	p.mu.Lock()
	for _, c := range d.Counters {
		p.counters[c.Name] += c.Delta
	}
	p.mu.Unlock()
	return d, nil
}

func reply(r *pb.Reply, phase string) Result {
	if r == nil {
		return Result{Decision: Fail, Phase: phase, Err: errors.New("stop without a reply")}
	}
	res := Result{Decision: Respond, Status: int(r.Status), Header: headersFrom(r.Headers), Body: r.Body, Phase: phase}
	if r.Deny {
		res.Decision, res.Reason, res.Body = Deny, r.Reason, nil
	}
	return res
}

func requestProto(req Request) (*pb.Request, error) {
	seq.Lock()
	seq.n++
	n := seq.n
	seq.Unlock()
	m := &pb.Request{
		Method: or(req.Method, "GET"), Path: or(req.Path, "/"), RawQuery: req.RawQuery,
		Route: or(req.Route, "test"), ClientIp: or(req.ClientIP, "127.0.0.1"), RequestId: or(req.ID, fmt.Sprintf("test-%d", n)),
	}
	h := http.Header{}
	for k, v := range req.Header {
		h.Set(k, v)
	}
	m.Headers = contract.Headers(h)
	if id := req.Identity; id != nil {
		m.Identity = &pb.Identity{User: id.User, Role: id.Role, Scopes: id.Scopes, Patient: id.Patient, Session: id.Session, Method: id.Method}
	}
	if len(req.Body) > 0 {
		m.BodyState, m.Body = pb.BodyState_BODY_PRESENT, req.Body
	}
	if f := req.FHIR; f != nil {
		m.Fhir = &pb.FHIR{Interaction: f.Interaction, Type: f.Type, Id: f.ID, VersionId: f.VersionID,
			Operation: f.Operation, CompartmentType: f.CompartmentType, CompartmentId: f.CompartmentID}
		list := req.Interactions
		if list == nil && f.Interaction != "batch" {
			url := strings.TrimPrefix(m.Path, "/")
			if m.RawQuery != "" {
				url += "?" + m.RawQuery
			}
			list = []external.Interaction{{FHIR: *f, Method: m.Method, URL: url}}
		}
		switch req.InteractionsErr {
		case nil:
			m.InteractionsState = pb.InteractionsState_INTERACTIONS_PRESENT
		case external.ErrInteractionsTooLarge:
			m.InteractionsState, list = pb.InteractionsState_INTERACTIONS_TOO_LARGE, nil
		case external.ErrInteractionsInvalid:
			m.InteractionsState, list = pb.InteractionsState_INTERACTIONS_INVALID, nil
		case external.ErrInteractionsUnsupported:
			m.InteractionsState, list = pb.InteractionsState_INTERACTIONS_ABSENT, nil
		default:
			return nil, fmt.Errorf("externaltest: InteractionsErr %v is not one the gateway sends", req.InteractionsErr)
		}
		for _, in := range list {
			m.Interactions = append(m.Interactions, &pb.Interaction{
				Interaction: in.Interaction, Type: in.Type, Id: in.ID, VersionId: in.VersionID, Operation: in.Operation,
				CompartmentType: in.CompartmentType, CompartmentId: in.CompartmentID,
				Conditional: in.Conditional, Method: in.Method, Url: in.URL, IfNoneExist: in.IfNoneExist,
			})
		}
	}
	return m, nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func headersFrom(hs []*pb.Header) http.Header {
	h := http.Header{}
	for _, x := range hs {
		for _, v := range x.Values {
			h.Add(x.Name, v)
		}
	}
	return h
}

// logBuffer collects the process's log records and stderr lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the plugin's stderr lines, its Logger's JSON records
// (log/slog's JSON) written as "LEVEL message key=value …".
func (l *logBuffer) lines() []string {
	l.mu.Lock()
	raw := l.b.String()
	l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(raw, "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] == nil || rec["level"] == nil {
			out = append(out, line)
			continue
		}
		s := fmt.Sprintf("%v %v", rec["level"], rec["msg"])
		for _, k := range slices.Sorted(maps.Keys(rec)) {
			if k != "time" && k != "level" && k != "msg" {
				s += fmt.Sprintf(" %s=%v", k, rec[k])
			}
		}
		out = append(out, s)
	}
	return out
}
