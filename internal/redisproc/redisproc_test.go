package redisproc

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestPersistentRestartKeepsData(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		persistent bool
		stop       func(*Server)
		want       string
	}{
		{"persistent, SIGTERM", true, (*Server).Shutdown, "v"},
		{"no persistence, SIGKILL", false, (*Server).Kill, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Start(ctx, Options{Dir: t.TempDir(), Persistent: tc.persistent})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Kill()
			if s.Port() == 6379 || s.Port() > 55535 {
				t.Fatalf("port %d", s.Port())
			}
			if _, err := s.Do(ctx, "SET", "k", "v"); err != nil {
				t.Fatal(err)
			}
			pid := s.PID()
			tc.stop(s)
			if s.Running() || s.PID() != 0 {
				t.Fatal("running after stop")
			}
			if _, err := s.Do(ctx, "PING"); err == nil {
				t.Fatal("PING answered after stop")
			}
			if err := s.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			if s.PID() == pid {
				t.Error("same pid after restart")
			}
			if got, err := s.Do(ctx, "GET", "k"); err != nil || got != tc.want {
				t.Fatalf("GET k = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestCluster(t *testing.T) {
	ctx := context.Background()
	c, err := StartCluster(ctx, ClusterOptions{Dir: t.TempDir(), Persistent: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Addrs()) != 3 {
		t.Fatalf("addrs %v", c.Addrs())
	}
	info, err := c.Nodes[0].Do(ctx, "CLUSTER", "INFO")
	if err != nil || !strings.Contains(info, "cluster_slots_assigned:16384") || !strings.Contains(info, "cluster_known_nodes:3") {
		t.Fatalf("CLUSTER INFO = %q, %v", info, err)
	}
	c.Shutdown()
	if len(c.PIDs()) != 0 {
		t.Fatal("nodes running after Shutdown")
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestSentinelFailover(t *testing.T) {
	ctx := context.Background()
	s, err := StartSentinel(ctx, SentinelOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr, err := s.MasterAddr(ctx)
	if err != nil || addr != s.Primary.Addr() {
		t.Fatalf("master %q, %v; want %s", addr, err, s.Primary.Addr())
	}
	if _, err := s.Primary.Do(ctx, "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Primary.Do(ctx, "WAIT", "1", "2000"); err != nil || n != "1" {
		t.Fatalf("WAIT 1 = %q, %v: the replica did not acknowledge", n, err)
	}
	s.Primary.Kill()
	start := time.Now()
	next, err := s.WaitMaster(ctx, addr, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("new primary %s after %s", next, time.Since(start).Round(time.Millisecond))
	if next != s.Replica.Addr() {
		t.Fatalf("new primary %s, want the replica %s", next, s.Replica.Addr())
	}
	if got, err := Do(ctx, next, "GET", "k"); err != nil || got != "v" {
		t.Fatalf("GET k on the new primary = %q, %v", got, err)
	}
	if len(s.PIDs()) != 4 {
		t.Errorf("PIDs %v: want replica and 3 sentinels", s.PIDs())
	}
}
