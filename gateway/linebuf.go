package gateway

import (
	"io"
	"sync"
	"time"
)

// lineBuffer batches whole log lines into few writes: it flushes when the
// next line would overflow the buffer, every interval, and on Close. A line
// is never split across writes, so lines from other writers to the same
// file or stream do not land inside it. Lines still buffered when the
// process crashes are lost; a graceful shutdown flushes them.
type lineBuffer struct {
	mu   sync.Mutex
	w    io.Writer
	buf  []byte
	size int
	stop chan struct{}
	done chan struct{}
}

func newLineBuffer(w io.Writer, size int, interval time.Duration) *lineBuffer {
	b := &lineBuffer{w: w, buf: make([]byte, 0, size), size: size,
		stop: make(chan struct{}), done: make(chan struct{})}
	go b.loop(interval)
	return b
}

func (b *lineBuffer) loop(interval time.Duration) {
	defer close(b.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			b.Flush()
		case <-b.stop:
			b.Flush()
			return
		}
	}
}

// Write takes one or more whole lines (slog handlers write one record per
// call).
func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf)+len(p) > b.size {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > b.size {
			return b.w.Write(p)
		}
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// Flush writes what is buffered.
func (b *lineBuffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *lineBuffer) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// Close flushes and stops the interval flusher.
func (b *lineBuffer) Close() error {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	<-b.done
	return nil
}
