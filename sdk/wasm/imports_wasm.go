//go:build wasm

package wasm

import (
	"unsafe"

	"github.com/omnigate/omnigate/sdk/wasm/abi"
)

// The host functions of ABI v1 (ABI.md).

//go:wasmimport omnigate get
func hostGet(prop uint32, buf unsafe.Pointer, capacity uint32) int32

//go:wasmimport omnigate header_get
func hostHeaderGet(m uint32, name unsafe.Pointer, nameLen uint32, buf unsafe.Pointer, capacity uint32) int32

//go:wasmimport omnigate header_list
func hostHeaderList(m uint32, buf unsafe.Pointer, capacity uint32) int32

//go:wasmimport omnigate header_set
func hostHeaderSet(m uint32, name unsafe.Pointer, nameLen uint32, val unsafe.Pointer, valLen uint32) int32

//go:wasmimport omnigate header_add
func hostHeaderAdd(m uint32, name unsafe.Pointer, nameLen uint32, val unsafe.Pointer, valLen uint32) int32

//go:wasmimport omnigate header_del
func hostHeaderDel(m uint32, name unsafe.Pointer, nameLen uint32) int32

//go:wasmimport omnigate body_get
func hostBodyGet(which uint32, buf unsafe.Pointer, capacity uint32) int32

//go:wasmimport omnigate body_set
func hostBodySet(buf unsafe.Pointer, n uint32) int32

//go:wasmimport omnigate status
func hostStatus() int32

//go:wasmimport omnigate status_set
func hostStatusSet(code int32) int32

//go:wasmimport omnigate reply
func hostReply(status int32, body unsafe.Pointer, n uint32) int32

//go:wasmimport omnigate deny
func hostDeny(status int32, msg unsafe.Pointer, n uint32) int32

//go:wasmimport omnigate config
func hostConfig(buf unsafe.Pointer, capacity uint32) int32

//go:wasmimport omnigate log
func hostLog(level uint32, msg unsafe.Pointer, n uint32)

//go:wasmimport omnigate kv_get
func hostKVGet(key unsafe.Pointer, keyLen uint32, buf unsafe.Pointer, capacity uint32) int32

//go:wasmimport omnigate kv_set
func hostKVSet(key unsafe.Pointer, keyLen uint32, val unsafe.Pointer, valLen uint32, ttlMillis int64) int32

//go:wasmimport omnigate kv_incr
func hostKVIncr(key unsafe.Pointer, keyLen uint32, delta int64, ttlMillis int64, out unsafe.Pointer) int32

//go:wasmimport omnigate kv_delete
func hostKVDelete(key unsafe.Pointer, keyLen uint32) int32

//go:wasmimport omnigate counter_add
func hostCounterAdd(name unsafe.Pointer, n uint32, delta int64) int32

//go:wasmimport omnigate now
func hostNow() int64

//go:wasmimport omnigate json_mask
func hostJSONMask(fields unsafe.Pointer, fieldsLen uint32, repl unsafe.Pointer, replLen uint32) int32

//go:wasmimport omnigate json_extract
func hostJSONExtract(which uint32, fields unsafe.Pointer, fieldsLen uint32, buf unsafe.Pointer, capacity uint32) int32

// The module's exports.

//go:wasmexport omnigate_abi_version
func exportVersion() int32 { return abi.Version }

//go:wasmexport omnigate_start
func exportStart() int32 { return start() }

//go:wasmexport omnigate_on_request
func exportOnRequest() int32 { return onRequest() }

//go:wasmexport omnigate_on_response
func exportOnResponse() int32 { return onResponse() }
