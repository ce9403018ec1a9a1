//go:build unix

package procgroup

import "syscall"

// Signal sends sig to the process group led by pid (a child started with
// Attr).
func Signal(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}
