package wasm

import (
	"sync"
	"time"
)

// Breaker states, as the omnigate_wasm_breaker_state gauge shows them.
const (
	breakerClosed   = 0 // calls go to the guest
	breakerOpen     = 1 // calls fail fast until the open time is over
	breakerHalfOpen = 2 // one probe call goes to the guest
)

// outcome is what a request did to the plugin's health.
type outcome int

const (
	// neutral: nothing the guest did (no free instance, the client went
	// away): neither a success nor a failure.
	neutral outcome = iota
	success
	failure
)

// breaker is a plugin's circuit breaker: after threshold consecutive
// failed requests it opens, and requests fail fast without calling the
// guest; after openFor it lets one probe through (half-open), whose success
// closes it and whose failure opens it again. Requests admitted before a
// change of state do not count after it.
type breaker struct {
	threshold int // 0: never opens
	openFor   time.Duration
	clock     Clock
	onChange  func(state int, failures int)

	mu       sync.Mutex
	state    int
	failures int       // consecutive, while closed
	until    time.Time // end of the open time
	probing  bool      // a probe is in flight (half-open)
	gen      uint64    // bumped at every change of state
}

// ticket is a request's admission: which generation admitted it, and
// whether it is the half-open probe.
type ticket struct {
	gen   uint64
	probe bool
}

// allow admits a request, or reports how long until the breaker lets one
// through.
func (b *breaker) allow() (ticket, time.Duration, bool) {
	if b.threshold <= 0 {
		return ticket{}, 0, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerClosed:
		return ticket{gen: b.gen}, 0, true
	case breakerOpen:
		if wait := b.until.Sub(b.clock.Now()); wait > 0 {
			return ticket{}, wait, false
		}
		b.set(breakerHalfOpen)
	}
	if b.probing {
		return ticket{}, time.Second, false
	}
	b.probing = true
	return ticket{gen: b.gen, probe: true}, 0, true
}

// done records what an admitted request did.
func (b *breaker) done(t ticket, o outcome) {
	if b.threshold <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.gen != b.gen {
		return // admitted before the last change of state
	}
	switch {
	case t.probe && o == success:
		b.failures = 0
		b.set(breakerClosed)
	case t.probe && o == failure:
		b.open()
	case t.probe:
		b.probing = false // let another request probe
	case o == success:
		b.failures = 0
	case o == failure:
		if b.failures++; b.failures >= b.threshold {
			b.open()
		}
	}
}

// reset closes the breaker: a new module replaced the failing one.
func (b *breaker) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures = 0
	if b.state != breakerClosed {
		b.set(breakerClosed)
	}
}

func (b *breaker) open() {
	b.until = b.clock.Now().Add(b.openFor)
	b.set(breakerOpen)
}

// set changes the state; the caller holds mu.
func (b *breaker) set(state int) {
	b.state, b.probing = state, false
	b.gen++
	if b.onChange != nil {
		b.onChange(state, b.failures)
	}
}

// snapshot returns the state and the end of the open time.
func (b *breaker) snapshot() (int, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state, b.until
}
