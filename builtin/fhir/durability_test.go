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
	path := filepath.Join(t.TempDir(), "store", "omnigate.db")
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
	const writers = 4
	var wg sync.WaitGroup
	deadline := time.Now().Add(1500 * time.Millisecond)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline) || i < 20; i++ {
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
					mu.Unlock()
				}
			}
		}()
	}
	// Kill while the writers are busy.
	time.Sleep(time.Until(deadline) - 200*time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	cmd.Wait()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(acked) < 10 {
		t.Fatalf("only %d writes acknowledged before the kill", len(acked))
	}

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
