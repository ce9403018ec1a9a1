package wasmtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/plugins/wasm"
)

// Cases is a file of table-driven cases: the plugin's setup and the
// requests to run, in order, through one loaded plugin (so KV state and the
// clock carry from case to case).
//
//	config: {header: X-Tenant}       # the plugin's config
//	kv: {quota:acme: "5"}            # KV contents at load
//	now: 2026-01-01T09:00:00Z        # the clock at load
//	fail: closed                     # or open
//	timeout: 10ms                    # CPU budget of a call; default the gateway's, 10ms
//	wall_timeout: 1s                 # its wall-clock backstop; default the larger of 1s and 10 × timeout
//	max_request_body: 4096           # bytes; default 1MiB
//	cases:
//	  - name: request without the header is denied
//	    request: {method: GET, path: /fhir/R4/Patient/1}
//	    identity: {user: u1, role: nurse, scopes: [patient/*.rs], patient: p1}
//	    expect: {decision: deny, status: 400, body_contains: [missing required header]}
//	  - name: a batch's entries are decided one by one
//	    request:
//	      method: POST
//	      path: /fhir/R4
//	      body: '{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"DELETE","url":"Observation/o1"}}]}'
//	    identity: {user: n1, role: nurse, scopes: [user/*.rs]}
//	    expect: {decision: deny, status: 403}
//	  - name: request with the header passes
//	    request: {path: /fhir/R4/Patient/1, headers: {X-Tenant: acme}}
//	    upstream: {status: 200, body: '{"resourceType":"Patient","id":"1"}'}
//	    advance: 1h                   # move the clock first
//	    expect:
//	      decision: allow
//	      upstream_headers: {X-Tenant: acme}
//	      headers: {X-Removed: ""}    # "" means absent
//	      body_json: {resourceType: Patient}  # these members, at least
//	      kv: {"count:acme": "1"}
//	      counters: {allowed: 1}
//	      logs: [allowed for acme]
type Cases struct {
	Config any               `yaml:"config"`
	KV     map[string]string `yaml:"kv"`
	Now    time.Time         `yaml:"now"`
	Fail   string            `yaml:"fail"`
	// Timeout is the CPU budget of one call (the plugin's timeout).
	// Default the gateway's, DefaultTimeout.
	Timeout time.Duration `yaml:"timeout"`
	// WallTimeout is the wall-clock backstop of one call (the plugin's
	// wall_timeout). Default wasm.DefaultWallTimeout(Timeout).
	WallTimeout time.Duration `yaml:"wall_timeout"`
	// MaxRequestBody is the plugin's max_request_body in bytes, which also
	// bounds the batch or transaction bodies read for its interactions.
	// Default 1MiB.
	MaxRequestBody int64  `yaml:"max_request_body"`
	Cases          []Case `yaml:"cases"`
}

// Case is one request and what it must get.
type Case struct {
	Name     string            `yaml:"name"`
	Request  CaseRequest       `yaml:"request"`
	Identity *CaseIdentity     `yaml:"identity"`
	Upstream CaseUpstream      `yaml:"upstream"`
	KV       map[string]string `yaml:"kv"`
	Advance  time.Duration     `yaml:"advance"`
	Expect   Expect            `yaml:"expect"`
}

// CaseRequest is a Request in YAML.
type CaseRequest struct {
	Method   string            `yaml:"method"`
	Path     string            `yaml:"path"`
	Headers  map[string]string `yaml:"headers"`
	Body     string            `yaml:"body"`
	Route    string            `yaml:"route"`
	FHIR     *bool             `yaml:"fhir"`
	FHIRBase string            `yaml:"fhir_base"`
}

// CaseIdentity is a gateway.Identity in YAML.
type CaseIdentity struct {
	User    string   `yaml:"user"`
	Role    string   `yaml:"role"`
	Scopes  []string `yaml:"scopes"`
	Patient string   `yaml:"patient"`
	Session string   `yaml:"session"`
}

// CaseUpstream is an Upstream in YAML.
type CaseUpstream struct {
	Status  int               `yaml:"status"`
	Headers map[string]string `yaml:"headers"`
	Body    string            `yaml:"body"`
}

// Expect is what a case checks; empty fields are not checked.
type Expect struct {
	Decision        string            `yaml:"decision"`
	Status          int               `yaml:"status"`
	Headers         map[string]string `yaml:"headers"`
	UpstreamHeaders map[string]string `yaml:"upstream_headers"`
	// Body is the whole body, exactly; BodyJSON a JSON value the body must
	// hold: objects compare by the members given (others may be there),
	// arrays and scalars exactly.
	Body         *string            `yaml:"body"`
	BodyJSON     any                `yaml:"body_json"`
	BodyContains []string           `yaml:"body_contains"`
	BodyExcludes []string           `yaml:"body_excludes"`
	KV           map[string]string  `yaml:"kv"`
	Counters     map[string]float64 `yaml:"counters"`
	Logs         []string           `yaml:"logs"`
}

// ErrBadCases is wrapped by the errors of a cases file that cannot be read
// or decoded, or that holds an invalid value.
var ErrBadCases = errors.New("bad cases file")

// ReadCases reads and decodes a cases file; unknown keys are errors. Its
// errors wrap ErrBadCases and name the line when the YAML decoder does.
func ReadCases(file string) (*Cases, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCases, err)
	}
	cs, err := ParseCases(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return cs, nil
}

// ParseCases decodes the YAML of a cases file, as ReadCases.
func ParseCases(data []byte) (*Cases, error) {
	var cs Cases
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cs); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %w", ErrBadCases, err)
	}
	if cs.Fail != "" && cs.Fail != "open" && cs.Fail != "closed" {
		return nil, fmt.Errorf("%w: fail must be open or closed, not %q", ErrBadCases, cs.Fail)
	}
	if cs.Timeout < 0 || cs.WallTimeout < 0 || cs.MaxRequestBody < 0 {
		return nil, fmt.Errorf("%w: timeout, wall_timeout and max_request_body must not be negative", ErrBadCases)
	}
	if len(cs.Cases) == 0 {
		return nil, fmt.Errorf("%w: no cases", ErrBadCases)
	}
	for i, c := range cs.Cases {
		if c.Name == "" {
			cs.Cases[i].Name = fmt.Sprintf("case %d", i+1)
		}
		switch c.Expect.Decision {
		case "", Allow, Deny, Fail:
		default:
			return nil, fmt.Errorf("%w: case %q: decision must be allow, deny or fail, not %q", ErrBadCases, cs.Cases[i].Name, c.Expect.Decision)
		}
		if c.Advance < 0 {
			return nil, fmt.Errorf("%w: case %q: advance must not be negative", ErrBadCases, cs.Cases[i].Name)
		}
	}
	return &cs, nil
}

// Open loads the module at path with the cases' setup. The config is
// given to the plugin as the JSON of the YAML value, so a string
// ("config: X-Org") arrives as a JSON string ("X-Org" in quotes), as the
// gateway gives it.
func (cs *Cases) Open(path string) (*Plugin, error) {
	conf, err := json.Marshal(jsonable(cs.Config))
	if err != nil {
		return nil, fmt.Errorf("%w: config: %w", ErrBadCases, err)
	}
	return Open(path, Options{Config: conf, KV: cs.KV, Now: cs.Now, FailOpen: cs.Fail == "open",
		Timeout: cs.Timeout, WallTimeout: cs.WallTimeout, MaxRequestBody: cs.MaxRequestBody})
}

// jsonable turns YAML-decoded maps (map[string]any, and
// map[any]any from older decoders) into values encoding/json takes.
func jsonable(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonable(e)
		}
	case map[any]any:
		m := map[string]any{}
		for k, e := range x {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = jsonable(e)
		}
	}
	return v
}

// Run runs the case against p and returns what did not match.
func (c *Case) Run(p *Plugin) (*Result, []string) {
	for k, v := range c.KV {
		p.SetKV(k, v, 0)
	}
	if c.Advance > 0 {
		p.Advance(c.Advance)
	}
	req := Request{
		Method: c.Request.Method, Path: c.Request.Path, Header: c.Request.Headers, Body: c.Request.Body,
		Route: c.Request.Route, FHIRBase: c.Request.FHIRBase,
		NotFHIR:  c.Request.FHIR != nil && !*c.Request.FHIR,
		Upstream: Upstream{Status: c.Upstream.Status, Header: c.Upstream.Headers, Body: c.Upstream.Body},
	}
	if id := c.Identity; id != nil {
		req.Identity = &gateway.Identity{UserID: id.User, Role: id.Role, Scopes: id.Scopes, PatientID: id.Patient, SessionID: id.Session}
	}
	res := p.Serve(req)
	return res, c.Expect.Check(p, res)
}

// Check compares a result (and the plugin's KV, counters) with e.
func (e *Expect) Check(p *Plugin, res *Result) []string {
	var bad []string
	if e.Decision != "" && res.Decision != e.Decision {
		bad = append(bad, fmt.Sprintf("decision = %s, want %s", res.Decision, e.Decision))
	}
	if e.Status != 0 && res.Status != e.Status {
		bad = append(bad, fmt.Sprintf("status = %d, want %d", res.Status, e.Status))
	}
	for k, v := range e.Headers {
		if got := res.Header.Get(k); got != v {
			bad = append(bad, fmt.Sprintf("header %s = %q, want %q", k, got, v))
		}
	}
	for k, v := range e.UpstreamHeaders {
		got := ""
		if res.UpstreamHeader != nil {
			got = res.UpstreamHeader.Get(k)
		}
		if got != v {
			bad = append(bad, fmt.Sprintf("upstream header %s = %q, want %q", k, got, v))
		}
	}
	if e.Body != nil && res.Body != *e.Body {
		bad = append(bad, "body differs (- want, + got):")
		bad = append(bad, indent(diff(*e.Body, res.Body))...)
	}
	if e.BodyJSON != nil {
		bad = append(bad, checkBodyJSON(jsonable(e.BodyJSON), res.Body)...)
	}
	for _, s := range e.BodyContains {
		if !strings.Contains(res.Body, s) {
			bad = append(bad, fmt.Sprintf("body does not contain %q", s))
		}
	}
	for _, s := range e.BodyExcludes {
		if strings.Contains(res.Body, s) {
			bad = append(bad, fmt.Sprintf("body contains %q", s))
		}
	}
	for k, v := range e.KV {
		got, ok := p.KV(k)
		if v == "" && ok || v != "" && got != v {
			bad = append(bad, fmt.Sprintf("kv %s = %q (present %v), want %q", k, got, ok, v))
		}
	}
	for k, v := range e.Counters {
		if got := p.Counter(k); got != v {
			bad = append(bad, fmt.Sprintf("counter %s = %v, want %v", k, got, v))
		}
	}
	for _, s := range e.Logs {
		found := false
		for _, l := range res.Logs {
			found = found || strings.Contains(l.String(), s)
		}
		if !found {
			bad = append(bad, fmt.Sprintf("no log record of this request contains %q", s))
		}
	}
	return bad
}

// Explain describes a result for a failed case: the response the client
// got, the plugin's failure if it failed (with the ABI error), and the log
// records of the request.
func Explain(res *Result) []string {
	b, _ := json.Marshal(res.Body)
	out := []string{fmt.Sprintf("response: %s %d %s", res.Decision, res.Status, b)}
	for _, l := range res.Logs {
		if l.Message == "wasm plugin failed" {
			out = append(out, fmt.Sprintf("plugin failed in the %s phase (%s): %s", l.Attrs["phase"], l.Attrs["kind"], l.Attrs["error"]))
		}
	}
	if len(res.Logs) == 0 {
		return append(out, "logs: none")
	}
	out = append(out, "logs:")
	for _, l := range res.Logs {
		out = append(out, "  "+l.String())
	}
	return out
}

// RunCases runs the cases in file against the module at path as subtests.
func RunCases(t *testing.T, path, file string) {
	t.Helper()
	cs, err := ReadCases(file)
	if err != nil {
		t.Fatal(err)
	}
	p, err := cs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := range cs.Cases {
		c := &cs.Cases[i]
		t.Run(c.Name, func(t *testing.T) {
			if res, bad := c.Run(p); len(bad) > 0 {
				t.Error(strings.Join(append(bad, Explain(res)...), "\n"))
			}
		})
	}
}

// RunFile runs the cases in file against the module at path and reports
// like go test: "ok" or "FAIL" per case with what did not match, then a
// summary line. It returns the number of failed cases.
func RunFile(w io.Writer, path, file string) (failed int, err error) {
	return RunFileWith(w, path, file, RunOptions{})
}

// RunOptions change a cases file's setup for one run.
type RunOptions struct {
	// Timeout and WallTimeout, when not zero, replace the file's (and so
	// the defaults, the gateway's).
	Timeout, WallTimeout time.Duration
	// Run, when not nil, selects the cases whose names it matches; the
	// others are not run (KV and clock changes of earlier cases that did
	// not run are then missing).
	Run *regexp.Regexp
}

// RunFileWith is RunFile with the file's setup changed by ro.
func RunFileWith(w io.Writer, path, file string, ro RunOptions) (failed int, err error) {
	cs, err := ReadCases(file)
	if err != nil {
		return 0, err
	}
	if ro.Timeout != 0 {
		cs.Timeout = ro.Timeout
	}
	if ro.WallTimeout != 0 {
		cs.WallTimeout = ro.WallTimeout
	}
	t0 := time.Now()
	p, err := cs.Open(path)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	ran := 0
	for i := range cs.Cases {
		c := &cs.Cases[i]
		if ro.Run != nil && !ro.Run.MatchString(c.Name) {
			continue
		}
		ran++
		start := time.Now()
		res, bad := c.Run(p)
		d := time.Since(start).Round(10 * time.Microsecond)
		if len(bad) == 0 {
			fmt.Fprintf(w, "ok    %s (%s)\n", c.Name, d)
			continue
		}
		failed++
		fmt.Fprintf(w, "FAIL  %s (%s)\n", c.Name, d)
		for _, b := range append(bad, Explain(res)...) {
			fmt.Fprintf(w, "        %s\n", b)
		}
	}
	total := time.Since(t0).Round(time.Millisecond)
	budget := cs.Timeout
	if budget == 0 {
		budget = DefaultTimeout
	}
	wall := cs.WallTimeout
	if wall == 0 {
		wall = wasm.DefaultWallTimeout(budget)
	}
	limits := fmt.Sprintf("a call may use %s of CPU, %s of wall-clock time", budget, wall)
	if ran < len(cs.Cases) {
		limits += fmt.Sprintf("; %d of %d cases selected", ran, len(cs.Cases))
	}
	if failed > 0 {
		fmt.Fprintf(w, "FAIL  %s: %d of %d cases failed (%s; %s)\n", file, failed, ran, total, limits)
	} else {
		fmt.Fprintf(w, "ok    %s: %d cases passed (%s; %s)\n", file, ran, total, limits)
	}
	return failed, nil
}
