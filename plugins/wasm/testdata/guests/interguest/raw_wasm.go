//go:build wasm

package main

import "unsafe"

//go:wasmimport omnigate get
func hostGet(prop uint32, buf unsafe.Pointer, capacity uint32) int32

// rawGet returns a property's bytes as the host writes them, or its
// negative result.
func rawGet(prop uint32) ([]byte, int32) {
	buf := make([]byte, 64)
	for {
		n := hostGet(prop, unsafe.Pointer(&buf[0]), uint32(len(buf)))
		if n < 0 {
			return nil, n
		}
		if int(n) <= len(buf) {
			return buf[:n], 0
		}
		buf = make([]byte, n)
	}
}
