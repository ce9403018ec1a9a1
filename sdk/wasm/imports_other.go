//go:build !wasm

package wasm

import (
	"unsafe"

	"github.com/omnigate/omnigate/sdk/wasm/abi"
)

// Outside a wasm guest there is no host: every host function reports
// ErrPhase, so that code using the SDK compiles (and vets) on any platform.
// Plugins are tested by building them for wasip1 and running them in the
// real host with sdk/wasmtest.

func hostGet(uint32, unsafe.Pointer, uint32) int32 { return abi.ErrPhase }
func hostHeaderGet(uint32, unsafe.Pointer, uint32, unsafe.Pointer, uint32) int32 {
	return abi.ErrPhase
}
func hostHeaderList(uint32, unsafe.Pointer, uint32) int32 { return abi.ErrPhase }
func hostHeaderSet(uint32, unsafe.Pointer, uint32, unsafe.Pointer, uint32) int32 {
	return abi.ErrPhase
}
func hostHeaderAdd(uint32, unsafe.Pointer, uint32, unsafe.Pointer, uint32) int32 {
	return abi.ErrPhase
}
func hostHeaderDel(uint32, unsafe.Pointer, uint32) int32 { return abi.ErrPhase }
func hostBodyGet(uint32, unsafe.Pointer, uint32) int32   { return abi.ErrPhase }
func hostBodySet(unsafe.Pointer, uint32) int32           { return abi.ErrPhase }
func hostStatus() int32                                  { return 0 }
func hostStatusSet(int32) int32                          { return abi.ErrPhase }
func hostReply(int32, unsafe.Pointer, uint32) int32      { return abi.ErrPhase }
func hostDeny(int32, unsafe.Pointer, uint32) int32       { return abi.ErrPhase }
func hostConfig(unsafe.Pointer, uint32) int32            { return abi.ErrPhase }
func hostLog(uint32, unsafe.Pointer, uint32)             {}
func hostKVGet(unsafe.Pointer, uint32, unsafe.Pointer, uint32) int32 {
	return abi.ErrPhase
}
func hostKVSet(unsafe.Pointer, uint32, unsafe.Pointer, uint32, int64) int32 {
	return abi.ErrPhase
}
func hostKVIncr(unsafe.Pointer, uint32, int64, int64, unsafe.Pointer) int32 {
	return abi.ErrPhase
}
func hostKVDelete(unsafe.Pointer, uint32) int32          { return abi.ErrPhase }
func hostCounterAdd(unsafe.Pointer, uint32, int64) int32 { return abi.ErrPhase }
func hostNow() int64                                     { return 0 }
func hostJSONMask(unsafe.Pointer, uint32, unsafe.Pointer, uint32) int32 {
	return abi.ErrPhase
}
func hostJSONExtract(uint32, unsafe.Pointer, uint32, unsafe.Pointer, uint32) int32 {
	return abi.ErrPhase
}
