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

// deadline is the watchdog of an instance's running call.
//
// The call locks its goroutine to its OS thread, so that all of its CPU
// time is on that thread's CPU clock, and publishes the thread's id. The
// instance's timer first fires a granule into the call (a tenth of the
// budget, at most 1ms; most calls are over long before). Then it reads the
// thread's CPU clock, which it does not know the value of at the start: the
// granule of wall-clock time before is charged whole, as if the call had
// run all of it, and from then on the call is charged the CPU time the
// thread uses. Over the budget, or past the wall-clock backstop, the timer
// cancels the instance's context and wazero stops the guest; under it, it
// fires again when the rest of the budget could at the soonest be used. So
// a call that waits (descheduled on a busy machine, or in a host call that
// blocks) is charged at most a granule for the wait, and a guest that loops
// is stopped within a granule of its budget. The time the host works for
// the guest (pause, resume) is not charged; a charged stretch that starts
// after it is charged as the call's start is.
//
// The fast path (a call shorter than a granule) costs a thread lock, one
// system call (the thread's id) and the timer's Reset and Stop; the CPU
// clock, a costlier system call, is read only by the timer.
type deadline struct {
	mu      sync.Mutex
	running bool
	killed  string // why the call was stopped, "" while it was not
	paused  bool   // in a host function whose time is not charged
	clock   threadCPUClock
	start   time.Time     // of the call
	used    time.Duration // charged in the stretches before this one
	budget  time.Duration
	wall    time.Duration

	// The running stretch of charged time: since when, and, once the
	// timer has read the thread's CPU clock in it, that reading and the
	// time charged before it.
	stretch  time.Time
	measured bool
	cpu      time.Duration
	before   time.Duration
}

// granule is how soon the timer first looks at a call, and how often it
// looks again at a call over its budget in wall-clock time but not yet in
// CPU time: a tenth of the budget, between 100µs and 1ms.
func granule(budget time.Duration) time.Duration {
	return min(max(budget/10, 100*time.Microsecond), time.Millisecond)
}

// call runs fn with a CPU budget and a wall-clock backstop and returns its
// i32 result. After an error the instance must be discarded.
func (in *instance) call(fn api.Function, budget, wall time.Duration) (uint32, error) {
	runtime.LockOSThread()
	d := &in.deadline
	now := time.Now()
	d.mu.Lock()
	d.running, d.killed, d.paused = true, "", false
	d.budget, d.wall, d.used = budget, wall, 0
	if cpuClocks {
		d.clock = currentThreadCPUClock()
	}
	d.start = now
	d.startStretch(now)
	d.mu.Unlock()
	in.timer.Reset(min(granule(budget), wall))
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

// startStretch starts a stretch of charged time; the caller holds mu.
func (d *deadline) startStretch(now time.Time) {
	d.stretch, d.measured = now, false
}

// stretchCharge is what the running stretch has cost so far; the caller
// holds mu. It reads the thread's CPU clock, except where the thread has
// none that another can read (then the stretch's wall-clock time counts).
func (d *deadline) stretchCharge(now time.Time) time.Duration {
	if !cpuClocks {
		return now.Sub(d.stretch)
	}
	c := d.clock.now()
	if c < 0 {
		return now.Sub(d.stretch) // the thread is gone: cannot happen while locked
	}
	if !d.measured {
		d.measured, d.cpu, d.before = true, c, now.Sub(d.stretch)
	}
	return d.before + c - d.cpu
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
	now := time.Now()
	elapsed := now.Sub(d.start)
	if elapsed >= d.wall {
		d.killed = fmt.Sprintf("over the wall-clock backstop of %s", d.wall)
		in.cancel()
		return
	}
	if d.paused {
		// Nothing is charged until resume, which sets the timer again.
		in.timer.Reset(d.wall - elapsed)
		return
	}
	used := d.used + d.stretchCharge(now)
	if used >= d.budget {
		d.killed = fmt.Sprintf("over the CPU budget of %s", d.budget)
		in.cancel()
		return
	}
	in.timer.Reset(min(max(d.budget-used, granule(d.budget)), d.wall-elapsed))
}

// pause stops charging the call while the host works for the guest (JSON
// rewriting, KV round trips, parsing a batch): the budget is the guest's.
// The wall-clock backstop still runs. Before the timer has read the CPU
// clock, the stretch's wall-clock time is charged, without a system call.
func (in *instance) pause() {
	d := &in.deadline
	d.mu.Lock()
	if d.running && !d.paused {
		now := time.Now()
		if d.measured {
			d.used += d.stretchCharge(now)
		} else {
			d.used += now.Sub(d.stretch)
		}
		d.paused = true
	}
	d.mu.Unlock()
}

// resume charges the call again, from a new stretch, which the timer
// looks at a granule later.
func (in *instance) resume() {
	d := &in.deadline
	d.mu.Lock()
	if d.paused {
		d.paused = false
		now := time.Now()
		d.startStretch(now)
		in.timer.Reset(max(min(granule(d.budget), d.wall-now.Sub(d.start)), 0))
	}
	d.mu.Unlock()
}
