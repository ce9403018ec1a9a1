// Package deploy holds what runs OmniGate in production (the systemd
// unit, the Grafana dashboard, the Prometheus alerting rules) and the
// tests that keep them honest.
package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnitVerifies runs systemd-analyze verify on the unit, with
// ExecStart pointed at an executable that exists here. Any message (an
// unknown key, a bad value) fails the test.
func TestSystemdUnitVerifies(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed: the unit was not verified (apt-get install systemd)")
	}
	unit, err := os.ReadFile("systemd/omnigate.service")
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/usr/local/bin/omnigate serve -config /etc/omnigate/omnigate.yaml") {
		t.Fatal("ExecStart changed; update this test")
	}
	text := strings.ReplaceAll(string(unit), "/usr/local/bin/omnigate", self)
	path := filepath.Join(t.TempDir(), "omnigate.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
