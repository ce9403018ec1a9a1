package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// budgetRequest is a POST of body as it enters a route: on a request
// state drawing on b.
func budgetRequest(b *bodyBudget, body io.Reader, contentLength int64) (*http.Request, *reqState) {
	st := &reqState{}
	st.res.b = b
	r := httptest.NewRequest("POST", "/x", body)
	st.res.ctx = r.Context()
	r.ContentLength = contentLength
	r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
	r.Body = newRequestBody(st, io.NopCloser(body), contentLength)
	return r, st
}

func newBudget(limit int64) *bodyBudget {
	b := &bodyBudget{}
	b.limit.Store(limit)
	return b
}

func TestReadBodySharesOneChargedCopy(t *testing.T) {
	b := newBudget(1 << 20)
	body := bytes.Repeat([]byte("x"), 100_000)
	r, st := budgetRequest(b, bytes.NewReader(body), int64(len(body)))
	b1, err := ReadBody(r.Context(), r, -1)
	if err != nil || !bytes.Equal(b1, body) {
		t.Fatalf("ReadBody: %d bytes, %v", len(b1), err)
	}
	held := b.used.Load()
	if held < int64(len(body)) || held > int64(len(body))+fillStart {
		t.Errorf("charged %d for a body of %d", held, len(body))
	}
	b2, err := ReadBody(r.Context(), r, -1)
	if err != nil || &b2[0] != &b1[0] || b.used.Load() != held {
		t.Errorf("second ReadBody: copied or charged again (%v, used %d, held %d)", err, b.used.Load(), held)
	}
	// A plugin that copies the body out itself is charged for its copy.
	raw, err := io.ReadAll(r.Body)
	if err != nil || !bytes.Equal(raw, body) {
		t.Fatalf("raw read after ReadBody: %d bytes, %v", len(raw), err)
	}
	if b.used.Load() < held+int64(len(body)) {
		t.Errorf("raw copy not charged: used %d, held %d", b.used.Load(), held)
	}
	// It puts its copy back, as plugins do; the handler after it reads
	// that whole, into a buffer of its own.
	r.Body = io.NopCloser(bytes.NewReader(raw))
	b3, err := ReadBody(r.Context(), r, -1)
	if err != nil || !bytes.Equal(b3, body) || &b3[0] == &b1[0] {
		t.Errorf("ReadBody after a raw read: %d bytes, %v", len(b3), err)
	}
	st.res.end()
	if b.used.Load() != 0 {
		t.Errorf("after the request: %d bytes still held", b.used.Load())
	}
	// Charges after the end are not counted (late readers).
	st.res.grow(10, false)
	if b.used.Load() != 0 {
		t.Errorf("charged after the request ended")
	}
}

func TestReadBodyUnknownLengthAndLimit(t *testing.T) {
	b := newBudget(0) // off: counted, nothing refused
	body := bytes.Repeat([]byte("y"), 300_000)
	r, _ := budgetRequest(b, bytes.NewReader(body), -1)
	if _, err := ReadBody(r.Context(), r, 1000); !isMaxBytes(err, 1000) {
		t.Fatalf("over the caller's limit: %v", err)
	}
	// The body stays whole for the next reader, with a larger limit.
	got, err := ReadBody(r.Context(), r, -1)
	if err != nil || !bytes.Equal(got, body) || r.ContentLength != int64(len(body)) {
		t.Fatalf("after a limit error: %d bytes, %v, ContentLength %d", len(got), err, r.ContentLength)
	}
	// A declared length over the limit is refused before reading.
	r, _ = budgetRequest(b, bytes.NewReader(body), int64(len(body)))
	if _, err := ReadBody(r.Context(), r, 1000); !isMaxBytes(err, 1000) {
		t.Fatalf("declared length over the limit: %v", err)
	}
	if b.refused.Load() != 0 {
		t.Errorf("budget off, yet %d reservations refused", b.refused.Load())
	}
}

func isMaxBytes(err error, limit int64) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe) && mbe.Limit == limit
}

func TestReadBodyClientErrorIsReplayed(t *testing.T) {
	boom := errors.New("connection reset")
	src := io.MultiReader(strings.NewReader("partial"), &failReader{boom})
	r, _ := budgetRequest(newBudget(1<<20), src, 100)
	if _, err := ReadBody(r.Context(), r, -1); !errors.Is(err, boom) {
		t.Fatalf("ReadBody: %v", err)
	}
	got, err := io.ReadAll(r.Body)
	if string(got) != "partial" || !errors.Is(err, boom) {
		t.Errorf("next reader: %q, %v", got, err)
	}
	if _, err := ReadBody(r.Context(), r, -1); !errors.Is(err, boom) {
		t.Errorf("ReadBody again: %v", err)
	}
}

type failReader struct{ err error }

func (f *failReader) Read([]byte) (int, error) { return 0, f.err }

// TestSlowSenderHoldsLittleBudget: a client that declares a large body and
// sends it slowly holds only what has arrived (to the next buffer size),
// not what it declared.
func TestSlowSenderHoldsLittleBudget(t *testing.T) {
	b := newBudget(64 << 20)
	pr, pw := io.Pipe()
	r, st := budgetRequest(b, pr, 13<<20)
	done := make(chan error, 1)
	go func() {
		_, err := ReadBody(r.Context(), r, -1)
		done <- err
	}()
	pw.Write([]byte("{\"resourceType\":"))
	if used := b.used.Load(); used == 0 || used > fillStart {
		t.Errorf("holds %d bytes for 16 sent of 13MiB declared", used)
	}
	pw.CloseWithError(errors.New("read timeout"))
	if err := <-done; err == nil {
		t.Errorf("ReadBody of a cut body succeeded")
	}
	st.res.end()
}

// TestBudgetOneWaiter: when the budget is full, the first request that
// needs room waits for it; meanwhile every other request that needs room
// is refused at once, so that the holders give it back.
func TestBudgetOneWaiter(t *testing.T) {
	b := newBudget(100_000)
	b.wait = time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	holder := &reservation{b: b, ctx: ctx}
	if err := holder.grow(80_000, true); err != nil {
		t.Fatal(err)
	}
	waiter := &reservation{b: b, ctx: ctx}
	got := make(chan error, 1)
	go func() { got <- waiter.grow(50_000, true) }()
	waitFor(t, "a waiter", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.waiting
	})
	// Room for this one, but a request waits: refused, waiting or not.
	other := &reservation{b: b, ctx: ctx}
	if err := other.grow(1000, true); !errors.Is(err, ErrBodyBudget) {
		t.Errorf("while another waits: %v", err)
	}
	select {
	case err := <-got:
		t.Fatalf("the waiter went on with the budget full: %v", err)
	default:
	}
	holder.end()
	if err := <-got; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if b.used.Load() != 50_000 {
		t.Errorf("used %d", b.used.Load())
	}
	// A waiter whose request ends gives up.
	holder = &reservation{b: b, ctx: ctx}
	holder.grow(50_000, true)
	wctx, wcancel := context.WithCancel(context.Background())
	late := &reservation{b: b, ctx: wctx}
	go func() { got <- late.grow(10_000, true) }()
	waitFor(t, "a waiter", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.waiting
	})
	wcancel()
	if err := <-got; !errors.Is(err, ErrBodyBudget) {
		t.Errorf("cancelled waiter: %v", err)
	}
	holder.end()
	waiter.end()
	if b.used.Load() != 0 {
		t.Errorf("%d bytes held after every request ended", b.used.Load())
	}
}

func TestOverBudgetAndStreamingReads(t *testing.T) {
	b := newBudget(200_000)
	body := bytes.Repeat([]byte("z"), 150_000)
	r1, st1 := budgetRequest(b, bytes.NewReader(body), int64(len(body)))
	if _, err := ReadBody(r1.Context(), r1, -1); err != nil {
		t.Fatal(err)
	}
	r2, st2 := budgetRequest(b, bytes.NewReader(body), int64(len(body)))
	if _, err := ReadBody(r2.Context(), r2, -1); !errors.Is(err, ErrBodyBudget) || !st2.res.over.Load() {
		t.Fatalf("second body over the budget: %v, marked %t", err, st2.res.over.Load())
	}
	// The refusal sticks: no later reader, not even one that streams the
	// body on, gets it once room is back.
	st1.res.end()
	st2.streamBody.Store(true)
	if _, err := io.ReadAll(r2.Body); !errors.Is(err, ErrBodyBudget) {
		t.Errorf("streaming read of a refused body: %v", err)
	}
	if err := ReserveBody(r2.Context(), 1); !errors.Is(err, ErrBodyBudget) {
		t.Errorf("charge after the refusal: %v", err)
	}
	r1, st1 = budgetRequest(b, bytes.NewReader(body), int64(len(body)))
	if _, err := ReadBody(r1.Context(), r1, -1); err != nil {
		t.Fatal(err)
	}
	// A response capture that does not fit is refused without failing
	// the request; one the request cannot do without fails it.
	r3, st3 := budgetRequest(b, strings.NewReader(""), 0)
	if TryReserveBody(r3.Context(), 100_000) || st3.res.over.Load() {
		t.Errorf("TryReserveBody over the budget succeeded or marked the request")
	}
	if err := ReserveBody(r3.Context(), 100_000); !errors.Is(err, ErrBodyBudget) || !st3.res.over.Load() {
		t.Errorf("ReserveBody over the budget: %v, marked %t", err, st3.res.over.Load())
	}
	// A terminal that streams the body on reads it free.
	r4, st4 := budgetRequest(b, bytes.NewReader(body), int64(len(body)))
	st4.streamBody.Store(true)
	if n, err := io.Copy(io.Discard, r4.Body); err != nil || n != int64(len(body)) {
		t.Errorf("streamed read: %d, %v", n, err)
	}
	st1.res.end()
	// One large request gets through while small ones hold a quarter:
	// what it asks beyond three quarters of the budget is granted
	// uncounted.
	r6, st6 := budgetRequest(b, strings.NewReader(""), 0)
	if err := ReserveBody(r6.Context(), 50_000); err != nil {
		t.Fatal(err)
	}
	r5, st5 := budgetRequest(b, strings.NewReader(""), 0)
	if err := ReserveBody(r5.Context(), 10<<20); err != nil || b.used.Load() != 200_000 {
		t.Errorf("large request over the budget: %v, used %d", err, b.used.Load())
	}
	st6.res.end()
	for _, st := range []*reqState{st2, st3, st4, st5} {
		st.res.end()
	}
	if b.used.Load() != 0 {
		t.Errorf("%d bytes held after every request ended", b.used.Load())
	}
}

// TestRefusedRequestNeverReachesTerminal: once memory a request needs did
// not fit, its handler (FHIR server, upstream) does not run, even if room
// is back by then: the client is told 503 and nothing was done.
func TestRefusedRequestNeverReachesTerminal(t *testing.T) {
	srv, _ := newTestServer(t, "routes:\n  - fhir: true\n")
	called := false
	term := &terminal{name: "t", srv: srv, h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { called = true })}
	rec := httptest.NewRecorder()
	st := &reqState{route: srv.cur.Load().unmatchedFHIR}
	st.sw.ResponseWriter, st.sw.st = rec, st
	st.res.over.Store(true)
	r := httptest.NewRequest("POST", "/fhir/R4/Patient", strings.NewReader("{}"))
	r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
	term.ServeHTTP(&st.sw, r)
	if called || rec.Code != 503 || rec.Header().Get("Retry-After") != "1" || !strings.Contains(rec.Body.String(), "OperationOutcome") {
		t.Errorf("terminal called %t; answer %d %v %s", called, rec.Code, rec.Header(), rec.Body)
	}
}

// holdGate holds requests to /fhir/R4/hold of the fake FHIR handler after
// they have read their body, until released.
type holdGate struct {
	arrived chan int
	release chan struct{}
}

var currentHold atomic.Pointer[holdGate]

func newHoldGate(t *testing.T) *holdGate {
	g := &holdGate{arrived: make(chan int, 16), release: make(chan struct{})}
	currentHold.Store(g)
	t.Cleanup(func() {
		currentHold.CompareAndSwap(g, nil)
		g.open()
	})
	return g
}

func (g *holdGate) open() {
	select {
	case <-g.release:
	default:
		close(g.release)
	}
}

// serveHold reads the body as a handler does (ReadBody, 400 when that
// fails), waits at the hold gate, and answers the body's length.
func serveHold(w http.ResponseWriter, r *http.Request) {
	body, err := ReadBody(r.Context(), r, -1)
	if err != nil {
		writeError(w, http.StatusBadRequest, "read request body: "+err.Error(), true)
		return
	}
	if g := currentHold.Load(); g != nil && r.URL.Query().Get("hold") != "" {
		g.arrived <- len(body)
		<-g.release
	}
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, strconv.Itoa(len(body)))
}

func waitArrived(t *testing.T, g *holdGate) {
	t.Helper()
	select {
	case <-g.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("held request did not arrive")
	}
}

// TestOverBudgetAnswers503: a request whose body does not fit the budget
// gets 503 with Retry-After, an OperationOutcome on a FHIR route, in place
// of the handler's own answer to the failed read.
func TestOverBudgetAnswers503(t *testing.T) {
	srv, _ := newTestServer(t, `
server:
  max_body: 32KiB
  body_budget: 32KiB
routes:
  - fhir: true
`)
	srv.budget.wait = 0 // refuse at once; waiting is TestBudgetOneWaiter's
	g := newHoldGate(t)
	body := strings.Repeat("a", 20_000)
	first := make(chan *httptest.ResponseRecorder, 1)
	go func() { first <- do(srv, "POST", "/fhir/R4/hold?hold=1", strings.NewReader(body)) }()
	waitArrived(t, g)

	rec := do(srv, "POST", "/fhir/R4/hold", strings.NewReader(body))
	if rec.Code != 503 || rec.Header().Get("Retry-After") != "1" ||
		!strings.Contains(rec.Body.String(), `"resourceType":"OperationOutcome"`) || strings.Contains(rec.Body.String(), "read request body") {
		t.Errorf("over budget: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	if m := scrape(t, srv); !strings.Contains(m, `omnigate_http_requests_rejected_total{reason="body_budget"} 1`) {
		t.Errorf("/metrics lacks the rejection")
	}
	g.open()
	if rec := <-first; rec.Code != 200 || rec.Body.String() != "20000" {
		t.Errorf("held request: %d %s", rec.Code, rec.Body)
	}
	if rec := do(srv, "POST", "/fhir/R4/hold", strings.NewReader(body)); rec.Code != 200 {
		t.Errorf("after the first ended: %d %s", rec.Code, rec.Body)
	}
	if n := srv.budget.used.Load(); n != 0 {
		t.Errorf("%d bytes held with no request in flight", n)
	}
}

// startLoopback serves yaml on a loopback port.
func startLoopback(t *testing.T, yaml string) *Server {
	t.Helper()
	srv, _ := newTestServer(t, "listen: 127.0.0.1:0\nadmin: \"off\"\n"+yaml)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	return srv
}

func TestMaxInFlightAnswers503(t *testing.T) {
	srv := startLoopback(t, "server:\n  max_in_flight: 2\nroutes:\n  - fhir: true\n")
	g := newHoldGate(t)
	base := "http://" + srv.Addr()
	done := make(chan int, 2)
	for range 2 {
		go func() {
			res, err := http.Post(base+"/fhir/R4/hold?hold=1", "text/plain", strings.NewReader("x"))
			if err != nil {
				done <- 0
				return
			}
			res.Body.Close()
			done <- res.StatusCode
		}()
		waitArrived(t, g)
	}
	res, err := http.Get(base + "/fhir/R4/Patient/1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 503 || res.Header.Get("Retry-After") != "1" || !strings.Contains(string(b), "OperationOutcome") {
		t.Errorf("third request: %d %v %s", res.StatusCode, res.Header, b)
	}
	if m := scrape(t, srv); !strings.Contains(m, `omnigate_http_requests_rejected_total{reason="in_flight"} 1`) {
		t.Errorf("/metrics lacks the rejection")
	}
	g.open()
	for range 2 {
		if code := <-done; code != 200 {
			t.Errorf("held request: %d", code)
		}
	}
	if res, err := http.Get(base + "/fhir/R4/Patient/1"); err != nil || res.StatusCode != 200 {
		t.Errorf("after: %v %v", res, err)
	} else {
		res.Body.Close()
	}
}

// TestMaxConnectionsHoldsAtAccept: over max_connections, a new connection
// waits to be accepted until another closes.
func TestMaxConnectionsHoldsAtAccept(t *testing.T) {
	srv := startLoopback(t, "server:\n  max_connections: 2\nroutes:\n  - fhir: true\n")
	var idle []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	got := make(chan string, 1)
	go func() {
		c := &http.Client{Timeout: 20 * time.Second}
		res, err := c.Get("http://" + srv.Addr() + "/fhir/R4/Patient/1")
		if err != nil {
			got <- err.Error()
			return
		}
		res.Body.Close()
		got <- fmt.Sprint(res.StatusCode)
	}()
	select {
	case s := <-got:
		t.Fatalf("served over max_connections: %s", s)
	case <-time.After(300 * time.Millisecond):
	}
	idle[0].Close()
	select {
	case s := <-got:
		if s != "200" {
			t.Errorf("once a connection closed: %s", s)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("not served after a connection closed")
	}
}

// waitFor waits until cond holds, failing the test after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
