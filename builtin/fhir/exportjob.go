package fhir

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/gateway"
	"github.com/omnigate/omnigate/gateway/outcome"
)

// Export job states.
const (
	jobAccepted  = "accepted"
	jobRunning   = "in-progress"
	jobCompleted = "completed"
	jobFailed    = "failed"
)

// exportJob is one bulk export: what was asked, by whom, and how far it
// is. The exported fields are its state file, job.json in its folder.
type exportJob struct {
	ID      string     `json:"id"`
	Owner   string     `json:"owner"`
	Kind    exportKind `json:"kind"`
	Group   string     `json:"group,omitempty"`
	Request string     `json:"request"`
	// Types are the types _type listed, nil for the default.
	Types []string `json:"types,omitempty"`
	// Since and TransactionTime bound meta.lastUpdated (FHIR instants).
	Since           string              `json:"since,omitempty"`
	TransactionTime string              `json:"transactionTime,omitempty"`
	TypeFilters     map[string][]string `json:"typeFilters,omitempty"`
	// Patients are the patients of a group export, or those the patient
	// parameter named (nil: every patient the caller may see).
	Patients  []string     `json:"patients,omitempty"`
	Status    string       `json:"status"`
	Message   string       `json:"message,omitempty"`
	Created   time.Time    `json:"created"`
	Completed time.Time    `json:"completed,omitempty"`
	Output    []exportFile `json:"output"`
	Errors    []exportFile `json:"errors"`
	Done      int          `json:"done"`
	Total     int          `json:"total"`
	Current   string       `json:"current,omitempty"`

	// Known while the job runs in this process.
	policy  *access.Policy
	local   []string
	cancel  context.CancelFunc
	done    chan struct{}
	removed bool
}

// exportFile is one NDJSON file of an export.
type exportFile struct {
	Type  string `json:"type"`
	Name  string `json:"file"`
	Count int    `json:"count"`
}

func (j *exportJob) finished() bool { return j.Status == jobCompleted || j.Status == jobFailed }

// progressText is the X-Progress of a running export.
func (j *exportJob) progressText() string {
	if j.Status == jobAccepted {
		return "queued"
	}
	if j.Total == 0 {
		return "finding resources"
	}
	s := fmt.Sprintf("%d%% (%d of %d resources)", j.Done*100/j.Total, j.Done, j.Total)
	if j.Current != "" {
		s += " " + j.Current
	}
	return s
}

// errExpired is returned for the files of an export past its retention.
var errExpired = errors.New("export expired")

// exporter runs the exports of one export folder and keeps their state.
// The gateway shares one per folder between config loads; it is safe for
// concurrent use.
type exporter struct {
	dir  string
	now  func() time.Time
	log  *slog.Logger
	sem  chan struct{}
	stop context.CancelFunc
	ctx  context.Context
	wg   sync.WaitGroup

	// onRun, when set, is called as a job starts running (tests hold jobs
	// there).
	onRun func(ctx context.Context, j *exportJob)

	mu        sync.Mutex
	retention time.Duration
	maxLines  int
	maxJobs   int
	jobs      map[string]*exportJob
	closed    bool
}

// newExporter opens the export folder cfg.Dir: the jobs a previous run
// left are loaded, those that had not finished failed (their manifest says
// why), and those past their retention deleted. The folder is created
// when the first export starts.
func newExporter(cfg ExportConfig, now func() time.Time, logger *slog.Logger) (*exporter, error) {
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = slog.Default()
	}
	ctx, stop := context.WithCancel(context.Background())
	x := &exporter{dir: cfg.Dir, now: now, log: logger, sem: make(chan struct{}, max(1, cfg.Concurrency)), ctx: ctx, stop: stop,
		jobs: map[string]*exportJob{}}
	x.configure(cfg)
	if err := x.load(); err != nil {
		stop()
		return nil, err
	}
	x.wg.Add(1)
	go x.janitor()
	return x, nil
}

// configure applies the settings a config reload may change.
func (x *exporter) configure(cfg ExportConfig) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.retention, x.maxLines, x.maxJobs = cfg.Retention, cfg.MaxLines, cfg.MaxJobs
}

func (x *exporter) retentionTime() time.Duration {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.retention
}

// load reads the jobs of an earlier run.
func (x *exporter) load() error {
	ents, err := os.ReadDir(x.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read export folder: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() || !validJobID(e.Name()) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(x.dir, e.Name(), "job.json"))
		if err != nil {
			continue // a folder the job was being created in
		}
		j := &exportJob{}
		if err := json.Unmarshal(data, j); err != nil || j.ID != e.Name() {
			x.log.Warn("unreadable export job state left alone", "job", e.Name())
			continue
		}
		if !j.finished() {
			// Its process stopped while it ran: its data are not all
			// there, and its kick-off's access policy is gone with it.
			x.fail(j, "the export was interrupted by a restart of the server: start it again")
		}
		x.jobs[j.ID] = j
	}
	x.sweep()
	return nil
}

// janitor deletes expired exports, at least every minute.
func (x *exporter) janitor() {
	defer x.wg.Done()
	every := min(x.retentionTime()/4, time.Minute)
	t := time.NewTicker(max(every, time.Second))
	defer t.Stop()
	for {
		select {
		case <-x.ctx.Done():
			return
		case <-t.C:
			x.sweep()
		}
	}
}

// sweep deletes the exports past their retention.
func (x *exporter) sweep() {
	now := x.now()
	x.mu.Lock()
	var expired []*exportJob
	for id, j := range x.jobs {
		if j.finished() && now.Sub(j.Completed) > x.retention {
			expired = append(expired, j)
			delete(x.jobs, id)
		}
	}
	x.mu.Unlock()
	for _, j := range expired {
		if err := os.RemoveAll(x.jobDir(j.ID)); err != nil {
			x.log.Error("delete expired export", "job", j.ID, "error", err.Error())
		}
	}
}

func (x *exporter) jobDir(id string) string { return filepath.Join(x.dir, id) }

// validJobID reports whether s has the shape of a job id (32 hex digits).
func validJobID(s string) bool {
	if len(s) != 32 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// get returns the job id names, nil when unknown or expired.
func (x *exporter) get(id string) *exportJob {
	if !validJobID(id) {
		return nil
	}
	x.mu.Lock()
	j := x.jobs[id]
	expired := j != nil && j.finished() && x.now().Sub(j.Completed) > x.retention
	x.mu.Unlock()
	if expired {
		x.sweep()
		return nil
	}
	return j
}

// snapshot returns a copy of the job's state.
func (x *exporter) snapshot(j *exportJob) exportJob {
	x.mu.Lock()
	defer x.mu.Unlock()
	cp := *j
	cp.Output = append([]exportFile(nil), j.Output...)
	cp.Errors = append([]exportFile(nil), j.Errors...)
	return cp
}

// start records j and runs it in the background under the policy on ctx:
// 429 when MaxJobs exports are unfinished already.
func (x *exporter) start(ctx context.Context, h *Handler, j *exportJob, local []string) error {
	var b [16]byte
	rand.Read(b[:])
	j.ID = hex.EncodeToString(b[:])
	j.Status = jobAccepted
	j.Created = x.now()
	j.Output, j.Errors = []exportFile{}, []exportFile{}
	j.policy = access.FromContext(ctx)
	j.local = local
	j.done = make(chan struct{})
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return errorf(http.StatusServiceUnavailable, "the server is stopping")
	}
	unfinished := 0
	for _, o := range x.jobs {
		if !o.finished() {
			unfinished++
		}
	}
	if unfinished >= x.maxJobs {
		x.mu.Unlock()
		he := errorf(http.StatusTooManyRequests, "%d exports are running or waiting: retry later", unfinished)
		return he
	}
	x.jobs[j.ID] = j
	x.mu.Unlock()
	if err := os.MkdirAll(x.jobDir(j.ID), 0o700); err != nil {
		x.forget(j)
		return fmt.Errorf("export folder: %w", err)
	}
	if err := x.persist(j); err != nil {
		x.forget(j)
		os.RemoveAll(x.jobDir(j.ID))
		return err
	}
	jctx, cancel := context.WithCancel(x.ctx)
	j.cancel = cancel
	x.wg.Add(1)
	go x.run(jctx, h, j)
	return nil
}

func (x *exporter) forget(j *exportJob) {
	x.mu.Lock()
	delete(x.jobs, j.ID)
	x.mu.Unlock()
}

// run waits for a slot, then exports.
func (x *exporter) run(ctx context.Context, h *Handler, j *exportJob) {
	defer x.wg.Done()
	defer close(j.done)
	select {
	case x.sem <- struct{}{}:
		defer func() { <-x.sem }()
	case <-ctx.Done():
		x.stopped(j)
		return
	}
	x.mu.Lock()
	j.Status = jobRunning
	// Nothing written after this instant is exported (the next export's
	// _since picks it up).
	j.TransactionTime = formatMillis(x.now().UnixMilli())
	x.mu.Unlock()
	if err := x.persist(j); err != nil {
		x.log.Error("export state", "job", j.ID, "error", err.Error())
	}
	if x.onRun != nil {
		x.onRun(ctx, j)
	}
	err := h.runExport(access.WithPolicy(ctx, j.policy), x, j)
	if ctx.Err() != nil {
		x.stopped(j)
		return
	}
	if err != nil {
		msg := "the export failed"
		if he := asHTTPError(err); he != nil {
			msg += ": " + he.Error()
		} else {
			x.log.Error("export failed", "job", j.ID, "error", err.Error())
		}
		x.fail(j, msg)
		return
	}
	x.mu.Lock()
	j.Status, j.Completed, j.Current = jobCompleted, x.now(), ""
	x.mu.Unlock()
	if err := x.persist(j); err != nil {
		x.log.Error("export state", "job", j.ID, "error", err.Error())
	}
	x.log.Info("export completed", "job", j.ID, "resources", j.Done, "files", len(j.Output))
}

// stopped ends a job whose context ended: removed by its owner, or the
// exporter closing (the job then fails: its manifest says so).
func (x *exporter) stopped(j *exportJob) {
	x.mu.Lock()
	removed := j.removed
	x.mu.Unlock()
	if !removed {
		x.fail(j, "the server stopped while the export ran: start it again")
	}
}

// fail ends j with no output and an error file holding an OperationOutcome
// that says why.
func (x *exporter) fail(j *exportJob, msg string) {
	dir := x.jobDir(j.ID)
	x.mu.Lock()
	for _, f := range j.Output {
		os.Remove(filepath.Join(dir, f.Name))
	}
	j.Output, j.Errors = []exportFile{}, []exportFile{}
	j.Status, j.Message, j.Completed, j.Current = jobFailed, msg, x.now(), ""
	x.mu.Unlock()
	// Leftovers of a run that stopped before recording its files.
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".ndjson") {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	line, _ := json.Marshal(outcome.New(http.StatusInternalServerError, msg))
	name := "OperationOutcome-1.ndjson"
	if err := os.MkdirAll(dir, 0o700); err == nil {
		if err := os.WriteFile(filepath.Join(dir, name), append(line, '\n'), 0o600); err == nil {
			x.mu.Lock()
			j.Errors = []exportFile{{Type: "OperationOutcome", Name: name, Count: 1}}
			x.mu.Unlock()
		}
	}
	if err := x.persist(j); err != nil {
		x.log.Error("export state", "job", j.ID, "error", err.Error())
	}
}

// persist writes the job's state file (a new file renamed over the old).
func (x *exporter) persist(j *exportJob) error {
	x.mu.Lock()
	data, err := json.Marshal(j)
	x.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode export state: %w", err)
	}
	path := filepath.Join(x.jobDir(j.ID), "job.json")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write export state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write export state: %w", err)
	}
	return nil
}

// progress records how far j is.
func (x *exporter) progress(j *exportJob, done, total int, current string) {
	x.mu.Lock()
	j.Done, j.Total, j.Current = done, total, current
	x.mu.Unlock()
}

// writeType writes the matches of one type into files of at most maxLines
// resources, reading them a chunk at a time.
func (x *exporter) writeType(ctx context.Context, h *Handler, j *exportJob, g typedMatches, done *int, total int) error {
	x.mu.Lock()
	maxLines := x.maxLines
	x.mu.Unlock()
	var (
		f     *os.File
		bw    *bufio.Writer
		cur   exportFile
		line  bytes.Buffer
		index int
	)
	closeFile := func() error {
		if f == nil {
			return nil
		}
		err := bw.Flush()
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		f = nil
		if err != nil {
			return fmt.Errorf("write export file: %w", err)
		}
		x.mu.Lock()
		j.Output = append(j.Output, cur)
		x.mu.Unlock()
		return nil
	}
	const chunk = 500
	for start := 0; start < len(g.ms); start += chunk {
		if err := ctx.Err(); err != nil {
			if f != nil {
				f.Close()
			}
			return err
		}
		vs, err := h.store.Fetch(ctx, g.ms[start:min(len(g.ms), start+chunk)])
		if err != nil {
			if f != nil {
				f.Close()
			}
			return err
		}
		for _, v := range vs {
			if f == nil || cur.Count >= maxLines {
				if err := closeFile(); err != nil {
					return err
				}
				index++
				cur = exportFile{Type: g.typ, Name: g.typ + "-" + strconv.Itoa(index) + ".ndjson"}
				if f, err = os.OpenFile(filepath.Join(x.jobDir(j.ID), cur.Name), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600); err != nil {
					return fmt.Errorf("export file: %w", err)
				}
				bw = bufio.NewWriterSize(f, 64<<10)
			}
			line.Reset()
			if err := ndjsonLine(&line, v.Body); err != nil {
				f.Close()
				return fmt.Errorf("%s/%s: %w", v.Type, v.ID, err)
			}
			if _, err := bw.Write(line.Bytes()); err != nil {
				f.Close()
				return fmt.Errorf("write export file: %w", err)
			}
			cur.Count++
		}
		*done += len(vs)
		x.progress(j, *done, total, g.typ)
	}
	return closeFile()
}

// remove cancels j if it runs and deletes it with its files.
func (x *exporter) remove(ctx context.Context, j *exportJob) error {
	x.mu.Lock()
	j.removed = true
	cancel, done := j.cancel, j.done
	x.mu.Unlock()
	if cancel != nil {
		cancel()
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	x.forget(j)
	if err := os.RemoveAll(x.jobDir(j.ID)); err != nil {
		return fmt.Errorf("delete export: %w", err)
	}
	return nil
}

// open opens one file of j, with its size.
func (x *exporter) open(j *exportJob, name string) (*os.File, int64, error) {
	if strings.ContainsAny(name, `/\`) || name == "" || name[0] == '.' {
		return nil, 0, errExpired
	}
	f, err := os.Open(filepath.Join(x.jobDir(j.ID), name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, errExpired
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open export file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("open export file: %w", err)
	}
	return f, st.Size(), nil
}

// wait blocks until j has finished running in this process or ctx ends.
func (x *exporter) wait(ctx context.Context, j *exportJob) error {
	if j.done == nil {
		return nil
	}
	select {
	case <-j.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the exports that run (their manifests say the server
// stopped) and the janitor.
func (x *exporter) Close() error {
	x.mu.Lock()
	x.closed = true
	x.mu.Unlock()
	x.stop()
	x.wg.Wait()
	return nil
}

// adminHandler answers GET /admin/fhir/exports: every export known, newest
// first, with its progress (no owner, no data).
func (x *exporter) adminHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		type row struct {
			ID              string     `json:"id"`
			Kind            exportKind `json:"kind"`
			Status          string     `json:"status"`
			Types           []string   `json:"types,omitempty"`
			Done            int        `json:"done"`
			Total           int        `json:"total"`
			Current         string     `json:"current,omitempty"`
			Files           int        `json:"files"`
			Created         time.Time  `json:"created"`
			TransactionTime string     `json:"transaction_time,omitempty"`
			Completed       *time.Time `json:"completed,omitempty"`
			Expires         *time.Time `json:"expires,omitempty"`
			Error           string     `json:"error,omitempty"`
		}
		x.mu.Lock()
		rows := make([]row, 0, len(x.jobs))
		for _, j := range x.jobs {
			rw := row{ID: j.ID, Kind: j.Kind, Status: j.Status, Types: j.Types, Done: j.Done, Total: j.Total, Current: j.Current,
				Files: len(j.Output), Created: j.Created, TransactionTime: j.TransactionTime, Error: j.Message}
			if j.finished() {
				c, e := j.Completed, j.Completed.Add(x.retention)
				rw.Completed, rw.Expires = &c, &e
			}
			rows = append(rows, rw)
		}
		x.mu.Unlock()
		sort.Slice(rows, func(a, b int) bool { return rows[a].Created.After(rows[b].Created) })
		gateway.WriteJSON(w, http.StatusOK, map[string]any{"exports": rows})
	})
}

// copyBuffer copies a file to a response in 64 KiB writes.
func copyBuffer(w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, 64<<10)
	return io.CopyBuffer(w, r, buf)
}
