// Package wasm is the Go SDK for OmniGate WebAssembly policy plugins. A
// plugin is a main package that registers its handlers in an init
// function; it is built with the standard Go toolchain,
//
//	omnigate plugin build ./myplugin
//	# which runs: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o myplugin.wasm ./myplugin
//
// and configured in omnigate.yaml as a "type: wasm" plugin. The SDK hides
// the ABI (ABI.md beside this package): handlers get a Request or a
// Response, read what they need and decide.
//
// A complete plugin that denies requests without a configured header:
//
//	package main
//
//	import "github.com/omnigate/omnigate/sdk/wasm"
//
//	var cfg struct {
//		Header string `json:"header"`
//	}
//
//	func init() {
//		wasm.OnStart(func() error { return wasm.DecodeConfig(&cfg) })
//		wasm.OnRequest(func(r *wasm.Request) {
//			if r.Header.Get(cfg.Header) == "" {
//				wasm.Count("denied", 1)
//				r.Deny(400, "missing header "+cfg.Header)
//			}
//		})
//	}
//
//	func main() {}
//
// Handlers run one at a time per instance, but a gateway runs many
// instances, and the request and response phases of one request may run
// in different instances: keep no per-request state in globals between
// phases. Every call has a CPU budget (10ms of CPU by default, with a
// wall-clock backstop) and instances have a memory cap; a handler that
// panics, loops or runs out of memory fails its request (the plugin's
// "fail" setting says how) and its instance is replaced.
//
// Outside a wasm build the package compiles, but every host call fails
// with ErrPhase; test plugins with sdk/wasmtest, which runs the built
// module in the real host.
package wasm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/omnigate/omnigate/sdk/wasm/abi"
)

// Errors returned by SDK calls, from the host's result codes.
var (
	// ErrTooLarge: the body is over the host's cap (max_request_body,
	// max_response_body).
	ErrTooLarge = errors.New("omnigate: body too large")
	// ErrEncoded: the response body is compressed (Content-Encoding), so
	// the plugin cannot read or change it as text.
	ErrEncoded = errors.New("omnigate: body has a content encoding")
	// ErrInvalid: an argument was refused (header name, status, JSON).
	ErrInvalid = errors.New("omnigate: invalid argument")
	// ErrPhase: not available in this phase (or outside a wasm guest).
	ErrPhase = errors.New("omnigate: not available in this phase")
	// ErrBackend: the KV store failed.
	ErrBackend = errors.New("omnigate: kv store failed")
	// ErrAbsent: no such value.
	ErrAbsent = errors.New("omnigate: absent")
	// ErrUnsupported: the gateway is older than the call (it lacks the
	// property or function).
	ErrUnsupported = errors.New("omnigate: not supported by this gateway")
)

func codeErr(code int32) error {
	switch code {
	case abi.ErrAbsent:
		return ErrAbsent
	case abi.ErrTooLarge:
		return ErrTooLarge
	case abi.ErrEncoded:
		return ErrEncoded
	case abi.ErrInvalid:
		return ErrInvalid
	case abi.ErrPhase:
		return ErrPhase
	case abi.ErrBackend:
		return ErrBackend
	}
	if code < 0 {
		return fmt.Errorf("omnigate: host error %d", code)
	}
	return nil
}

var (
	startFns    []func() error
	reqHandler  func(*Request)
	respHandler func(*Response)
	wantBody    bool
)

// OnStart registers f to run once when an instance starts, after the
// plugin's init functions; decode and check the config there. An error
// refuses the module: the gateway reports it as a load error (or keeps the
// old module on a reload).
func OnStart(f func() error) { startFns = append(startFns, f) }

// OnRequest sets the request handler, called before the request goes on.
// A handler that neither denies nor responds lets the request continue
// (with any header changes it made).
func OnRequest(h func(*Request)) { reqHandler = h }

// OnResponse sets the response handler, called with the response of the
// rest of the chain, buffered up to the host's cap. Registering it makes the
// host buffer responses, which costs memory and latency; Request.SkipResponse
// avoids that for requests the plugin does not need to see.
func OnResponse(h func(*Response)) { respHandler = h }

// ReadRequestBody makes the host buffer request bodies (up to its cap)
// before the request handler, for Request.Body. Call it from init.
func ReadRequestBody() { wantBody = true }

// buf is the scratch buffer values are read into; it grows to the largest
// value seen. An instance runs one call at a time.
var buf = make([]byte, 2048)

func ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

func sptr(s string) unsafe.Pointer { return unsafe.Pointer(unsafe.StringData(s)) }

// fetch calls f with the scratch buffer, growing it when the value does not
// fit, and returns the value's bytes (valid until the next fetch).
func fetch(f func(p unsafe.Pointer, capacity uint32) int32) ([]byte, error) {
	for {
		n := f(ptr(buf), uint32(len(buf)))
		if n < 0 {
			return nil, codeErr(n)
		}
		if int(n) <= len(buf) {
			return buf[:n], nil
		}
		buf = make([]byte, n+n/4)
	}
}

func start() int32 {
	for _, f := range startFns {
		if err := f(); err != nil {
			Log(LevelError, err.Error())
			return -1
		}
	}
	var phases int32
	if reqHandler != nil {
		phases |= abi.PhaseRequest
		if wantBody {
			phases |= abi.PhaseRequestBody
		}
	}
	if respHandler != nil {
		phases |= abi.PhaseResponse
	}
	if phases == 0 {
		Log(LevelError, "no handler registered: call wasm.OnRequest or wasm.OnResponse in an init function")
		return -1
	}
	return phases
}

var (
	curReq  Request
	curResp Response
)

func onRequest() int32 {
	if reqHandler == nil {
		return abi.ActionContinue
	}
	curReq.reset()
	reqHandler(&curReq)
	return curReq.action
}

func onResponse() int32 {
	if respHandler == nil {
		return abi.ActionContinue
	}
	curReq.reset()
	curResp = Response{Request: &curReq, Header: Header{m: abi.MapResponse}}
	respHandler(&curResp)
	return curResp.action
}

// Config returns the plugin's config as the gateway gives it: the "config"
// key of the plugin in omnigate.yaml, as JSON ("null" when absent).
func Config() []byte {
	b, err := fetch(func(p unsafe.Pointer, c uint32) int32 { return hostConfig(p, c) })
	if err != nil {
		return []byte("null")
	}
	return append([]byte(nil), b...)
}

// DecodeConfig decodes the plugin's config into v, refusing unknown keys.
// An absent config leaves v as it is.
func DecodeConfig(v any) error {
	c := Config()
	if string(c) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(c))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// PluginName returns the plugin's name in the gateway config.
func PluginName() string { return getProp(abi.PropPluginName) }

// Log levels.
const (
	LevelDebug = abi.LogDebug
	LevelInfo  = abi.LogInfo
	LevelWarn  = abi.LogWarn
	LevelError = abi.LogError
)

// Log writes msg to the gateway log at level, tagged with the plugin's name
// and the request id. Never log tokens or PHI: the gateway log is not a
// place for them.
func Log(level int, msg string) { hostLog(uint32(level), sptr(msg), uint32(len(msg))) }

// Debugf, Infof, Warnf and Errorf log a formatted message.
func Debugf(format string, args ...any) { Log(LevelDebug, fmt.Sprintf(format, args...)) }

// Infof logs at info level.
func Infof(format string, args ...any) { Log(LevelInfo, fmt.Sprintf(format, args...)) }

// Warnf logs at warn level.
func Warnf(format string, args ...any) { Log(LevelWarn, fmt.Sprintf(format, args...)) }

// Errorf logs at error level.
func Errorf(format string, args ...any) { Log(LevelError, fmt.Sprintf(format, args...)) }

// Count adds delta (≥ 0) to the counter called name (1 to 64 of
// [a-z0-9_]), exported by the gateway as omnigate_wasm_counter_total with
// labels plugin and name. A plugin has at most 100 counter names.
func Count(name string, delta int64) error {
	return codeErr(hostCounterAdd(sptr(name), uint32(len(name)), delta))
}

// Now returns the host's clock (which tests may set).
func Now() time.Time { return time.Unix(0, hostNow()) }
