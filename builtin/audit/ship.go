package audit

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// shipper reads the spool from its sink's cursor and writes the records to
// the sink in batches, retrying a failing sink with exponential backoff
// and jitter. The cursor is saved after each batch the sink took: after a
// crash the records since the last saved cursor are written again (at
// least once).
type shipper struct {
	p        *pipeline
	cfg      SinkConfig
	sink     sink
	batch    int
	retryMin time.Duration
	retryMax time.Duration
	log      *slog.Logger
	ctr      sinkCounters

	ctx    context.Context
	cancel context.CancelFunc
	stop   chan struct{} // closed: leave now
	drain  chan struct{} // closed: leave once caught up, or at the first failure
	done   chan struct{}

	mu          sync.Mutex
	pos         position
	shipped     int64
	rejected    int64
	failures    int64
	consecutive int
	lastErr     string
	lastErrAt   time.Time
	failingAt   time.Time // first failure of the current run of failures
	nextRetry   time.Time
	oldest      time.Time // time of the oldest record not yet shipped; zero when caught up
}

// newShipper returns the shipper of sink s, at its saved cursor.
func newShipper(p *pipeline, sc SinkConfig, s sink, cfg *Config) *shipper {
	ctx, cancel := context.WithCancel(context.Background())
	sh := &shipper{p: p, cfg: sc, sink: s, batch: cfg.BatchSize, retryMin: cfg.RetryMin, retryMax: cfg.RetryMax,
		log: p.log.With("sink", sc.Name), ctr: p.m.sink(p.name, sc.Name),
		ctx: ctx, cancel: cancel, stop: make(chan struct{}), drain: make(chan struct{}), done: make(chan struct{})}
	pos, err := loadCursor(p.spool.dir, sc.Name)
	if err != nil {
		sh.log.Warn("audit: cursor unreadable; shipping from the oldest segment", "error", err)
	}
	sh.pos = pos
	return sh
}

// start runs the shipper in its own goroutine.
func (sh *shipper) start() { go sh.run() }

func (sh *shipper) position() position {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.pos
}

// backoff returns the wait before the attempt after attempt failures:
// retryMin doubled per failure up to retryMax, drawn uniformly from its
// upper half (jitter, so that instances do not retry in step).
func (sh *shipper) backoff(failures int) time.Duration {
	d := sh.retryMax
	if failures < 32 {
		if x := sh.retryMin << (failures - 1); x > 0 && x < d {
			d = x
		}
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(d-half)+1))
}

func (sh *shipper) run() {
	defer close(sh.done)
	clk := sh.p.clock
	failures := 0
	var rbuf []byte // the lines of a batch point into it
	for {
		changed := sh.p.spool.wait() // before reading: no flush is missed
		pos := sh.position()
		lines, next, err := sh.p.spool.read(pos, sh.batch, &rbuf)
		if err == nil && len(lines) == 0 {
			sh.mu.Lock()
			sh.pos, sh.oldest = next, time.Time{}
			sh.mu.Unlock()
			select {
			case <-changed:
				continue
			case <-sh.drain:
				return
			case <-sh.stop:
				return
			}
		}
		if err == nil {
			sh.mu.Lock()
			if sh.oldest.IsZero() {
				sh.oldest = recordedTime(lines[0])
			}
			sh.mu.Unlock()
			var rejected int
			rejected, err = sh.sink.write(sh.ctx, lines)
			if err == nil {
				failures = 0
				if err := saveCursor(sh.p.spool.dir, sh.cfg.Name, next); err != nil {
					sh.log.Warn("audit: cursor not saved; records will be shipped again after a restart", "error", err)
				}
				sh.mu.Lock()
				sh.pos, sh.oldest = next, time.Time{}
				sh.shipped += int64(len(lines) - rejected)
				sh.rejected += int64(rejected)
				sh.consecutive = 0
				sh.mu.Unlock()
				sh.ctr.written.Add(float64(len(lines) - rejected))
				sh.ctr.rejected.Add(float64(rejected))
				sh.p.gc()
				continue
			}
		}
		failures++
		d := sh.backoff(failures)
		now := clk.Now()
		sh.mu.Lock()
		sh.failures++
		sh.consecutive = failures
		if failures == 1 {
			sh.failingAt = now
		}
		sh.lastErr, sh.lastErrAt, sh.nextRetry = err.Error(), now, now.Add(d)
		sh.mu.Unlock()
		sh.ctr.failures.Inc()
		if failures == 1 || failures%10 == 0 {
			sh.log.Warn("audit: sink failed; retrying with backoff", "error", err, "failures", failures, "retry_in", d.String())
		}
		select {
		case <-sh.drain:
			return
		default:
		}
		if !sleepOr(clk, d, sh.stop, sh.drain) {
			select {
			case <-sh.stop:
				return
			default: // draining: one more attempt at once
			}
		}
	}
}

// sleepOr waits d on c, or until one of the channels is closed; it
// reports whether d passed.
func sleepOr(c clock, d time.Duration, a, b <-chan struct{}) bool {
	ch := make(chan struct{})
	stop := c.AfterFunc(d, func() { close(ch) })
	select {
	case <-ch:
		return true
	case <-a:
	case <-b:
	}
	stop()
	return false
}

// halt stops the shipper at once and waits for it.
func (sh *shipper) halt() {
	select {
	case <-sh.stop:
	default:
		close(sh.stop)
	}
	sh.cancel()
	<-sh.done
	sh.sink.close()
}

// sinkState is one sink in the stats.
type sinkState struct {
	Name                string    `json:"name"`
	Type                string    `json:"type"`
	Shipped             int64     `json:"shipped"`
	Rejected            int64     `json:"rejected"`
	Failures            int64     `json:"failures"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	Failing             bool      `json:"failing"`
	LastError           string    `json:"last_error,omitempty"`
	LastErrorAt         time.Time `json:"last_error_at,omitzero"`
	FailingSince        time.Time `json:"failing_since,omitzero"`
	NextRetry           time.Time `json:"next_retry,omitzero"`
	BehindBytes         int64     `json:"behind_bytes"`
	LagSeconds          float64   `json:"lag_seconds"`
	Cursor              position  `json:"cursor"`
}

func (sh *shipper) state(now time.Time) sinkState {
	sh.mu.Lock()
	st := sinkState{Name: sh.cfg.Name, Type: sh.cfg.Type, Shipped: sh.shipped, Rejected: sh.rejected, Failures: sh.failures,
		ConsecutiveFailures: sh.consecutive, Failing: sh.consecutive > 0, Cursor: sh.pos}
	if st.Failing {
		st.LastError, st.LastErrorAt, st.NextRetry, st.FailingSince = sh.lastErr, sh.lastErrAt, sh.nextRetry, sh.failingAt
	}
	oldest := sh.oldest
	sh.mu.Unlock()
	st.BehindBytes = sh.p.spool.behind(st.Cursor)
	if !oldest.IsZero() && now.After(oldest) {
		st.LagSeconds = now.Sub(oldest).Seconds()
	}
	return st
}
