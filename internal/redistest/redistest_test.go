package redistest

import (
	"net"
	"testing"
	"time"
)

func TestStartStopRestart(t *testing.T) {
	s := Start(t)
	if s.Port() == 6379 {
		t.Fatal("must never use the shared port 6379")
	}
	if _, err := s.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Do("GET", "k"); err != nil || got != "v" {
		t.Fatalf("GET k = %q, %v; want v", got, err)
	}
	if got, _ := s.Do("CONFIG", "GET", "save"); got != "save\n" {
		t.Errorf("persistence must be off, CONFIG GET save = %q", got)
	}

	s.Stop()
	if s.Running() {
		t.Fatal("Running after Stop")
	}
	if c, err := net.DialTimeout("tcp", s.Addr(), 100*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("port still accepts connections after Stop")
	}
	if _, err := s.Do("PING"); err == nil {
		t.Fatal("Do succeeded against a stopped server")
	}

	s.Restart()
	if got, err := s.Do("PING"); err != nil || got != "PONG" {
		t.Fatalf("PING after Restart = %q, %v", got, err)
	}
	// No persistence: the restarted server is empty.
	if got, _ := s.Do("GET", "k"); got != "" {
		t.Fatalf("GET k after restart = %q; want empty (no persistence)", got)
	}
}

func TestArgs(t *testing.T) {
	s := Start(t, Args("--maxmemory", "10mb", "--maxmemory-policy", "allkeys-lru"))
	got, err := s.Do("CONFIG", "GET", "maxmemory-policy")
	if err != nil || got != "maxmemory-policy\nallkeys-lru" {
		t.Fatalf("CONFIG GET maxmemory-policy = %q, %v", got, err)
	}
}

func TestTwoServersDiffer(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr() == b.Addr() {
		t.Fatal("two servers on one address")
	}
}

func TestClusterAndSentinel(t *testing.T) {
	c := Cluster(t)
	if len(c.Addrs()) != 3 {
		t.Fatalf("cluster addrs %v", c.Addrs())
	}
	s := Sentinel(t)
	if len(s.SentinelAddrs()) != 3 {
		t.Fatalf("sentinel addrs %v", s.SentinelAddrs())
	}
}
