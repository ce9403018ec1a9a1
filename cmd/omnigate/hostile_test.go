package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var hostileCompare = flag.Bool("hostile.compare", false,
	"TestHostileLoadMemory: also run the storm with the body budget off (needs a few GiB free) and print both")

// The hostile load test's limits. The gateway runs with the default body
// budget; its resident memory must stay under the budget plus
// hostileMargin: the process itself (about 75MiB) and the working memory
// one lone request may use beyond the whole budget (decoding a 13MiB
// resource takes about 300MiB at its peak, and a request alone is always
// let through).
const (
	hostileBudget     = 256 << 20
	hostileMargin     = 512 << 20
	hostileAfterSlack = 192 << 20 // over the idle baseline, once the storm is over
	hostileBodies     = 24
	hostileBodySize   = 13 << 20
	hostileSlow       = 16 // slow body senders, and as many slow header senders
)

// plainBinary builds omnigate without the race detector, whose shadow
// memory would swamp the figures.
func plainBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "omnigate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// procMem reads a field (VmRSS, VmHWM) of /proc/PID/status in bytes.
func procMem(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read /proc status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("parse %s: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

func mib(n int64) string { return fmt.Sprintf("%dMiB", n>>20) }

// stormResult is what one storm did to the gateway.
type stormResult struct {
	// Resident memory: idle before, highest, the first reading back
	// under idle + hostileAfterSlack (or the last, 30s after the storm),
	// and hostileSettle after the storm (with -hostile.compare).
	base, peak, after, settled int64
	codes                      map[int]int // answers to the large bodies (0: no answer)
	took, afterTook            time.Duration
}

// hostileSettle is when the compared runs read their resident memory
// after the storm.
const hostileSettle = 15 * time.Second

// largeObservation is a valid Observation of about n bytes.
func largeObservation(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"resourceType":"Observation","status":"final","code":{"text":"load"},"component":[`)
	for i := 0; b.Len() < n-200; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"code":{"text":"component %d of a large observation, with some words"},"valueString":"v%d"}`, i, i)
	}
	b.WriteString("]}")
	return b.Bytes()
}

// runStorm starts the gateway with the given body budget and sends it, at
// once: hostileBodies parallel POSTs of a 13MiB resource, hostileSlow
// clients trickling a body they declare as 13MiB, hostileSlow clients
// trickling their headers, and requests with headers over the limit. It
// checks the answers and returns the memory figures.
func runStorm(t *testing.T, bin, budget string, body []byte) stormResult {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "omnigate.yaml")
	os.WriteFile(cfg, []byte(`
log: {level: info, access_log: false}
server:
  body_budget: `+budget+`
  max_body: 16MiB
  max_connections: 256
  max_in_flight: 128
  read_header_timeout: 2s
  read_timeout: 3s
  max_header_bytes: 64KiB
fhir:
  store: {path: ":memory:"}
plugins:
  audit:
    type: audit
    sinks: [{type: file, path: `+filepath.Join(dir, "audit.jsonl")+`}]
  ratelimit:
    type: ratelimit
    default: {limit: 100000000, window: 1m, burst: 0}
  cache:
    type: cache
routes:
  - name: fhir
    fhir: true
    plugins: [audit, ratelimit, cache]
`), 0o644)
	p := startServeBinary(t, bin, "-config", cfg)
	pid := p.cmd.Process.Pid
	base := "http://" + p.listen
	client := &http.Client{Timeout: 2 * time.Minute}
	if res, err := client.Get(base + "/fhir/R4/metadata"); err != nil || res.StatusCode != 200 {
		t.Fatalf("gateway not serving: %v %v", res, err)
	} else {
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	r := stormResult{base: procMem(t, pid, "VmRSS"), codes: map[int]int{}}
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var fails []string
	fail := func(format string, args ...any) {
		mu.Lock()
		fails = append(fails, fmt.Sprintf(format, args...))
		mu.Unlock()
	}

	// Slow senders: the body declared, then a few bytes at a time; cut by
	// read_timeout.
	for range hostileSlow {
		wg.Go(func() {
			if err := trickle(p.listen, fmt.Sprintf("POST /fhir/R4/Observation HTTP/1.1\r\nHost: h\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n{\"resourceType\":\"Observation\",", hostileBodySize), 15*time.Second); err != nil {
				fail("slow body sender: %v", err)
			}
		})
		wg.Go(func() {
			if err := trickle(p.listen, "GET /fhir/R4/metadata HTTP/1.1\r\nHost: h\r\nX-Slow: ", 15*time.Second); err != nil {
				fail("slow header sender: %v", err)
			}
		})
	}
	// Headers over max_header_bytes: 431.
	for range 8 {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", base+"/fhir/R4/metadata", nil)
			req.Header.Set("X-Huge", strings.Repeat("h", 256<<10))
			res, err := client.Do(req)
			if err != nil {
				fail("huge header: %v", err)
				return
			}
			res.Body.Close()
			if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				fail("huge header: %d", res.StatusCode)
			}
		})
	}
	// Many large bodies at once.
	for range hostileBodies {
		wg.Go(func() {
			res, err := client.Post(base+"/fhir/R4/Observation", "application/fhir+json", bytes.NewReader(body))
			code := 0
			if err == nil {
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				code = res.StatusCode
				if code == 503 && (res.Header.Get("Retry-After") == "" || !bytes.Contains(b, []byte("OperationOutcome"))) {
					fail("503 without Retry-After or OperationOutcome: %v %s", res.Header, b)
				}
			}
			mu.Lock()
			r.codes[code]++
			mu.Unlock()
		})
	}
	// The gateway keeps answering small requests meanwhile.
	if res, err := client.Get(base + "/fhir/R4/metadata"); err != nil {
		fail("metadata during the storm: %v", err)
	} else {
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 && res.StatusCode != 503 {
			fail("metadata during the storm: %d", res.StatusCode)
		}
	}
	wg.Wait()
	r.took = time.Since(start)
	end := time.Now()
	r.peak = procMem(t, pid, "VmHWM")
	for _, f := range fails {
		t.Error(f)
	}
	if res, err := client.Get(base + "/fhir/R4/metadata"); err != nil || res.StatusCode != 200 {
		t.Errorf("metadata after the storm: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	// After the storm: the memory of the burst goes back to the system.
	deadline := end.Add(30 * time.Second)
	for {
		r.after, r.afterTook = procMem(t, pid, "VmRSS"), time.Since(end)
		if r.after <= r.base+hostileAfterSlack || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if *hostileCompare {
		time.Sleep(time.Until(end.Add(hostileSettle)))
		r.settled = procMem(t, pid, "VmRSS")
	}
	return r
}

func (r stormResult) String() string {
	s := fmt.Sprintf("idle %s, peak %s, after %s (%s after the storm)", mib(r.base), mib(r.peak), mib(r.after), r.afterTook.Round(100*time.Millisecond))
	if r.settled > 0 {
		s += fmt.Sprintf(", %s after: %s", hostileSettle, mib(r.settled))
	}
	return s + fmt.Sprintf("; answers %v; storm %s", r.codes, r.took.Round(time.Millisecond))
}

// trickle opens a connection, writes head, then a byte every 100ms until
// the server answers or closes the connection; it fails when that has not
// happened within limit.
func trickle(addr, head string, limit time.Duration) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(limit)
	c.SetDeadline(deadline)
	if _, err := io.WriteString(c, head); err != nil {
		return err
	}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		var b [1]byte
		c.Read(b[:]) // an answer, the close, or the deadline
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ended:
			if !time.Now().Before(deadline) {
				return fmt.Errorf("still open after %s", limit)
			}
			return nil
		case <-tick.C:
			c.Write([]byte("a")) // a failure shows as the close above
		}
	}
}

// TestHostileLoadMemory drives the worst cases at a gateway in a child
// process — many parallel large bodies, slow senders, slow and huge headers
// — and checks that its resident memory stays under the body budget plus
// a fixed margin, that bodies over the budget get 503 with Retry-After,
// and that the memory of the burst is returned once it is over. With
// -hostile.compare it runs the same storm with the budget off and prints
// both (go test -run TestHostileLoadMemory -hostile.compare -v ./cmd/omnigate).
func TestHostileLoadMemory(t *testing.T) {
	bin := plainBinary(t)
	body := largeObservation(hostileBodySize)
	on := runStorm(t, bin, mib(hostileBudget), body)
	t.Logf("body_budget %s: %s", mib(hostileBudget), on)
	if on.peak > hostileBudget+hostileMargin {
		t.Errorf("peak resident memory %s over the budget %s + %s", mib(on.peak), mib(hostileBudget), mib(hostileMargin))
	}
	if on.after > on.base+hostileAfterSlack {
		t.Errorf("resident memory %s 30s after the storm, idle it was %s", mib(on.after), mib(on.base))
	}
	if on.codes[201] == 0 || on.codes[503] == 0 || on.codes[201]+on.codes[503] != hostileBodies {
		t.Errorf("answers to the large bodies: %v; want 201s and 503s only, some of each", on.codes)
	}
	if *hostileCompare {
		off := runStorm(t, bin, "0", body)
		t.Logf("body_budget off: %s", off)
	}
}
