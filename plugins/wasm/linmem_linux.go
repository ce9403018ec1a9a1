package wasm

import (
	"github.com/tetratelabs/wazero/experimental"
	"golang.org/x/sys/unix"
)

// mmapAllocator backs each instance's linear memory with its own anonymous
// mapping, outside the Go heap: the instance's maximum is reserved at once
// (address space only; a page costs memory when the guest first touches
// it), growing never copies, and closing the instance unmaps it, so its
// memory goes back to the system at once rather than to the Go heap.
// Without it, every growth of a guest's memory copies it into a new Go
// slice and leaves the old one to the garbage collector, and the heap of a
// process whose instances keep failing and restarting grows far past what
// the instances hold.
var mmapAllocator experimental.MemoryAllocator = experimental.MemoryAllocatorFunc(allocateMapped)

type mappedMemory struct {
	buf    []byte
	mapped bool
}

func allocateMapped(_, max uint64) experimental.LinearMemory {
	if max > 0 && max <= 4<<30 {
		buf, err := unix.Mmap(-1, 0, int(max), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err == nil {
			return &mappedMemory{buf: buf, mapped: true}
		}
	}
	// No mapping (no address space left): a Go slice of the maximum's
	// capacity, which does not move either.
	return &mappedMemory{buf: make([]byte, max)}
}

// Reallocate returns the first size bytes of the mapping; pages past the
// old size were never written, so they read as zero, as wasm requires.
func (m *mappedMemory) Reallocate(size uint64) []byte {
	if m.buf == nil || size > uint64(len(m.buf)) {
		return nil
	}
	return m.buf[:size]
}

// Free unmaps the memory; wazero calls it once the instance is closed and
// no guest code runs in it.
func (m *mappedMemory) Free() {
	if m.mapped && m.buf != nil {
		unix.Munmap(m.buf)
	}
	m.buf = nil
}
