//go:build !linux

package external

import "os/exec"

// setParentDeathSignal does nothing where the kernel has no parent death
// signal; Close still stops the plugin.
func setParentDeathSignal(*exec.Cmd) {}
