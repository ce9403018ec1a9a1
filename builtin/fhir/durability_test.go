package fhir

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const durabilityEnv = "OMNIGATE_FHIR_DURABILITY_STORE"

// TestDurabilityChild is the server process of TestKillDuringWrites: it
// serves the store named by the environment until it is killed.
func TestDurabilityChild(t *testing.T) {
	path := os.Getenv(durabilityEnv)
	if path == "" {
		t.Skip("runs as the child of TestKillDuringWrites")
	}
	cfg := DefaultConfig()
	cfg.Store.Path = path
	h, err := Open(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	http.Serve(ln, h)
}

// Every write acknowledged before a kill -9 of the server is there after
// a restart.
func TestKillDuringWrites(t *testing.T) {
	path := testStorePath(t, filepath.Join(t.TempDir(), "store", "omnigate.db"))
	cmd := exec.Command(os.Args[0], "-test.run=^TestDurabilityChild$", "-test.v")
	cmd.Env = append(os.Environ(), durabilityEnv+"="+path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	var addr string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		t.Fatal("the child did not start")
	}
	go func() {
		for sc.Scan() {
		}
	}()

	client := &http.Client{Timeout: 10 * time.Second}
	var mu sync.Mutex
	acked := map[string]int{} // id -> last acknowledged version
	// The kill comes once enough writes are acknowledged, while the
	// writers are still busy: what is checked does not depend on the
	// machine's speed.
	const writers, killAfter, maxWrites = 4, 40, 5000
	enough := make(chan struct{})
	var enoughOnce sync.Once
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxWrites; i++ {
				id := fmt.Sprintf("w%d-%d", w, i/3)
				version := i%3 + 1
				body := fmt.Sprintf(`{"resourceType":"Patient","id":%q,"birthDate":"19%02d-01-01"}`, id, version)
				req, _ := http.NewRequest("PUT", "http://"+addr+"/fhir/R4/Patient/"+id, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/fhir+json")
				resp, err := client.Do(req)
				if err != nil {
					return // the server is gone
				}
				resp.Body.Close()
				if resp.StatusCode == 200 || resp.StatusCode == 201 {
					mu.Lock()
					acked[id] = version
					if len(acked) >= killAfter {
						enoughOnce.Do(func() { close(enough) })
					}
					mu.Unlock()
				}
			}
		}()
	}
	select {
	case <-enough:
	case <-time.After(2 * time.Minute):
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		t.Fatalf("only %d writes acknowledged in 2 minutes, want %d before the kill", n, killAfter)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	cmd.Wait()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()

	cfg := DefaultConfig()
	cfg.Store.Path = path
	h, err := Open(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer h.Close()
	lost := 0
	for id, version := range acked {
		r := do(t, h, "GET", "/fhir/R4/Patient/"+id, nil)
		if r.status != 200 {
			lost++
			t.Errorf("%s: acknowledged, then %d after the kill", id, r.status)
			continue
		}
		got, _ := strconv.Atoi(r.json(t)["meta"].(map[string]any)["versionId"].(string))
		if got < version {
			lost++
			t.Errorf("%s: version %d acknowledged, version %d after the kill", id, version, got)
		}
	}
	t.Logf("%d resources acknowledged before kill -9, %d lost", len(acked), lost)
}
