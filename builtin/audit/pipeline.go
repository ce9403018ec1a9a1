package audit

import (
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
)

// pipeline is the durable part of the plugin, one per spool folder: the
// spool, its flusher, and a shipper per sink. It is a gateway shared object
// (Env.Shared), so it outlives config reloads that keep the folder: the
// audit plugins of successive loads use the same one, and the newest load
// to serve sets its settings.
type pipeline struct {
	name  string // the plugin instance that created it (metric label)
	spool *spool
	clock clock
	log   *slog.Logger
	ids   *idGen
	m     *metrics

	mu       sync.Mutex
	cfg      *Config // settings applied (flush interval, sinks, batches, retries)
	shippers []*shipper
	gen      uint64 // generation of the applied settings
	nextGen  uint64
	users    int             // plugin instances using the pipeline
	loads    map[any]*Config // settings asked for per config load
	interval time.Duration   // flush interval
	blocked  int64           // requests refused while the spool was full
	dropped  int64           // records not kept while the spool was full
	shipMu   sync.Mutex      // held while shippers are started or stopped
	dropping atomic.Bool     // the last record was dropped: the spool is full

	stopFlush chan struct{}
	flushDone chan struct{}
	closeOnce sync.Once
}

func newPipeline(name, dir string, cfg *Config, clk clock, m *metrics, log *slog.Logger) (*pipeline, error) {
	sp, err := openSpool(dir, int64(cfg.SegmentBytes), clk.Now, log)
	if err != nil {
		return nil, err
	}
	p := &pipeline{name: name, spool: sp, clock: clk, log: log, ids: newIDGen(), m: m,
		loads: map[any]*Config{}, interval: cfg.FlushInterval,
		stopFlush: make(chan struct{}), flushDone: make(chan struct{})}
	m.track(p)
	go p.flushLoop()
	return p, nil
}

// register adds a plugin instance of the config load identified by load,
// with its settings. Two instances of one load must agree on the settings
// of a shared folder. It returns the generation to activate.
func (p *pipeline) register(load any, cfg *Config) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if prev, ok := p.loads[load]; ok && !sameSettings(prev, cfg) {
		return 0, fmt.Errorf("spool_dir %s is used by another audit plugin with other settings", p.spool.dir)
	}
	p.loads[load] = cfg
	p.users++
	p.nextGen++
	return p.nextGen, nil
}

// sameSettings compares what a pipeline runs on.
func sameSettings(a, b *Config) bool {
	return a.FlushInterval == b.FlushInterval && a.SegmentBytes == b.SegmentBytes && a.BatchSize == b.BatchSize &&
		a.RetryMin == b.RetryMin && a.RetryMax == b.RetryMax && a.Site == b.Site && reflect.DeepEqual(a.Sinks, b.Sinks)
}

// activate applies the settings of generation gen, unless newer ones were
// applied already: the flush interval, and the sinks (whose shippers are
// restarted when the sinks or how they ship changed). It runs once the
// instance's config load serves.
func (p *pipeline) activate(gen uint64, cfg *Config, newSink func(SinkConfig) (sink, error)) {
	p.shipMu.Lock()
	defer p.shipMu.Unlock()
	p.mu.Lock()
	if gen < p.gen {
		p.mu.Unlock()
		return
	}
	p.gen = gen
	p.interval = cfg.FlushInterval
	p.spool.segMax.Store(int64(cfg.SegmentBytes))
	same := p.cfg != nil && sameSettings(p.cfg, cfg) && len(p.shippers) > 0
	p.cfg = cfg
	old := p.shippers
	if !same {
		p.shippers = nil
	}
	p.mu.Unlock()
	if same {
		return
	}
	// The old shippers stop before the new ones start: one shipper per
	// sink reads and moves a cursor.
	for _, sh := range old {
		sh.halt()
	}
	var fresh []*shipper
	for _, sc := range cfg.Sinks {
		s, err := newSink(sc)
		if err != nil {
			p.log.Error("audit: sink not started", "sink", sc.Name, "error", err)
			continue
		}
		fresh = append(fresh, newShipper(p, sc, s, cfg))
	}
	p.mu.Lock()
	p.shippers = fresh
	p.mu.Unlock()
	for _, sh := range fresh {
		sh.start()
	}
}

// release removes a plugin instance of load; the last one drains the
// spool to the sinks (at most timeout) and stops the shippers.
func (p *pipeline) release(load any, timeout time.Duration) {
	p.mu.Lock()
	delete(p.loads, load)
	p.users--
	last := p.users == 0
	p.mu.Unlock()
	if last {
		p.drain(timeout)
	}
}

// drain flushes, lets every shipper ship what is flushed (stopping at its
// sink's first failure), and stops them all after timeout at most.
func (p *pipeline) drain(timeout time.Duration) {
	p.shipMu.Lock()
	defer p.shipMu.Unlock()
	if err := p.flush(); err != nil {
		p.log.Error("audit: last records not written to the spool", "error", err)
	}
	p.mu.Lock()
	shippers := p.shippers
	p.shippers = nil
	p.mu.Unlock()
	for _, sh := range shippers {
		close(sh.drain)
	}
	deadline := make(chan struct{})
	stop := p.clock.AfterFunc(timeout, func() { close(deadline) })
	for _, sh := range shippers {
		select {
		case <-sh.done:
		case <-deadline:
		}
	}
	stop()
	for _, sh := range shippers {
		sh.halt()
	}
}

// flush writes the pending records to the spool and counts them.
func (p *pipeline) flush() error {
	before := p.spool.flushed.Load()
	err := p.spool.flush()
	if n := p.spool.flushed.Load() - before; n > 0 {
		p.m.spooled.WithLabelValues(p.name).Add(float64(n))
	}
	if err != nil {
		p.m.flushFailures.WithLabelValues(p.name).Inc()
	}
	return err
}

// flushLoop flushes every flush interval, or sooner when the pending batch
// grows large.
func (p *pipeline) flushLoop() {
	defer close(p.flushDone)
	failing := false
	for {
		p.mu.Lock()
		d := p.interval
		p.mu.Unlock()
		tick := make(chan struct{})
		stop := p.clock.AfterFunc(d, func() { close(tick) })
		select {
		case <-tick:
		case <-p.spool.kick:
			stop()
		case <-p.stopFlush:
			stop()
			return
		}
		err := p.flush()
		switch {
		case err != nil && !failing:
			p.log.Error("audit: spool write failed; records wait in memory", "error", err)
		case err == nil && failing:
			p.log.Info("audit: spool writes again")
		}
		failing = err != nil
	}
}

// gc deletes the segments every sink has shipped.
func (p *pipeline) gc() {
	p.mu.Lock()
	if len(p.shippers) == 0 {
		p.mu.Unlock()
		return
	}
	low := p.shippers[0].position()
	for _, sh := range p.shippers[1:] {
		if q := sh.position(); q.Seg < low.Seg || q.Seg == low.Seg && q.Off < low.Off {
			low = q
		}
	}
	p.mu.Unlock()
	p.spool.gc(low)
}

// Close stops the flusher and the shippers, writes what is pending, and
// releases the spool. The gateway calls it when no config load uses the
// pipeline any more.
func (p *pipeline) Close() error {
	p.closeOnce.Do(func() {
		close(p.stopFlush)
		<-p.flushDone
		p.shipMu.Lock()
		defer p.shipMu.Unlock()
		p.mu.Lock()
		shippers := p.shippers
		p.shippers = nil
		p.mu.Unlock()
		for _, sh := range shippers {
			sh.halt()
		}
		if err := p.flush(); err != nil {
			p.log.Error("audit: last records not written to the spool", "error", err)
		}
		p.spool.close()
		p.m.untrack(p)
	})
	return nil
}

// append spools a record line; see Plugin for the full-spool policy.
func (p *pipeline) append(line []byte, limit int64, drop bool) bool {
	if p.spool.append(line, limit, drop) {
		if p.dropping.Load() {
			p.dropping.Store(false)
		}
		return true
	}
	p.dropping.Store(true)
	p.mu.Lock()
	p.dropped++
	p.mu.Unlock()
	p.m.dropped.WithLabelValues(p.name).Inc()
	return false
}

func (p *pipeline) countBlocked() {
	p.mu.Lock()
	p.blocked++
	p.mu.Unlock()
	p.m.blocked.WithLabelValues(p.name).Inc()
}

// sinkStates returns the state of each sink.
func (p *pipeline) sinkStates() []sinkState {
	p.mu.Lock()
	shippers := append([]*shipper(nil), p.shippers...)
	p.mu.Unlock()
	now := p.clock.Now()
	out := make([]sinkState, len(shippers))
	for i, sh := range shippers {
		out[i] = sh.state(now)
	}
	return out
}

// retryAfter is what a refused request is told: the time until the next
// attempt of a failing sink, at least one flush interval, in whole seconds
// from 1 to 300.
func (p *pipeline) retryAfter() int {
	p.mu.Lock()
	wait := p.interval
	p.mu.Unlock()
	now := p.clock.Now()
	for _, st := range p.sinkStates() {
		if st.Failing && st.NextRetry.Sub(now) > wait {
			wait = st.NextRetry.Sub(now)
		}
	}
	secs := int((wait + time.Second - 1) / time.Second)
	return min(max(secs, 1), 300)
}
