//go:build unix

package procgroup

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Stop sends sig to the process group led by pid, waits until done is
// closed or grace has passed, then kills the group and waits for done.
// done is closed by whoever waits for the process (exec.Cmd.Wait).
func Stop(pid int, done <-chan struct{}, sig syscall.Signal, grace time.Duration) {
	Signal(pid, sig)
	select {
	case <-done:
	case <-time.After(grace):
	}
	Signal(pid, syscall.SIGKILL) // what is left of the group
	<-done
}

// Stat is what /proc says about a process.
type Stat struct {
	// CPU is user plus system time.
	CPU time.Duration
	// ChildCPU is the user plus system time of the children the process
	// has waited for (exited and reaped).
	ChildCPU time.Duration
	// PPid is the parent process.
	PPid int
	// RSS is the resident memory in bytes.
	RSS int64
	// Pgrp is the process group.
	Pgrp int
	// State is R, S, D, Z (a zombie: exited, not yet reaped), …
	State byte
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// ReadStat reads /proc/<pid>/stat and status (Linux).
func ReadStat(pid int) (Stat, error) {
	var st Stat
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return st, err
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return st, fmt.Errorf("procgroup: unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return st, fmt.Errorf("procgroup: unexpected /proc/%d/stat", pid)
	}
	st.State = f[0][0]                       // field 3
	st.PPid, _ = strconv.Atoi(f[1])          // field 4
	st.Pgrp, _ = strconv.Atoi(f[2])          // field 5
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14
	sys, _ := strconv.ParseInt(f[12], 10, 64)
	st.CPU = time.Duration(ut+sys) * time.Second / clockTicks
	cut, _ := strconv.ParseInt(f[13], 10, 64) // field 16
	cst, _ := strconv.ParseInt(f[14], 10, 64)
	st.ChildCPU = time.Duration(cut+cst) * time.Second / clockTicks
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return st, err
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			st.RSS = kb * 1024
		}
	}
	return st, nil
}

// Alive lists the processes of group pgid that have not exited (zombies,
// exited but not yet reaped by their parent, are not listed).
func Alive(pgid int) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := ReadStat(pid); err == nil && st.Pgrp == pgid && st.State != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// GroupCPU sums the CPU time of the live processes in process group pgid.
func GroupCPU(pgid int) time.Duration {
	entries, _ := os.ReadDir("/proc")
	var total time.Duration
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := ReadStat(pid); err == nil && st.Pgrp == pgid {
			total += st.CPU
		}
	}
	return total
}

// TreeStat sums a process and its live children: CPU is their CPU time
// plus that of the children the process has reaped, so that it only grows
// as children come and go (a PostgreSQL postmaster and its backends); RSS
// adds their resident memory (pages they share are counted once per
// process).
func TreeStat(pid int) (Stat, error) {
	root, err := ReadStat(pid)
	if err != nil {
		return root, err
	}
	total := root
	total.CPU += root.ChildCPU
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		if st, err := ReadStat(child); err == nil && st.PPid == pid && st.State != 'Z' {
			total.CPU += st.CPU
			total.RSS += st.RSS
		}
	}
	return total, nil
}
