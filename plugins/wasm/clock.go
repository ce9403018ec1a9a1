package wasm

import (
	"math"
	"time"
)

// Clock tells the time and runs functions later. The host reads the time of
// its own decisions through one: the circuit breaker, the rate of instance
// restarts and the rate of log lines (never the per-call deadline, which
// is measured on the thread's CPU clock). Tests move a Clock by hand.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed; stop
	// cancels the call and reports whether it did so before f ran.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// systemClock is the machine's clock.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// bucket is a token bucket: up to burst tokens, refilled at rate per
// second. It is not safe for concurrent use; its owner locks.
type bucket struct {
	rate   float64 // tokens per second; +Inf: no limit
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate float64, burst int, now time.Time) bucket {
	return bucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

// take takes a token and returns 0, or, when none is left, takes nothing
// and returns how long until one is.
func (b *bucket) take(now time.Time) time.Duration {
	if math.IsInf(b.rate, 1) {
		return 0
	}
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = min(b.burst, b.tokens+elapsed.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	wait := time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
	return max(wait, time.Millisecond)
}
