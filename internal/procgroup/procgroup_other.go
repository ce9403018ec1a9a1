//go:build unix && !linux

// Package procgroup starts child processes in their own process group, so
// that stopping one stops everything it started.
package procgroup

import "syscall"

// Attr puts a child in its own process group.
func Attr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
