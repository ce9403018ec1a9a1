package main

import (
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, url string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Cache"), string(b)
}

// TestPeerTargets checks that every peer target serves the upstream's
// body, and that the cache targets answer hits, so the benchmark measures
// what it says.
func TestPeerTargets(t *testing.T) {
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Skip("nginx not installed (Debian: apt-get install -y nginx): the peer targets are not checked")
	}
	bare, err := serve(bareHandler())
	if err != nil {
		t.Fatal(err)
	}
	ts, cleanup, err := peerTargets(bare, io.Discard, true, regexp.MustCompile(""))
	defer cleanup()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, tg := range ts {
		names[tg.name] = true
		url := tg.url + "/fhir/R4/Patient/example"
		get(t, url)
		status, xcache, body := get(t, url)
		if status != 200 || !strings.Contains(body, `"resourceType":"Patient"`) {
			t.Errorf("%s: status %d, body %.80s", tg.name, status, body)
		}
		if strings.HasPrefix(tg.name, "cache-") && xcache != "HIT" {
			t.Errorf("%s: second GET X-Cache %q, want HIT", tg.name, xcache)
		}
		if tg.extraCPU != nil && tg.extraCPU() < 0 {
			t.Errorf("%s: negative CPU", tg.name)
		}
	}
	for _, want := range []string{"cache-gateway", "limit-gateway", "proxy-nginx", "cache-nginx", "limit-nginx"} {
		if !names[want] {
			t.Errorf("target %s missing (have %v)", want, names)
		}
	}
}
