package redisproc

import "syscall"

// procAttr puts a child in its own process group and has the kernel kill
// it when the thread that started it exits, so a crashed parent leaves no
// redis-server behind.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
