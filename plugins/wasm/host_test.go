package wasm

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		opts func(*Options)
		want string
	}{
		{"wrong ABI version", func(o *Options) { o.Module = badVersion }, "module speaks ABI version 2; this host speaks version 1"},
		{"missing export", func(o *Options) { o.Module = noExport }, `missing export "omnigate_on_request"`},
		{"missing memory", func(o *Options) { o.Module = noMemory }, `missing export "memory"`},
		{"wrong ABI version of a Go guest", func(o *Options) { o.Path = guest(t, "badversion") }, "module speaks ABI version 2"},
		{"not wasm", func(o *Options) { o.Module = []byte("not a wasm module") }, "compile module"},
		{"missing file", func(o *Options) { o.Path = filepath.Join(t.TempDir(), "none.wasm") }, "no such file"},
		{"config refused", func(o *Options) { o.Path = guest(t, "../../examples/require-header") }, "plugin refused to start: config: header is required"},
		{"memory cap below the Go runtime", func(o *Options) { o.Path = guest(t, "testguest"); o.MemoryLimit = 1 << 20 }, "over limit of 16 pages"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{Name: "bad", CacheDir: cacheDir, Instances: 1, Logger: discard}
			tt.opts(&opts)
			p, err := New(context.Background(), opts)
			if err == nil {
				p.Close()
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestBadAction(t *testing.T) {
	p, _, reg := newPlugin(t, moduleFile(t, "badaction", badAction), nil)
	if w := serve(p, "GET", "/fhir/R4/Patient/1"); w.Code != 500 {
		t.Fatalf("status %d", w.Code)
	}
	if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "abi"}); got != 1 {
		t.Errorf("abi failures = %v", got)
	}
}

func TestFailOpen(t *testing.T) {
	p, _, reg := newPlugin(t, guest(t, "testguest"), func(o *Options) { o.FailOpen = true; o.Timeout = 20 * time.Millisecond })
	w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "loop"))
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"Patient"`) {
		t.Fatalf("fail open answered %d: %s", w.Code, w.Body)
	}
	if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "deadline", "phase": "request"}); got != 1 {
		t.Errorf("deadline failures = %v", got)
	}
}

func TestLocalReply(t *testing.T) {
	p, _, _ := newPlugin(t, guest(t, "testguest"), nil)
	w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "respond"))
	if w.Code != 202 || w.Body.String() != "accepted locally" || w.Header().Get("X-Local") != "yes" {
		t.Fatalf("reply %d %q %v", w.Code, w.Body, w.Header())
	}
}

// logRecords decodes JSON log lines.
func logRecords(t testing.TB, logs string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		recs = append(recs, rec)
	}
	return recs
}

// checkGuestStderr finds the record of the guest's stderr line in logs and
// checks that it is tagged with the stream and the plugin's name.
func checkGuestStderr(t *testing.T, logs, plugin string) {
	t.Helper()
	for _, rec := range logRecords(t, logs) {
		if rec["msg"] != "to stderr from the guest" {
			continue
		}
		if rec["stream"] != "stderr" || rec["plugin"] != plugin || rec["level"] != "WARN" {
			t.Errorf("guest stderr logged as %v, want level WARN, stream stderr, plugin %s", rec, plugin)
		}
		return
	}
	t.Errorf("guest stderr not logged:\n%s", logs)
}

// The guest's stdout and stderr go to the log a line per record, tagged
// with the stream and with the plugin's name: by the gateway's logger for
// the plugin, and by the default logger of a plugin built with New.
func TestGuestOutputLogged(t *testing.T) {
	t.Run("gateway", func(t *testing.T) {
		logs := &logBuffer{}
		srv, err := gateway.New(context.Background(), gatewayConfig(t, "http://127.0.0.1:9", guest(t, "testguest"), ""),
			gateway.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Shutdown(context.Background())
		r := httptest.NewRequest("GET", "/fhir/R4/Patient/p1", nil)
		r.Header.Set("X-Test", "print")
		srv.ServeHTTP(httptest.NewRecorder(), r)
		checkGuestStderr(t, logs.String(), "policy")
	})
	t.Run("default logger", func(t *testing.T) {
		logs := &logBuffer{}
		// slog.SetDefault also redirects the log package: restore both.
		defer func(l *slog.Logger, w io.Writer, flags int) {
			slog.SetDefault(l)
			log.SetOutput(w)
			log.SetFlags(flags)
		}(slog.Default(), log.Writer(), log.Flags())
		slog.SetDefault(slog.New(slog.NewJSONHandler(logs, nil)))
		p, _, _ := newPlugin(t, guest(t, "testguest"), func(o *Options) { o.Logger = nil })
		serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "print"))
		checkGuestStderr(t, logs.String(), "test")
	})
}

func TestResponsePhase(t *testing.T) {
	p, _, reg := newPlugin(t, guest(t, "respguest"), nil)
	patient := `{"resourceType":"Patient","id":"p1","telecom":[{"value":"555"}],"address":[{"city":"X"}],"gender":"male"}`
	up := func(body string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/fhir+json")
			w.Header().Set("Content-Length", "999")
			w.Header().Set("X-Body-Len-Seen", r.Header.Get("X-Body-Len"))
			io.WriteString(w, body)
		})
	}
	do := func(test, reqBody, body string) *httptest.ResponseRecorder {
		var rb io.Reader
		if reqBody != "" {
			rb = strings.NewReader(reqBody)
		}
		r := httptest.NewRequest("POST", "/fhir/R4/Patient", rb)
		r = r.WithContext(gateway.NewRequestContext(r.Context(), fhirRoute, "req-2", nil))
		r.Header.Set("X-Test", test)
		w := httptest.NewRecorder()
		p.ServeHTTP(w, r, up(body))
		return w
	}
	t.Run("mask", func(t *testing.T) {
		w := do("mask", "", patient)
		want := `{"resourceType":"Patient","id":"p1","telecom":"***","address":"***","gender":"male"}`
		if w.Body.String() != want || w.Header().Get("X-Masked") != "2" || w.Header().Get("Content-Length") != "84" {
			t.Errorf("got %q, masked %q, length %q", w.Body, w.Header().Get("X-Masked"), w.Header().Get("Content-Length"))
		}
	})
	t.Run("set body and status", func(t *testing.T) {
		w := do("setbody", "", patient)
		if w.Code != 203 || w.Body.String() != "replaced" || w.Header().Get("X-Module") != "respguest" {
			t.Errorf("got %d %q", w.Code, w.Body)
		}
	})
	t.Run("deny", func(t *testing.T) {
		w := do("deny", "", patient)
		if w.Code != 403 || !strings.Contains(w.Body.String(), "not for you") || w.Header().Get("X-Module") != "" {
			t.Errorf("got %d %q %v", w.Code, w.Body, w.Header())
		}
	})
	t.Run("skip", func(t *testing.T) {
		w := do("skip", "", patient)
		if w.Body.String() != patient || w.Header().Get("X-Module") != "" {
			t.Errorf("response phase ran: %q %v", w.Body, w.Header())
		}
	})
	t.Run("request body", func(t *testing.T) {
		w := do("body", `{"resourceType":"Patient"}`, patient)
		if got := w.Header().Get("X-Body-Len-Seen"); got != "26" {
			t.Errorf("body length seen = %q", got)
		}
		w = do("body", strings.Repeat("x", 2<<20), patient)
		if got := w.Header().Get("X-Body-Len-Seen"); got != "too large" {
			t.Errorf("large body = %q", got)
		}
	})
	t.Run("large response streams", func(t *testing.T) {
		big := strings.Repeat("y", 5<<20)
		w := do("body", "", big)
		if w.Body.Len() != len(big) || w.Header().Get("X-Resp-Body") != ErrTooLargeText {
			t.Errorf("got %d bytes, X-Resp-Body %q", w.Body.Len(), w.Header().Get("X-Resp-Body"))
		}
	})
	t.Run("panic fails closed", func(t *testing.T) {
		w := do("panic", "", patient)
		if w.Code != 500 || strings.Contains(w.Body.String(), "p1") {
			t.Errorf("got %d %q", w.Code, w.Body)
		}
		if got := counterValue(t, reg, MetricFailures, map[string]string{"phase": "response"}); got != 1 {
			t.Errorf("response failures = %v", got)
		}
	})
}

// ErrTooLargeText is the SDK's ErrTooLarge message.
const ErrTooLargeText = "omnigate: body too large"

func TestConcurrency(t *testing.T) {
	p, logs, _ := newPlugin(t, guest(t, "testguest"), func(o *Options) {
		o.Instances = 3
		o.QueueTimeout = time.Minute // replacements start slowly under the race detector
		// Panics come in bursts of a dozen here: neither the breaker nor
		// the restart rate is what this test is about.
		o.BreakerFailures = -1
		o.RestartRate = 1e6
	})
	const workers, each = 12, 40
	var wg sync.WaitGroup
	var bad atomic.Int32
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < each; j++ {
				test := "echo"
				if j%10 == 9 {
					test = "panic" // instances die and are replaced meanwhile
				}
				w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", test))
				if test == "echo" && w.Code != 200 || test == "panic" && w.Code != 500 {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d requests got the wrong answer\n%s", bad.Load(), logs)
	}
	n, _, _ := p.opts.KV.Get(context.Background(), "wasm:test:hits")
	if want := workers * each * 9 / 10; string(n) != strconv.Itoa(want) {
		t.Errorf("hits = %s, want %d", n, want)
	}
}

// holdingKV is a MemoryKV whose Get of the key "hold" blocks until the test
// releases it, so a guest call can hold its instance for as long as a test
// needs, whatever the machine's speed. entered is closed when it blocks.
type holdingKV struct {
	*MemoryKV
	enterOnce sync.Once
	entered   chan struct{}
	release   chan struct{}
}

func newHoldingKV() *holdingKV {
	return &holdingKV{MemoryKV: NewMemoryKV(MemoryKVOptions{}), entered: make(chan struct{}), release: make(chan struct{})}
}

func (kv *holdingKV) Get(ctx context.Context, key string) ([]byte, bool, error) {
	if strings.HasSuffix(key, ":hold") {
		kv.enterOnce.Do(func() { close(kv.entered) })
		<-kv.release
	}
	return kv.MemoryKV.Get(ctx, key)
}

func TestQueueTimeout(t *testing.T) {
	kv := newHoldingKV()
	p, _, reg := newPlugin(t, guest(t, "testguest"), func(o *Options) {
		o.Instances = 1
		o.QueueTimeout = time.Millisecond
		o.KV = kv
	})
	release := sync.OnceFunc(func() { close(kv.release) })
	defer release() // also when the test fails early
	held := make(chan *httptest.ResponseRecorder, 1)
	go func() { held <- serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "hold")) }()
	select {
	case <-kv.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the guest never took the instance")
	}
	// The only instance is held until released: the request waits out the
	// queue timeout, however long the wait takes.
	w := serve(p, "GET", "/fhir/R4/Patient/p1")
	release()
	if w.Code != 500 {
		t.Fatalf("status %d", w.Code)
	}
	if got := counterValue(t, reg, MetricFailures, map[string]string{"kind": "busy"}); got != 1 {
		t.Errorf("busy failures = %v", got)
	}
	select {
	case w := <-held:
		if w.Code != 200 {
			t.Errorf("the held request got %d", w.Code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held request did not finish after its release")
	}
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

func TestHotReloadUnderLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "plugin.wasm")
	copyFile(t, guest(t, "testguest"), path)
	p, logs, reg := newPlugin(t, path, func(o *Options) { o.WatchInterval = 10 * time.Millisecond })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("plugin log:\n%s", logs)
		}
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	stopWorkers := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer stopWorkers() // also when the test fails early
	var total, bad atomic.Int32
	var sawNew atomic.Bool
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				w := serve(p, "GET", "/fhir/R4/Patient/p1", withHeader("X-Test", "status"))
				total.Add(1)
				if w.Code != 200 {
					bad.Add(1)
				}
				if w.Header().Get("X-Module") == "respguest" {
					sawNew.Store(true)
				}
			}
		}()
	}
	// servedMore waits until the workers have served a few more requests.
	servedMore := func(what string) {
		t.Helper()
		n := total.Load()
		waitFor(t, what, func() bool { return total.Load() >= n+8 })
	}
	servedMore("requests on the first module")
	copyFile(t, guest(t, "respguest"), path)
	waitFor(t, "the new module to serve", sawNew.Load)
	// A module that does not load leaves the new one serving.
	os.WriteFile(path, []byte("garbage"), 0o644)
	waitFor(t, "the failed reload", func() bool {
		return counterValue(t, reg, MetricReloads, map[string]string{"result": "failure"}) >= 1
	})
	if h := p.Health(); h.Status != gateway.StatusDegraded {
		t.Errorf("health after a failed reload = %+v", h)
	}
	servedMore("requests after the failed reload")
	stopWorkers()
	if bad.Load() != 0 {
		t.Fatalf("%d of %d requests failed during reloads\n%s", bad.Load(), total.Load(), logs)
	}
	if got := counterValue(t, reg, MetricReloads, map[string]string{"result": "success"}); got != 1 {
		t.Errorf("successful reloads = %v", got)
	}
	if w := serve(p, "GET", "/fhir/R4/Patient/p1"); w.Header().Get("X-Module") != "respguest" {
		t.Errorf("after a failed reload the module changed")
	}
	t.Logf("%d requests during two reloads", total.Load())
}

func TestResponsePhaseLengths(t *testing.T) {
	p, _, _ := newPlugin(t, guest(t, "respguest"), nil)
	for _, tc := range []struct {
		method     string
		status     int
		wantLength string
	}{
		{"HEAD", 200, "36"},
		{"DELETE", 204, ""},
		{"GET", 200, "36"},
	} {
		t.Run(tc.method, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, "/fhir/R4/Patient/p1", nil)
			r = r.WithContext(gateway.NewRequestContext(r.Context(), fhirRoute, "req-3", nil))
			w := httptest.NewRecorder()
			p.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "36")
				w.WriteHeader(tc.status)
				if r.Method == "GET" {
					io.WriteString(w, `{"resourceType":"Patient","id":"p1"}`)
				}
			}))
			if w.Code != tc.status || w.Header().Get("Content-Length") != tc.wantLength || w.Header().Get("X-Module") != "respguest" {
				t.Errorf("got %d, Content-Length %q, %v", w.Code, w.Header().Get("Content-Length"), w.Header())
			}
		})
	}
}

func TestUnusableCacheDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	p, logs, _ := newPlugin(t, moduleFile(t, "allow", allowAll), func(o *Options) { o.CacheDir = filepath.Join(file, "sub") })
	if w := serve(p, "GET", "/fhir/R4/Patient/1"); w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
	if !strings.Contains(logs.String(), "compilation cache unavailable") {
		t.Errorf("no warning:\n%s", logs)
	}
}
