package audit

import "time"

// clock tells the time and runs functions later. The plugin reads every
// time through one (record times, flushes, backoff, shipping lag), so that
// tests can move time by hand.
type clock interface {
	// Now returns the current time.
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed; stop
	// cancels the call and reports whether it did so before f ran.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// systemClock is the clock of the machine.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// sleep waits d on c, or until done is closed; it reports whether d passed.
func sleep(c clock, d time.Duration, done <-chan struct{}) bool {
	ch := make(chan struct{})
	stop := c.AfterFunc(d, func() { close(ch) })
	select {
	case <-ch:
		return true
	case <-done:
		stop()
		return false
	}
}
