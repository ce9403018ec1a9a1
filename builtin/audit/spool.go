package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// position is a place in the spool: a segment and a byte offset in it.
type position struct {
	Seg uint64 `json:"segment"`
	Off int64  `json:"offset"`
}

// Spool file names: segments hold JSON lines, cursors a sink's position.
const (
	segPrefix    = "segment-"
	segSuffix    = ".jsonl"
	cursorPrefix = "cursor-"
	cursorSuffix = ".json"
	lockName     = "LOCK"
)

// kickBytes makes an append wake the flusher before the interval ends, so
// that a burst does not pile up in memory.
const kickBytes = 4 << 20

// readChunk is the most bytes a read of a segment takes at once, and
// lineGuess what a record line takes, to size reads.
const (
	readChunk = 4 << 20
	lineGuess = 1 << 10
)

func segName(seq uint64) string { return fmt.Sprintf("%s%020d%s", segPrefix, seq, segSuffix) }

// spool is the append-only, on-disk queue of records. Appends go to an
// in-memory batch; flush writes the batch to the active segment and fsyncs
// it, so a crash loses at most the batch. Segments are rotated at a size
// and deleted once every sink has read past them (gc). Whole lines are
// written, so a segment's durable size always ends a line; only a crash
// in the middle of a write can leave a torn last line, in a segment of an
// earlier run, which readers skip.
type spool struct {
	dir    string
	log    *slog.Logger
	segMax atomic.Int64
	unlock func()
	now    func() time.Time

	mu      sync.Mutex
	buf     [][]byte // records waiting for the flush, one line each, in chunks
	bufLen  int      // bytes in buf
	free    [][]byte // chunks to reuse
	pending int
	segs    map[uint64]int64 // durable size of each segment on disk
	active  *os.File         // the segment flushes append to; nil until the next flush makes one
	actSeq  uint64
	nextSeq uint64
	changed chan struct{} // closed and replaced by every flush that wrote something
	flushOK bool
	lastErr string
	lastAt  time.Time // last successful flush
	kick    chan struct{}

	flushMu sync.Mutex // one flush at a time

	total    atomic.Int64 // bytes on disk and pending
	appended atomic.Int64 // records appended by this process
	flushed  atomic.Int64 // records written and fsynced by this process
	corrupt  atomic.Int64 // lines skipped by readers, each counted once
	skipped  sync.Map     // position -> true: the lines counted in corrupt
}

// skip counts the bad line at pos once, however many readers meet it, and
// logs it then.
func (s *spool) skip(pos position, why string) {
	if _, seen := s.skipped.LoadOrStore(pos, true); !seen {
		s.corrupt.Add(1)
		s.log.Warn("audit spool: skipped "+why, "segment", segName(pos.Seg), "offset", pos.Off)
	}
}

// openSpool opens (creating) the spool in dir and locks it against other
// processes.
func openSpool(dir string, segMax int64, now func() time.Time, log *slog.Logger) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool folder: %w", err)
	}
	unlock, err := lockDir(filepath.Join(dir, lockName))
	if err != nil {
		return nil, err
	}
	s := &spool{dir: dir, log: log, unlock: unlock, now: now, segs: map[uint64]int64{}, nextSeq: 1,
		changed: make(chan struct{}), flushOK: true, kick: make(chan struct{}, 1)}
	s.segMax.Store(segMax)
	ents, err := os.ReadDir(dir)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("spool folder: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			os.Remove(filepath.Join(dir, name)) // a cursor being written when a crash came
			continue
		}
		num, ok := strings.CutPrefix(name, segPrefix)
		if !ok {
			continue
		}
		num, ok = strings.CutSuffix(num, segSuffix)
		seq, err := strconv.ParseUint(num, 10, 64)
		if !ok || err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			unlock()
			return nil, fmt.Errorf("spool segment: %w", err)
		}
		s.segs[seq] = info.Size()
		s.total.Add(info.Size())
		s.nextSeq = max(s.nextSeq, seq+1)
	}
	return s, nil
}

// append adds one record line (without its newline) to the batch. With
// dropWhenFull, a line that would take the spool over limit bytes is not
// added and append reports false.
func (s *spool) append(line []byte, limit int64, dropWhenFull bool) bool {
	n := int64(len(line) + 1)
	s.mu.Lock()
	if dropWhenFull && s.total.Load()+n > limit {
		s.mu.Unlock()
		return false
	}
	if k := len(s.buf) - 1; k < 0 || cap(s.buf[k])-len(s.buf[k]) < int(n) {
		s.buf = append(s.buf, s.chunk(int(n)))
	}
	k := len(s.buf) - 1
	s.buf[k] = append(append(s.buf[k], line...), '\n')
	s.bufLen += int(n)
	s.pending++
	big := s.bufLen >= kickBytes
	s.mu.Unlock()
	s.total.Add(n)
	s.appended.Add(1)
	if big {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return true
}

// chunkSize is the size of the chunks the pending batch is kept in, so
// that it grows without copying.
const chunkSize = 64 << 10

// chunk returns an empty chunk for at least n bytes; s.mu is held.
func (s *spool) chunk(n int) []byte {
	if n <= chunkSize {
		if k := len(s.free) - 1; k >= 0 {
			c := s.free[k]
			s.free = s.free[:k]
			return c
		}
		return make([]byte, 0, chunkSize)
	}
	return make([]byte, 0, n)
}

// bytes is the size of the spool: segments on disk and the pending batch.
func (s *spool) bytes() int64 { return s.total.Load() }

// flush writes the pending batch to the active segment and fsyncs it. On
// failure the batch stays pending (the next flush tries again) and the
// segment is cut back to its last durable size.
func (s *spool) flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	data, size, n := s.buf, s.bufLen, s.pending
	s.buf, s.bufLen, s.pending = nil, 0, 0
	f, seq, durable := s.active, s.actSeq, s.segs[s.actSeq]
	s.mu.Unlock()
	if size == 0 {
		return nil
	}
	err := func() error {
		if f == nil {
			var err error
			if f, seq, err = s.newSegment(); err != nil {
				return err
			}
			durable = 0
		}
		for _, c := range data {
			if _, err := f.Write(c); err != nil {
				return fmt.Errorf("write spool: %w", err)
			}
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync spool: %w", err)
		}
		return nil
	}()
	if err != nil {
		if f != nil {
			// Cut a partial write, and start a new segment next time: a
			// segment's durable size must end a line.
			f.Truncate(durable)
			f.Close()
		}
		s.mu.Lock()
		if s.active == f {
			s.active = nil
		}
		s.buf = append(data, s.buf...)
		s.bufLen += size
		s.pending += n
		s.flushOK, s.lastErr = false, err.Error()
		s.mu.Unlock()
		return err
	}
	s.mu.Lock()
	durable += int64(size)
	s.segs[seq] = durable
	s.active, s.actSeq = f, seq
	if durable >= s.segMax.Load() {
		f.Close()
		s.active = nil
	}
	for _, c := range data {
		if cap(c) == chunkSize && len(s.free) < 64 {
			s.free = append(s.free, c[:0])
		}
	}
	s.flushOK, s.lastErr, s.lastAt = true, "", s.now()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	s.flushed.Add(int64(n))
	return nil
}

// newSegment creates the next segment file and makes its name durable.
func (s *spool) newSegment() (*os.File, uint64, error) {
	s.mu.Lock()
	seq := s.nextSeq
	s.nextSeq++
	s.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(s.dir, segName(seq)), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("new spool segment: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, 0, err
	}
	s.mu.Lock()
	s.segs[seq] = 0
	s.mu.Unlock()
	return f, seq, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync spool folder: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync spool folder: %w", err)
	}
	return nil
}

// wait returns a channel closed by the next flush that writes something.
func (s *spool) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// segAtOrAfter returns the first segment numbered seq or more and its
// durable size; s.mu is held.
func (s *spool) segAtOrAfter(seq uint64) (uint64, int64, bool) {
	best, found := uint64(0), false
	for q := range s.segs {
		if q >= seq && (!found || q < best) {
			best, found = q, true
		}
	}
	return best, s.segs[best], found
}

// read returns up to max record lines from pos on, and the position after
// them. It returns no lines at the end of what was flushed.
//
// The lines point into *buf, which read grows as needed and the caller
// reuses: they are valid until the next read with the same buffer.
func (s *spool) read(pos position, maxLines int, buf *[]byte) ([][]byte, position, error) {
	for {
		s.mu.Lock()
		seq, limit, ok := s.segAtOrAfter(pos.Seg)
		active := s.active != nil && seq == s.actSeq
		_, _, later := s.segAtOrAfter(seq + 1)
		s.mu.Unlock()
		if !ok {
			return nil, pos, nil
		}
		if seq != pos.Seg {
			pos = position{Seg: seq}
		}
		if pos.Off >= limit {
			if active || !later {
				return nil, pos, nil
			}
			pos = position{Seg: seq + 1}
			continue
		}
		lines, next, err := s.readSegment(seq, pos.Off, limit, !active, maxLines, buf)
		if err != nil {
			return nil, pos, err
		}
		if len(lines) > 0 || next == pos {
			return lines, next, nil
		}
		pos = next
	}
}

// readSegment reads whole lines of segment seq between off and limit.
// closed says no more will be written to it: a last line without its
// newline was torn by a crash and is skipped.
func (s *spool) readSegment(seq uint64, off, limit int64, closed bool, maxLines int, bufp *[]byte) ([][]byte, position, error) {
	f, err := os.Open(filepath.Join(s.dir, segName(seq)))
	if err != nil {
		return nil, position{seq, off}, fmt.Errorf("read spool: %w", err)
	}
	defer f.Close()
	// Read about what maxLines lines take; more when not even one line
	// fits, up to readChunk.
	n := min(limit-off, max(int64(maxLines)*lineGuess, 64<<10), readChunk)
	var buf []byte
	for {
		if int64(cap(*bufp)) < n {
			*bufp = make([]byte, n)
		}
		buf = (*bufp)[:n]
		if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
			return nil, position{seq, off}, fmt.Errorf("read spool: %w", err)
		}
		if bytes.IndexByte(buf, '\n') >= 0 || n == limit-off || n == readChunk {
			break
		}
		n = min(4*n, limit-off, readChunk)
	}
	var lines [][]byte
	rest := buf
	for len(lines) < maxLines {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		line := rest[:i]
		rest = rest[i+1:]
		at := off
		off += int64(i + 1)
		if !json.Valid(line) {
			s.skip(position{seq, at}, "a line that is not JSON")
			continue
		}
		lines = append(lines, line)
	}
	if len(lines) == 0 && len(rest) > 0 && bytes.IndexByte(rest, '\n') < 0 {
		switch {
		case off+int64(len(rest)) == limit && closed:
			s.skip(position{seq, off}, "the torn last line of a segment (a crash during a write)")
			off = limit
		case int64(len(rest)) == readChunk:
			s.skip(position{seq, off}, "a line longer than a read")
			off += int64(len(rest))
		}
	}
	return lines, position{seq, off}, nil
}

// behind returns how many spooled bytes lie at or after pos.
func (s *spool) behind(pos position) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for seq, size := range s.segs {
		switch {
		case seq > pos.Seg:
			n += size
		case seq == pos.Seg && size > pos.Off:
			n += size - pos.Off
		}
	}
	return n
}

// gc deletes the segments every reader is past: those before low, and low
// itself when it was read to its end and is no longer written.
func (s *spool) gc(low position) {
	s.mu.Lock()
	var gone []uint64
	for seq, size := range s.segs {
		if s.active != nil && seq == s.actSeq {
			continue
		}
		if seq < low.Seg || seq == low.Seg && low.Off >= size {
			gone = append(gone, seq)
		}
	}
	slices.Sort(gone)
	s.mu.Unlock()
	for _, seq := range gone {
		if err := os.Remove(filepath.Join(s.dir, segName(seq))); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("audit spool: segment not deleted", "segment", segName(seq), "error", err)
			continue
		}
		s.mu.Lock()
		size, ok := s.segs[seq]
		delete(s.segs, seq)
		s.mu.Unlock()
		if ok {
			s.total.Add(-size)
		}
	}
}

// spoolState is what the stats report about the spool.
type spoolState struct {
	Segments  int
	Pending   int
	FlushOK   bool
	FlushErr  string
	LastFlush time.Time
}

func (s *spool) state() spoolState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return spoolState{Segments: len(s.segs), Pending: s.pending, FlushOK: s.flushOK, FlushErr: s.lastErr, LastFlush: s.lastAt}
}

// close closes the active segment and releases the folder's lock. Flush
// first.
func (s *spool) close() {
	s.mu.Lock()
	if s.active != nil {
		s.active.Close()
		s.active = nil
	}
	s.mu.Unlock()
	if s.unlock != nil {
		s.unlock()
		s.unlock = nil
	}
}

// cursor files: a sink's position, written to a temporary file, fsynced
// and renamed over the old one. A cursor that was not made durable before
// a crash is an older one: those records are shipped again.

func cursorPath(dir, sink string) string { return filepath.Join(dir, cursorPrefix+sink+cursorSuffix) }

func loadCursor(dir, sink string) (position, error) {
	b, err := os.ReadFile(cursorPath(dir, sink))
	if errors.Is(err, os.ErrNotExist) {
		return position{}, nil
	}
	if err != nil {
		return position{}, fmt.Errorf("read cursor: %w", err)
	}
	var p position
	if err := json.Unmarshal(b, &p); err != nil {
		// Start again from the oldest segment: at least once.
		return position{}, nil
	}
	return p, nil
}

func saveCursor(dir, sink string, p position) error {
	path := cursorPath(dir, sink)
	tmp := path + ".tmp"
	b, _ := json.Marshal(p)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write cursor: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write cursor: %w", err)
	}
	return nil
}
