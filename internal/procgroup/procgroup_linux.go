// Package procgroup starts child processes in their own process group, so
// that stopping one stops everything it started, and so that the kernel
// kills them should the parent die first (Linux).
package procgroup

import "syscall"

// Attr puts a child in its own process group and has the kernel send it
// SIGKILL when the thread that started it exits, so a crashed parent
// leaves nothing behind.
func Attr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
