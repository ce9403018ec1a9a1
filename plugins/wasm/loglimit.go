package wasm

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// logSummaryDelay is how long after the first dropped line the count of
// dropped lines is logged when no line is logged before.
const logSummaryDelay = time.Second

// logLimiter bounds the log lines of one plugin, the guest's (stdout,
// stderr, the log function) and the host's about it (failed calls,
// instances that do not start), with a token bucket. What it drops is
// counted, and the count is logged as one record before the next line
// that passes, or a second after the first drop.
type logLimiter struct {
	log     *slog.Logger
	clock   Clock
	dropped prometheus.Counter

	mu      sync.Mutex
	b       bucket
	n       int64       // dropped since the last summary
	pending func() bool // stops the summary's timer
}

func newLogLimiter(log *slog.Logger, clock Clock, rate float64, burst int, dropped prometheus.Counter) *logLimiter {
	return &logLimiter{log: log, clock: clock, dropped: dropped, b: newBucket(rate, burst, clock.Now())}
}

// allow reports whether one more line may be logged; when lines were
// dropped before it, their count is logged first.
func (l *logLimiter) allow() bool {
	l.mu.Lock()
	if l.b.take(l.clock.Now()) > 0 {
		l.n++
		if l.pending == nil {
			l.pending = l.clock.AfterFunc(logSummaryDelay, l.summarize)
		}
		l.mu.Unlock()
		l.dropped.Inc()
		return false
	}
	n := l.take()
	l.mu.Unlock()
	l.report(n)
	return true
}

// take returns the count of dropped lines and starts a new one; the caller
// holds mu.
func (l *logLimiter) take() int64 {
	n := l.n
	l.n = 0
	if l.pending != nil {
		l.pending()
		l.pending = nil
	}
	return n
}

// summarize logs the count of dropped lines, from the summary's timer.
func (l *logLimiter) summarize() {
	l.mu.Lock()
	l.pending = nil
	n := l.n
	l.n = 0
	l.mu.Unlock()
	l.report(n)
}

// flush logs the count of dropped lines now (when the plugin closes).
func (l *logLimiter) flush() {
	l.mu.Lock()
	n := l.take()
	l.mu.Unlock()
	l.report(n)
}

func (l *logLimiter) report(n int64) {
	if n > 0 {
		l.log.LogAttrs(context.Background(), slog.LevelWarn, "wasm plugin log lines dropped: over the plugin's log rate",
			slog.Int64("dropped", n))
	}
}
