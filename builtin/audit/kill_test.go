package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/omnigate/omnigate/gateway"
)

const killEnv = "OMNIGATE_AUDIT_CHILD_CONFIG"

// TestAuditChild is the gateway process of TestKillNine: it serves the
// config file named by the environment until it is killed.
func TestAuditChild(t *testing.T) {
	path := os.Getenv(killEnv)
	if path == "" {
		t.Skip("runs as the child of TestKillNine")
	}
	cfg, err := gateway.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.New(context.Background(), cfg, gateway.Options{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("listening %s admin %s\n", srv.Addr(), srv.AdminAddr())
	select {}
}

// child is a gateway process.
type child struct {
	cmd         *exec.Cmd
	addr, admin string
}

func startChild(t *testing.T, config string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestAuditChild$", "-test.v")
	cmd.Env = append(os.Environ(), killEnv+"="+config)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "listening %s admin %s", &c.addr, &c.admin); err == nil {
			break
		}
	}
	if c.addr == "" {
		t.Fatal("the child did not start")
	}
	go io.Copy(io.Discard, stdout)
	return c
}

var client = &http.Client{Timeout: 20 * time.Second}

// request sends a request with id rid and reports whether it was answered
// with a 2xx.
func (c *child) request(method, path, body, rid string) bool {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://"+c.addr+path, rd)
	req.Header.Set("X-Request-Id", rid)
	req.Header.Set("X-Test-User", "dr-house")
	req.Header.Set("X-Test-Role", "physician")
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode/100 == 2
}

func (c *child) stats(t *testing.T) (Stats, bool) {
	resp, err := client.Get("http://" + c.admin + "/admin/audit/stats")
	if err != nil {
		return Stats{}, false
	}
	defer resp.Body.Close()
	var out struct {
		Plugins map[string]Stats `json:"plugins"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return Stats{}, false
	}
	return out.Plugins["audit"], true
}

// requestIDs returns the X-Request-Id of every AuditEvent in the child's
// store.
func (c *child) requestIDs(t *testing.T) map[string]bool {
	t.Helper()
	resp, err := client.Get("http://" + c.admin + "/admin/audit/events?count=1000")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b struct {
		Total int `json:"total"`
		Entry []struct {
			Resource map[string]any `json:"resource"`
		} `json:"entry"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
		t.Fatal(err)
	}
	if b.Total > len(b.Entry) {
		t.Fatalf("%d AuditEvents, more than a page", b.Total)
	}
	out := map[string]bool{}
	for _, e := range b.Entry {
		out[requestIDOf(e.Resource)] = true
	}
	return out
}

// kill -9 of the gateway loses no record of a request answered before a
// flush that the plugin reported complete: after a restart on the same
// spool and store, each of them is in both sinks.
func TestKillNine(t *testing.T) {
	dir := t.TempDir()
	sinkFile := filepath.Join(dir, "audit.jsonl")
	config := filepath.Join(dir, "omnigate.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`
listen: "127.0.0.1:0"
admin: "127.0.0.1:0"
log: {access_log: false}
fhir:
  store: {path: %q}
plugins:
  as: {type: as}
  audit:
    type: audit
    spool_dir: %q
    flush_interval: 20ms
    retry_min: 10ms
    retry_max: 200ms
    sinks: [{type: fhir}, {type: file, path: %q}]
routes:
  - name: fhir
    fhir: true
    plugins: [as, audit]
`, filepath.Join(dir, "store", "omnigate.db"), filepath.Join(dir, "spool"), sinkFile)), 0o600)

	c := startChild(t, config)
	const n = 40
	var wg sync.WaitGroup
	failed := atomic.Int64{}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := w; j < n/2; j += 4 { // a write, then a read of it
				put := c.request("PUT", fmt.Sprintf("/fhir/R4/Patient/k%d", j), fmt.Sprintf(`{"resourceType":"Patient","id":"k%d"}`, j), fmt.Sprintf("kill-%d", 2*j))
				get := c.request("GET", fmt.Sprintf("/fhir/R4/Patient/k%d", j), "", fmt.Sprintf("kill-%d", 2*j+1))
				if !put || !get {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed before the kill", failed.Load())
	}
	// The condition: a flush that covers the n records has completed.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if st, ok := c.stats(t); ok && st.Flushed >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the plugin did not report %d records flushed within 2 minutes", n)
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Traffic goes on until the kill; those records may or may not
	// survive.
	stop := make(chan struct{})
	var late atomic.Int64
	var bg sync.WaitGroup
	for w := range 2 {
		bg.Add(1)
		go func() {
			defer bg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if c.request("GET", "/fhir/R4/Patient/k0", "", fmt.Sprintf("late-%d-%d", w, i)) {
					late.Add(1)
				}
			}
		}()
	}
	eventually(t, "traffic after the flush", func() bool { return late.Load() >= 10 })
	before, _ := c.stats(t)
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.cmd.Wait()
	close(stop)
	bg.Wait()

	c2 := startChild(t, config)
	deadline = time.Now().Add(2 * time.Minute)
	for {
		st, ok := c2.stats(t)
		caughtUp := ok && len(st.Sinks) == 2
		for _, s := range st.Sinks {
			caughtUp = caughtUp && s.BehindBytes == 0
		}
		if caughtUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted gateway did not ship its spool within 2 minutes: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	inFile := map[string]bool{}
	for _, r := range readRecords(t, sinkFile) {
		inFile[r.RequestID] = true
	}
	inStore := c2.requestIDs(t)
	lost := 0
	for i := range n {
		rid := fmt.Sprintf("kill-%d", i)
		if !inFile[rid] || !inStore[rid] {
			lost++
			t.Errorf("%s: answered and flushed before the kill; in the file sink %v, in the FHIR store %v", rid, inFile[rid], inStore[rid])
		}
	}
	kept := 0
	for rid := range inStore {
		if strings.HasPrefix(rid, "late-") {
			kept++
		}
	}
	t.Logf("%d requests flushed before kill -9, %d lost; %d answered after, %d of them recorded (just before the kill: %d records appended, %d flushed)",
		n, lost, late.Load(), kept, before.Appended, before.Flushed)
}
