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
	time.Sleep(100 * time.Millisecond)
	if GroupCPU(cmd.Process.Pid) < 0 {
		t.Error("negative CPU")
	}
	start := time.Now()
	Stop(cmd.Process.Pid, done, syscall.SIGTERM, 200*time.Millisecond)
	if time.Since(start) > 5*time.Second {
		t.Errorf("Stop took %s", time.Since(start))
	}
	time.Sleep(50 * time.Millisecond)
	if left := Alive(cmd.Process.Pid); len(left) > 0 {
		t.Errorf("processes of the group outlived Stop: %v", left)
	}
}
