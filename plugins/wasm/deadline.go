package wasm

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/tetratelabs/wazero/api"
)

// errDeadline marks a call cut at its CPU budget or its wall-clock
// backstop.
var errDeadline = errors.New("deadline exceeded")

// deadline is the watchdog of an instance's running call. The call locks
// its goroutine to its OS thread, so that all of its CPU time is on that
// thread's CPU clock; the instance's timer first fires when the call has
// run for its budget in wall-clock time (no call can use more CPU than
// that) and then compares the CPU the thread used with the budget: over it,
// or past the wall-clock backstop, it cancels the instance's context and
// wazero stops the guest; under it, it fires again when the rest of the
// budget could at the soonest be used. So a call that waits (descheduled
// on a busy machine, or in a host call that blocks) is charged nothing for
// the wait, and a guest that loops is stopped within a granule of its
// budget. The fast path costs a thread lock, two system calls (the thread
// id and its CPU clock) and the timer's Reset and Stop. The clock is read
// at the start, not first by the timer: under load the timer itself runs
// late, and the wall-clock time before its first reading could not be told
// from CPU time.
type deadline struct {
	mu       sync.Mutex
	running  bool
	killed   string // why the call was stopped, "" while it was not
	paused   bool   // in a host function whose time is not charged
	longWait bool   // the timer waits for the backstop only (while paused)
	clock    threadCPUClock
	base     time.Duration // charged clock at the start or the last resume
	used     time.Duration // charged time before the last pause
	start    time.Time
	budget   time.Duration
	wall     time.Duration
}

// charged reads the clock the budget is charged on: the thread's CPU
// clock, or wall-clock time where there is none.
func (d *deadline) charged() time.Duration {
	if cpuClocks {
		if c := d.clock.now(); c >= 0 {
			return c
		}
	}
	return time.Since(processStart)
}

var processStart = time.Now()

// granule is how often a call over its budget in wall-clock time, but not
// yet in CPU time, is checked again: a tenth of the budget, between 100µs
// and 1ms.
func granule(budget time.Duration) time.Duration {
	return min(max(budget/10, 100*time.Microsecond), time.Millisecond)
}

// call runs fn with a CPU budget and a wall-clock backstop and returns its
// i32 result. After an error the instance must be discarded.
func (in *instance) call(fn api.Function, budget, wall time.Duration) (uint32, error) {
	runtime.LockOSThread()
	d := &in.deadline
	d.mu.Lock()
	d.running, d.killed, d.paused, d.longWait = true, "", false, false
	d.budget, d.wall, d.used = budget, wall, 0
	if cpuClocks {
		d.clock = currentThreadCPUClock()
	}
	d.base = d.charged()
	d.start = time.Now()
	d.mu.Unlock()
	in.timer.Reset(min(budget, wall))
	err := in.callGuest(fn)
	d.mu.Lock()
	killed := d.killed
	d.mu.Unlock()
	if killed != "" {
		if err == nil {
			err = errDeadline
		}
		return 0, fmt.Errorf("%w (%s): %w", errDeadline, killed, err)
	}
	if err != nil {
		return 0, err
	}
	return uint32(in.stack[0]), nil
}

// callGuest calls fn and ends the watch of the call, even when the call
// panics.
func (in *instance) callGuest(fn api.Function) error {
	defer func() {
		d := &in.deadline
		d.mu.Lock()
		d.running = false
		d.mu.Unlock()
		in.timer.Stop()
		runtime.UnlockOSThread()
	}()
	return fn.CallWithStack(in.ctx, in.stack[:])
}

// check is the instance's timer: it stops the running call when it is
// over its budget or its backstop, and otherwise sets the timer again.
func (in *instance) check() {
	d := &in.deadline
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.running || d.killed != "" {
		return
	}
	elapsed := time.Since(d.start)
	used := d.used
	if !d.paused {
		used += d.charged() - d.base
	}
	switch {
	case elapsed >= d.wall:
		d.killed = fmt.Sprintf("over the wall-clock backstop of %s", d.wall)
	case used >= d.budget:
		d.killed = fmt.Sprintf("over the CPU budget of %s", d.budget)
	default:
		next := max(d.budget-used, granule(d.budget))
		d.longWait = d.paused
		if d.paused {
			next = d.wall - elapsed // nothing is charged until resume
		}
		in.timer.Reset(min(next, d.wall-elapsed))
		return
	}
	in.cancel()
}

// pause stops charging the call while the host works for the guest (JSON
// rewriting, KV round trips, parsing a batch): the budget is the guest's.
// The wall-clock backstop still runs.
func (in *instance) pause() {
	d := &in.deadline
	d.mu.Lock()
	if d.running && !d.paused {
		d.used += d.charged() - d.base
		d.paused = true
	}
	d.mu.Unlock()
}

// resume charges the call again.
func (in *instance) resume() {
	d := &in.deadline
	d.mu.Lock()
	if d.paused {
		d.paused = false
		d.base = d.charged()
		if d.longWait {
			// The timer was set for the backstop while paused: bring it
			// back to the budget.
			d.longWait = false
			left := d.wall - time.Since(d.start)
			in.timer.Reset(max(min(max(d.budget-d.used, granule(d.budget)), left), 0))
		}
	}
	d.mu.Unlock()
}
