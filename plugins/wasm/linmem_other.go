//go:build !linux

package wasm

import "github.com/tetratelabs/wazero/experimental"

// mmapAllocator is nil where the host does not map linear memory itself:
// wazero keeps it in the Go heap.
var mmapAllocator experimental.MemoryAllocator
