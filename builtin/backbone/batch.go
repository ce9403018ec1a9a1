package backbone

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Auto-pipelining. On a small machine the socket reads and writes of a
// round trip cost the gateway and Redis more CPU than a short script does,
// so Batch sends the commands that concurrent requests queue while a
// pipeline is in flight together in the next one. Each command still costs
// its caller one round trip; under load many share it.
const (
	batchWorkers = 4   // pipelines in flight at once
	batchMax     = 256 // commands per pipeline
)

type batchCall struct {
	add  func(p redis.Pipeliner) redis.Cmder
	cmd  redis.Cmder
	done chan struct{}
}

var callPool = sync.Pool{New: func() any { return &batchCall{done: make(chan struct{}, 1)} }}

// Batch queues one command for the next pipeline and waits for its reply.
// add must append exactly one command to p and return it (for example
// script.EvalSha(ctx, p, keys, args...)). Like Do, it returns ErrDisabled
// or ErrDown without queueing when Redis is not available, records the
// latency (queueing included) under op and keeps the health state; the
// command's own error is returned with it. A NOSCRIPT reply is not retried
// here: the caller falls back to script.Run.
func (m *Manager) Batch(ctx context.Context, op *Op, add func(p redis.Pipeliner) redis.Cmder) (redis.Cmder, error) {
	if !m.cfg.Enabled() {
		return nil, ErrDisabled
	}
	if !m.up.Load() {
		return nil, ErrDown
	}
	m.batchOnce.Do(m.startBatch)
	t0 := time.Now()
	c := callPool.Get().(*batchCall)
	c.add, c.cmd = add, nil
	select {
	case m.queue <- c:
	case <-ctx.Done():
		callPool.Put(c)
		return nil, ctx.Err()
	case <-m.closed:
		callPool.Put(c)
		return nil, ErrDown
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		return nil, ctx.Err() // the worker still owns c
	}
	cmd := c.cmd
	c.add, c.cmd = nil, nil
	callPool.Put(c)
	if op != nil {
		op.dur.Observe(time.Since(t0).Seconds())
	}
	if cmd == nil {
		return nil, ErrDown
	}
	return cmd, cmd.Err()
}

func (m *Manager) startBatch() {
	m.queue = make(chan *batchCall, batchMax*batchWorkers)
	for range batchWorkers {
		m.wg.Add(1)
		go m.batchWorker()
	}
}

func (m *Manager) batchWorker() {
	defer m.wg.Done()
	batch := make([]*batchCall, 0, batchMax)
	for {
		select {
		case c := <-m.queue:
			batch = append(batch[:0], c)
		case <-m.closed:
			return
		}
	drain:
		for len(batch) < batchMax {
			select {
			case c := <-m.queue:
				batch = append(batch, c)
			default:
				break drain
			}
		}
		m.runBatch(batch)
	}
}

// runBatch sends one pipeline and hands each caller its command; calls
// find a nil command when Redis went down meanwhile.
func (m *Manager) runBatch(batch []*batchCall) {
	defer func() {
		for _, c := range batch {
			c.done <- struct{}{}
		}
	}()
	client := m.Client()
	if client == nil {
		return
	}
	ctx := context.Background()
	pipe := client.Pipeline()
	for _, c := range batch {
		c.cmd = c.add(pipe)
	}
	_, err := pipe.Exec(ctx)
	// Exec reports the first failed command; reply errors are the
	// callers' business, connection errors mark Redis down.
	if err != nil && IsOutage(ctx, err) {
		m.Report(ctx, err)
	} else {
		m.Report(ctx, nil)
	}
}
