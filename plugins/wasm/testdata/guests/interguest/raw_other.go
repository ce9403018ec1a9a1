//go:build !wasm

package main

// rawGet has no host outside a wasm guest.
func rawGet(uint32) ([]byte, int32) { return nil, -5 }
