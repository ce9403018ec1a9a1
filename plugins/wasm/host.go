package wasm

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/plugins/wasm/internal/fhirjson"
	"github.com/omnigate/omnigate/sdk/wasm/abi"
)

// Limits on what a guest hands the host.
const (
	maxLogLine    = 4 << 10
	maxDenyMsg    = 1 << 10
	maxKeyLen     = 512
	maxKVValue    = 1 << 20
	maxCounters   = 100
	maxCounterLen = 64
)

type hostFunc struct {
	name    string
	params  []api.ValueType
	results []api.ValueType
	fn      func(in *instance, mod api.Module, stack []uint64)
}

var (
	i32 = api.ValueTypeI32
	i64 = api.ValueTypeI64
)

// hostFuncs is ABI v1's import module, in the order of sdk/wasm/ABI.md.
var hostFuncs = []hostFunc{
	{"get", []api.ValueType{i32, i32, i32}, []api.ValueType{i32}, hostGet},
	{"header_get", []api.ValueType{i32, i32, i32, i32, i32}, []api.ValueType{i32}, hostHeaderGet},
	{"header_list", []api.ValueType{i32, i32, i32}, []api.ValueType{i32}, hostHeaderList},
	{"header_set", []api.ValueType{i32, i32, i32, i32, i32}, []api.ValueType{i32}, hostHeaderSet},
	{"header_add", []api.ValueType{i32, i32, i32, i32, i32}, []api.ValueType{i32}, hostHeaderAdd},
	{"header_del", []api.ValueType{i32, i32, i32}, []api.ValueType{i32}, hostHeaderDel},
	{"body_get", []api.ValueType{i32, i32, i32}, []api.ValueType{i32}, hostBodyGet},
	{"body_set", []api.ValueType{i32, i32}, []api.ValueType{i32}, hostBodySet},
	{"status", nil, []api.ValueType{i32}, hostStatus},
	{"status_set", []api.ValueType{i32}, []api.ValueType{i32}, hostStatusSet},
	{"reply", []api.ValueType{i32, i32, i32}, []api.ValueType{i32}, hostReply},
	{"deny", []api.ValueType{i32, i32, i32}, []api.ValueType{i32}, hostDeny},
	{"config", []api.ValueType{i32, i32}, []api.ValueType{i32}, hostConfig},
	{"log", []api.ValueType{i32, i32, i32}, nil, hostLog},
	{"kv_get", []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i32}, hostKVGet},
	{"kv_set", []api.ValueType{i32, i32, i32, i32, i64}, []api.ValueType{i32}, hostKVSet},
	{"kv_incr", []api.ValueType{i32, i32, i64, i64, i32}, []api.ValueType{i32}, hostKVIncr},
	{"kv_delete", []api.ValueType{i32, i32}, []api.ValueType{i32}, hostKVDelete},
	{"counter_add", []api.ValueType{i32, i32, i64}, []api.ValueType{i32}, hostCounterAdd},
	{"now", nil, []api.ValueType{i64}, hostNow},
	{"json_mask", []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i32}, hostJSONMask},
	{"json_extract", []api.ValueType{i32, i32, i32, i32, i32}, []api.ValueType{i32}, hostJSONExtract},
}

var hostFuncNames = func() map[string]struct{} {
	m := map[string]struct{}{}
	for _, f := range hostFuncs {
		m[f.name] = struct{}{}
	}
	return m
}()

func instantiateHost(ctx context.Context, rt wazero.Runtime) error {
	b := rt.NewHostModuleBuilder(abi.Module)
	for _, f := range hostFuncs {
		fn := f.fn
		b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, mod api.Module, stack []uint64) {
			fn(ctx.Value(instanceKey{}).(*instance), mod, stack)
		}), f.params, f.results).Export(f.name)
	}
	_, err := b.Instantiate(ctx)
	return err
}

func ret(stack []uint64, v int32) { stack[0] = api.EncodeI32(v) }

func arg(stack []uint64, i int) uint32 { return api.DecodeU32(stack[i]) }

// out writes data at buf when it fits in capacity and returns its length,
// so a guest with a short buffer can retry with a larger one.
func out(mod api.Module, buf, capacity uint32, data []byte) int32 {
	if len(data) > 1<<30 {
		return abi.ErrTooLarge
	}
	if uint64(len(data)) <= uint64(capacity) && len(data) > 0 && !mod.Memory().Write(buf, data) {
		return abi.ErrInvalid
	}
	return int32(len(data))
}

func outString(mod api.Module, buf, capacity uint32, s string) int32 {
	if uint64(len(s)) <= uint64(capacity) && len(s) > 0 && !mod.Memory().WriteString(buf, s) {
		return abi.ErrInvalid
	}
	return int32(len(s))
}

func read(mod api.Module, ptr, n uint32) ([]byte, bool) {
	if n == 0 {
		return nil, true
	}
	return mod.Memory().Read(ptr, n)
}

// prop returns a request property, or ok false when it is absent.
func (ex *exchange) prop(id uint32) (string, bool) {
	r := ex.r
	switch id {
	case abi.PropMethod:
		return r.Method, true
	case abi.PropPath:
		return r.URL.Path, true
	case abi.PropQuery:
		return r.URL.RawQuery, r.URL.RawQuery != ""
	case abi.PropRoute:
		info, ok := gateway.RouteFrom(r.Context())
		return info.Name, ok
	case abi.PropClientIP:
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			return r.RemoteAddr, r.RemoteAddr != ""
		}
		return host, true
	case abi.PropRequestID:
		id := gateway.RequestID(r.Context())
		return id, id != ""
	case abi.PropPluginName:
		return ex.p.opts.Name, true
	case abi.PropIdentity:
		who := gateway.IdentityFrom(r.Context())
		if who == nil {
			return "", false
		}
		return who.UserID + "\n" + who.Role + "\n" + strings.Join(who.Scopes, " ") + "\n" +
			who.PatientID + "\n" + who.SessionID + "\n" + who.Method + "\n", true
	}
	if id >= abi.PropUser && id <= abi.PropAuthMethod {
		who := gateway.IdentityFrom(r.Context())
		if who == nil {
			return "", false
		}
		var s string
		switch id {
		case abi.PropUser:
			s = who.UserID
		case abi.PropRole:
			s = who.Role
		case abi.PropScopes:
			s = strings.Join(who.Scopes, " ")
		case abi.PropPatient:
			s = who.PatientID
		case abi.PropSession:
			s = who.SessionID
		case abi.PropAuthMethod:
			s = who.Method
		}
		return s, s != ""
	}
	if id >= abi.PropFHIRInteraction && id <= abi.PropFHIRCompartmentID {
		f, ok := ex.fhirRequest()
		if !ok {
			return "", false
		}
		var s string
		switch id {
		case abi.PropFHIRInteraction:
			s = f.Interaction
		case abi.PropFHIRType:
			s = f.Type
		case abi.PropFHIRID:
			s = f.ID
		case abi.PropFHIRVersionID:
			s = f.VersionID
		case abi.PropFHIROperation:
			s = f.Operation
		case abi.PropFHIRCompartmentType:
			s = f.CompartmentType
		case abi.PropFHIRCompartmentID:
			s = f.CompartmentID
		}
		return s, s != ""
	}
	return "", false
}

// get(prop, buf, cap) -> len | ErrAbsent
func hostGet(in *instance, mod api.Module, stack []uint64) {
	if in.ex == nil {
		if arg(stack, 0) == abi.PropPluginName {
			ret(stack, outString(mod, arg(stack, 1), arg(stack, 2), in.m.p.opts.Name))
			return
		}
		ret(stack, abi.ErrPhase)
		return
	}
	if arg(stack, 0) == abi.PropFHIRInteractions {
		// Parsing a batch's Bundle is the host's time, not the guest's.
		in.pause()
		b, code := in.ex.interactions()
		in.resume()
		if code != 0 {
			ret(stack, code)
			return
		}
		ret(stack, out(mod, arg(stack, 1), arg(stack, 2), b))
		return
	}
	s, ok := in.ex.prop(arg(stack, 0))
	if !ok {
		ret(stack, abi.ErrAbsent)
		return
	}
	ret(stack, outString(mod, arg(stack, 1), arg(stack, 2), s))
}

// headers returns the header map m, and whether the phase may change it.
func (ex *exchange) headers(m uint32) (h http.Header, writable bool, ok bool) {
	switch m {
	case abi.MapRequest:
		return ex.r.Header, ex.phase == phaseRequest, true
	case abi.MapResponse:
		if ex.phase != phaseResponse {
			return nil, false, false
		}
		return ex.w.Header(), !ex.bw.passthrough, true
	case abi.MapReply:
		if ex.replyHeader == nil {
			ex.replyHeader = http.Header{}
		}
		return ex.replyHeader, true, true
	}
	return nil, false, false
}

// values returns the values of the header named by name, canonicalizing
// only when the guest did not pass the canonical form.
func values(h http.Header, name []byte) []string {
	if v, ok := h[string(name)]; ok {
		return v
	}
	return h[textproto.CanonicalMIMEHeaderKey(string(name))]
}

// header_get(map, name, name_len, buf, cap) -> len | ErrAbsent; several
// values are joined with "\n".
func hostHeaderGet(in *instance, mod api.Module, stack []uint64) {
	if in.ex == nil {
		ret(stack, abi.ErrPhase)
		return
	}
	h, _, ok := in.ex.headers(arg(stack, 0))
	if !ok {
		ret(stack, abi.ErrPhase)
		return
	}
	name, ok := read(mod, arg(stack, 1), arg(stack, 2))
	if !ok {
		ret(stack, abi.ErrInvalid)
		return
	}
	v := values(h, name)
	switch len(v) {
	case 0:
		ret(stack, abi.ErrAbsent)
	case 1:
		ret(stack, outString(mod, arg(stack, 3), arg(stack, 4), v[0]))
	default:
		ret(stack, outString(mod, arg(stack, 3), arg(stack, 4), strings.Join(v, "\n")))
	}
}

// header_list(map, buf, cap) -> len: "Name: value\n" for every value,
// names sorted.
func hostHeaderList(in *instance, mod api.Module, stack []uint64) {
	if in.ex == nil {
		ret(stack, abi.ErrPhase)
		return
	}
	h, _, ok := in.ex.headers(arg(stack, 0))
	if !ok {
		ret(stack, abi.ErrPhase)
		return
	}
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	var b []byte
	for _, k := range names {
		for _, v := range h[k] {
			b = append(append(append(append(b, k...), ": "...), v...), '\n')
		}
	}
	ret(stack, out(mod, arg(stack, 1), arg(stack, 2), b))
}

func validHeaderName(b []byte) bool {
	if len(b) == 0 || len(b) > 256 {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

func validHeaderValue(b []byte) bool {
	for _, c := range b {
		if c == '\r' || c == '\n' || c == 0 {
			return false
		}
	}
	return true
}

// headerChange reads the (map, name, name_len[, value, value_len])
// arguments of a change and checks them.
func headerChange(in *instance, mod api.Module, stack []uint64, withValue bool) (h http.Header, name, value string, code int32) {
	if in.ex == nil {
		return nil, "", "", abi.ErrPhase
	}
	h, writable, ok := in.ex.headers(arg(stack, 0))
	if !ok || !writable {
		return nil, "", "", abi.ErrPhase
	}
	n, ok := read(mod, arg(stack, 1), arg(stack, 2))
	if !ok || !validHeaderName(n) {
		return nil, "", "", abi.ErrInvalid
	}
	if withValue {
		v, ok := read(mod, arg(stack, 3), arg(stack, 4))
		if !ok || !validHeaderValue(v) || len(v) > 8<<10 {
			return nil, "", "", abi.ErrInvalid
		}
		value = string(v)
	}
	return h, textproto.CanonicalMIMEHeaderKey(string(n)), value, 0
}

// header_set(map, name, name_len, value, value_len) -> 0 | error
func hostHeaderSet(in *instance, mod api.Module, stack []uint64) {
	h, name, value, code := headerChange(in, mod, stack, true)
	if code == 0 {
		h[name] = []string{value}
	}
	ret(stack, code)
}

// header_add(map, name, name_len, value, value_len) -> 0 | error
func hostHeaderAdd(in *instance, mod api.Module, stack []uint64) {
	h, name, value, code := headerChange(in, mod, stack, true)
	if code == 0 {
		h[name] = append(h[name], value)
	}
	ret(stack, code)
}

// header_del(map, name, name_len) -> 0 | error
func hostHeaderDel(in *instance, mod api.Module, stack []uint64) {
	h, name, _, code := headerChange(in, mod, stack, false)
	if code == 0 {
		delete(h, name)
	}
	ret(stack, code)
}

// body returns the request or response body, or an error code.
func (ex *exchange) body(which uint32) ([]byte, int32) {
	switch which {
	case abi.BodyRequest:
		switch {
		case !ex.guestBody || !ex.reqBodyRead:
			return nil, abi.ErrAbsent // the guest did not ask for it
		case ex.reqBodyErr != 0:
			return nil, ex.reqBodyErr
		}
		return ex.reqBody, 0
	case abi.BodyResponse:
		if ex.phase != phaseResponse {
			return nil, abi.ErrPhase
		}
		if ex.respTooBig {
			return nil, abi.ErrTooLarge
		}
		if enc := ex.w.Header().Get("Content-Encoding"); enc != "" && enc != "identity" {
			return nil, abi.ErrEncoded
		}
		if ex.respBody != nil {
			return ex.respBody, 0
		}
		return ex.bw.buf, 0
	}
	return nil, abi.ErrInvalid
}

// body_get(which, buf, cap) -> len | ErrAbsent | ErrTooLarge | ErrEncoded | ErrPhase
func hostBodyGet(in *instance, mod api.Module, stack []uint64) {
	if in.ex == nil {
		ret(stack, abi.ErrPhase)
		return
	}
	b, code := in.ex.body(arg(stack, 0))
	if code != 0 {
		ret(stack, code)
		return
	}
	ret(stack, out(mod, arg(stack, 1), arg(stack, 2), b))
}

// body_set(ptr, len) -> 0 | error: replaces the response body.
func hostBodySet(in *instance, mod api.Module, stack []uint64) {
	ex := in.ex
	if ex == nil || ex.phase != phaseResponse {
		ret(stack, abi.ErrPhase)
		return
	}
	if ex.respTooBig {
		ret(stack, abi.ErrTooLarge)
		return
	}
	n := arg(stack, 1)
	if int64(n) > ex.p.opts.MaxResponseBody {
		// Not read: the call fails, whatever the guest does next.
		ex.tooLarge("response body", int64(n), ex.p.opts.MaxResponseBody)
		ret(stack, abi.ErrTooLarge)
		return
	}
	b, ok := read(mod, arg(stack, 0), n)
	if !ok {
		ret(stack, abi.ErrInvalid)
		return
	}
	ex.respBody = append(make([]byte, 0, len(b)), b...)
	ex.w.Header().Del("Content-Encoding")
	ex.extractKey, ex.extractJSON = "", nil
	ret(stack, 0)
}

// status() -> the response status in the response phase, else 0.
func hostStatus(in *instance, mod api.Module, stack []uint64) {
	if in.ex == nil || in.ex.phase != phaseResponse {
		ret(stack, 0)
		return
	}
	ret(stack, int32(in.ex.bw.status))
}

// status_set(code) -> 0 | error
func hostStatusSet(in *instance, mod api.Module, stack []uint64) {
	ex := in.ex
	code := api.DecodeI32(stack[0])
	switch {
	case ex == nil || ex.phase != phaseResponse || ex.bw.passthrough:
		ret(stack, abi.ErrPhase)
	case code < 200 || code > 599:
		ret(stack, abi.ErrInvalid)
	default:
		ex.bw.status = int(code)
		ret(stack, 0)
	}
}

// reply(status, body, body_len) -> 0 | error: sets the local reply.
func hostReply(in *instance, mod api.Module, stack []uint64) {
	ex := in.ex
	code := api.DecodeI32(stack[0])
	if ex == nil {
		ret(stack, abi.ErrPhase)
		return
	}
	n := arg(stack, 2)
	if int64(n) > ex.p.opts.MaxReplyBody {
		// Not read: the call fails, whatever the guest does next.
		ex.tooLarge("reply body", int64(n), ex.p.opts.MaxReplyBody)
		ret(stack, abi.ErrTooLarge)
		return
	}
	b, ok := read(mod, arg(stack, 1), n)
	if !ok || code < 200 || code > 599 {
		ret(stack, abi.ErrInvalid)
		return
	}
	ex.replied, ex.deny, ex.replyStatus = true, false, int(code)
	ex.replyBody = append(ex.replyBody[:0], b...)
	ret(stack, 0)
}

// deny(status, msg, msg_len) -> 0 | error: sets a local error reply in the
// route's format (OperationOutcome on FHIR routes).
func hostDeny(in *instance, mod api.Module, stack []uint64) {
	ex := in.ex
	code := api.DecodeI32(stack[0])
	if ex == nil {
		ret(stack, abi.ErrPhase)
		return
	}
	b, ok := read(mod, arg(stack, 1), arg(stack, 2))
	if !ok || code < 400 || code > 599 {
		ret(stack, abi.ErrInvalid)
		return
	}
	if len(b) > maxDenyMsg {
		b = b[:maxDenyMsg]
	}
	ex.replied, ex.deny, ex.replyStatus, ex.denyMsg = true, true, int(code), string(b)
	ret(stack, 0)
}

// config(buf, cap) -> len
func hostConfig(in *instance, mod api.Module, stack []uint64) {
	ret(stack, out(mod, arg(stack, 0), arg(stack, 1), in.m.p.opts.Config))
}

var logLevels = [...]slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError}

// log(level, msg, msg_len)
func hostLog(in *instance, mod api.Module, stack []uint64) {
	level := arg(stack, 0)
	if level >= uint32(len(logLevels)) {
		level = abi.LogError
	}
	b, ok := read(mod, arg(stack, 1), arg(stack, 2))
	if !ok {
		return
	}
	if len(b) > maxLogLine {
		b = b[:maxLogLine]
	}
	msg := string(b)
	if level == abi.LogError {
		in.lastErrLog = msg
	}
	lg := in.m.p.log
	ctx := context.Background()
	if in.ex != nil {
		ctx = in.ex.r.Context()
	}
	if !lg.Enabled(ctx, logLevels[level]) || !in.m.p.logs.allow() {
		return
	}
	if in.ex != nil {
		lg.LogAttrs(ctx, logLevels[level], msg, slog.String("request_id", gateway.RequestID(ctx)))
		return
	}
	lg.LogAttrs(ctx, logLevels[level], msg)
}

// kvKey reads a guest key and namespaces it by plugin.
func kvKey(in *instance, mod api.Module, ptr, n uint32) (string, bool) {
	b, ok := read(mod, ptr, n)
	if !ok || len(b) == 0 || len(b) > maxKeyLen {
		return "", false
	}
	return "wasm:" + in.m.p.opts.Name + ":" + string(b), true
}

func (in *instance) kvError(op string, err error) int32 {
	in.m.p.metrics.kvErrors.Inc()
	if in.m.p.logs.allow() {
		in.m.p.log.Warn("wasm kv "+op+" failed", "error", err)
	}
	return abi.ErrBackend
}

// kv_get(key, key_len, buf, cap) -> len | ErrAbsent | ErrBackend
func hostKVGet(in *instance, mod api.Module, stack []uint64) {
	in.pause()
	defer in.resume()
	key, ok := kvKey(in, mod, arg(stack, 0), arg(stack, 1))
	if !ok {
		ret(stack, abi.ErrInvalid)
		return
	}
	v, found, err := in.m.p.opts.KV.Get(in.ctx, key)
	switch {
	case err != nil:
		ret(stack, in.kvError("get", err))
	case !found:
		ret(stack, abi.ErrAbsent)
	default:
		ret(stack, out(mod, arg(stack, 2), arg(stack, 3), v))
	}
}

func ttl(ms int64) time.Duration {
	if ms <= 0 {
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

// kv_set(key, key_len, value, value_len, ttl_ms i64) -> 0 | error
func hostKVSet(in *instance, mod api.Module, stack []uint64) {
	in.pause()
	defer in.resume()
	key, ok := kvKey(in, mod, arg(stack, 0), arg(stack, 1))
	v, vok := read(mod, arg(stack, 2), arg(stack, 3))
	if !ok || !vok || len(v) > maxKVValue {
		ret(stack, abi.ErrInvalid)
		return
	}
	// A copy: the guest's memory is unmapped when its instance closes, and
	// a store may keep what it is given.
	v = append(make([]byte, 0, len(v)), v...)
	if err := in.m.p.opts.KV.Set(in.ctx, key, v, ttl(int64(stack[4]))); err != nil {
		ret(stack, in.kvError("set", err))
		return
	}
	ret(stack, 0)
}

// kv_incr(key, key_len, delta i64, ttl_ms i64, out) -> 0 | error; the new
// value is written at out as a little-endian i64.
func hostKVIncr(in *instance, mod api.Module, stack []uint64) {
	in.pause()
	defer in.resume()
	key, ok := kvKey(in, mod, arg(stack, 0), arg(stack, 1))
	if !ok {
		ret(stack, abi.ErrInvalid)
		return
	}
	n, err := in.m.p.opts.KV.Incr(in.ctx, key, int64(stack[2]), ttl(int64(stack[3])))
	if err != nil {
		ret(stack, in.kvError("incr", err))
		return
	}
	if !mod.Memory().WriteUint64Le(arg(stack, 4), uint64(n)) {
		ret(stack, abi.ErrInvalid)
		return
	}
	ret(stack, 0)
}

// kv_delete(key, key_len) -> 0 | error
func hostKVDelete(in *instance, mod api.Module, stack []uint64) {
	in.pause()
	defer in.resume()
	key, ok := kvKey(in, mod, arg(stack, 0), arg(stack, 1))
	if !ok {
		ret(stack, abi.ErrInvalid)
		return
	}
	if err := in.m.p.opts.KV.Delete(in.ctx, key); err != nil {
		ret(stack, in.kvError("delete", err))
		return
	}
	ret(stack, 0)
}

func validCounterName(b []byte) bool {
	if len(b) == 0 || len(b) > maxCounterLen {
		return false
	}
	for _, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// counter_add(name, name_len, delta i64) -> 0 | error
func hostCounterAdd(in *instance, mod api.Module, stack []uint64) {
	name, ok := read(mod, arg(stack, 0), arg(stack, 1))
	delta := int64(stack[2])
	if !ok || !validCounterName(name) || delta < 0 {
		ret(stack, abi.ErrInvalid)
		return
	}
	c := in.m.p.metrics.counter(name)
	if c == nil {
		ret(stack, abi.ErrInvalid)
		return
	}
	c.Add(float64(delta))
	ret(stack, 0)
}

// now() -> unix nanoseconds
func hostNow(in *instance, mod api.Module, stack []uint64) {
	stack[0] = uint64(in.m.p.opts.Now().UnixNano())
}

// fieldList reads a "\n"-separated list of element names.
func fieldList(mod api.Module, ptr, n uint32) ([]string, bool) {
	b, ok := read(mod, ptr, n)
	if !ok || len(b) == 0 {
		return nil, false
	}
	fields := strings.Split(string(b), "\n")
	for _, f := range fields {
		if f == "" {
			return nil, false
		}
	}
	return fields, true
}

// json_mask(fields, fields_len, replacement, replacement_len) -> count | error:
// replaces (or, with an empty replacement, removes) the named elements of
// the response's resource, or of every resource of a Bundle.
func hostJSONMask(in *instance, mod api.Module, stack []uint64) {
	in.pause()
	defer in.resume()
	ex := in.ex
	if ex == nil || ex.phase != phaseResponse {
		ret(stack, abi.ErrPhase)
		return
	}
	body, code := ex.body(abi.BodyResponse)
	if code != 0 {
		ret(stack, code)
		return
	}
	fields, ok := fieldList(mod, arg(stack, 0), arg(stack, 1))
	repl, rok := read(mod, arg(stack, 2), arg(stack, 3))
	if !ok || !rok {
		ret(stack, abi.ErrInvalid)
		return
	}
	masked, n, err := fhirjson.Mask(body, fields, repl)
	if err != nil {
		ret(stack, abi.ErrInvalid)
		return
	}
	if n > 0 {
		ex.respBody = masked
		ex.extractKey, ex.extractJSON = "", nil
	}
	ret(stack, int32(n))
}

// json_extract(which, fields, fields_len, buf, cap) -> len | error: a JSON
// array with, for the body's resource or each resource of a Bundle, an
// object of its resourceType, id and the named elements.
func hostJSONExtract(in *instance, mod api.Module, stack []uint64) {
	in.pause()
	defer in.resume()
	ex := in.ex
	if ex == nil {
		ret(stack, abi.ErrPhase)
		return
	}
	which := arg(stack, 0)
	body, code := ex.body(which)
	if code != 0 {
		ret(stack, code)
		return
	}
	fb, ok := read(mod, arg(stack, 1), arg(stack, 2))
	if !ok {
		ret(stack, abi.ErrInvalid)
		return
	}
	key := strconv.Itoa(int(which)) + "\x00" + string(fb)
	if ex.extractKey != key {
		fields, ok := fieldList(mod, arg(stack, 1), arg(stack, 2))
		if !ok && len(fb) > 0 {
			ret(stack, abi.ErrInvalid)
			return
		}
		res, err := fhirjson.Extract(body, fields)
		if err != nil {
			ret(stack, abi.ErrInvalid)
			return
		}
		ex.extractKey, ex.extractJSON = key, res
	}
	ret(stack, out(mod, arg(stack, 3), arg(stack, 4), ex.extractJSON))
}
