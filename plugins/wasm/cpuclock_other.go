//go:build !linux

package wasm

import "time"

// threadCPUClock stands in for a thread's CPU-time clock where there is
// none to read: the deadline falls back to wall-clock time.
type threadCPUClock int32

const cpuClocks = false

func currentThreadCPUClock() threadCPUClock { return 0 }

func (threadCPUClock) now() time.Duration { return -1 }
