package procgroup

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestStatAndStop(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil || st.RSS < 1<<20 || st.Pgrp == 0 {
		t.Fatalf("ReadStat(self) = %+v, %v", st, err)
	}
	if _, err := ReadStat(1 << 30); err == nil {
		t.Error("no error for a missing process")
	}
	// A shell that ignores SIGTERM, with a child: Stop must end both.
	cmd := exec.Command("sh", "-c", "trap '' TERM; sleep 60 & wait")
	cmd.SysProcAttr = Attr()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	// Both the shell and its child are running before Stop.
	waitFor(t, "the shell and its child", func() bool { return len(Alive(cmd.Process.Pid)) >= 2 })
	if GroupCPU(cmd.Process.Pid) < 0 {
		t.Error("negative CPU")
	}
	stopped := make(chan struct{})
	go func() {
		Stop(cmd.Process.Pid, done, syscall.SIGTERM, 200*time.Millisecond)
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(time.Minute): // a hang guard, not a timing check
		t.Fatal("Stop did not return")
	}
	// The kernel reaps the killed child shortly after: wait for it.
	waitFor(t, "no process left in the group", func() bool { return len(Alive(cmd.Process.Pid)) == 0 })
}

// waitFor polls cond until it holds, failing the test after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TreeStat adds a process's live children (a shell and its sleep) to it.
func TestTreeStat(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 60 & wait")
	cmd.SysProcAttr = Attr()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer Stop(cmd.Process.Pid, done, syscall.SIGKILL, 0)
	waitFor(t, "the shell's child", func() bool { return len(Alive(cmd.Process.Pid)) >= 2 })
	self, err := ReadStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := TreeStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if tree.RSS <= self.RSS || tree.CPU < self.CPU {
		t.Errorf("TreeStat = %+v, the shell alone %+v: the child is not added", tree, self)
	}
	if _, err := TreeStat(1 << 30); err == nil {
		t.Error("no error for a missing process")
	}
}
