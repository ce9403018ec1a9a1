package gateway

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

type recordingWriter struct {
	mu     sync.Mutex
	writes []string
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func (w *recordingWriter) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.writes...)
}

func TestLineBufferKeepsLinesWhole(t *testing.T) {
	out := &recordingWriter{}
	b := newLineBuffer(out, 100, time.Hour)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				fmt.Fprintf(b, "goroutine %d line %02d %s\n", g, i, strings.Repeat("x", i%30))
			}
		}()
	}
	wg.Wait()
	b.Close()
	lines := 0
	for _, w := range out.all() {
		if len(w) > 100 {
			t.Errorf("write of %d bytes exceeds the buffer", len(w))
		}
		if !strings.HasSuffix(w, "\n") {
			t.Errorf("write does not end on a line: %q", w)
		}
		lines += strings.Count(w, "\n")
	}
	if lines != 400 {
		t.Errorf("%d lines written, want 400", lines)
	}
}

func TestLineBufferFlushesOnInterval(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	b := newLineBuffer(w, 1<<10, 20*time.Millisecond)
	defer b.Close()
	b.Write([]byte("one\n"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := buf.String()
		mu.Unlock()
		if got == "one\n" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not flushed on the interval: %q", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLineBufferOversizeLineGoesStraightThrough(t *testing.T) {
	out := &recordingWriter{}
	b := newLineBuffer(out, 10, time.Hour)
	b.Write([]byte("a\n"))
	b.Write([]byte(strings.Repeat("z", 20) + "\n"))
	b.Close()
	got := out.all()
	if len(got) != 2 || got[0] != "a\n" || len(got[1]) != 21 {
		t.Errorf("writes %q", got)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
