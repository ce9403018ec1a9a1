package wasm

import (
	"time"

	"golang.org/x/sys/unix"
)

// threadCPUClock is the CPU-time clock of one OS thread, readable from any
// thread of the process (clock_gettime on the clock id that glibc's
// pthread_getcpuclockid computes: CPUCLOCK_SCHED, per thread).
type threadCPUClock int32

// cpuClocks reports whether the thread CPU clocks work here.
const cpuClocks = true

// currentThreadCPUClock returns the clock of the calling thread; the
// caller has locked its goroutine to the thread.
func currentThreadCPUClock() threadCPUClock {
	tid := uint32(unix.Gettid())
	return threadCPUClock(int32(^tid<<3 | 6)) // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)
}

// now returns the CPU time the thread has used, or -1 when it cannot be
// read (the thread is gone).
func (c threadCPUClock) now() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(c), &ts); err != nil {
		return -1
	}
	return time.Duration(ts.Nano())
}
