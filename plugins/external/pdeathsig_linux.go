package external

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal has the kernel kill the plugin when the gateway
// dies without closing it (a crash, SIGKILL), so no plugin outlives it.
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
