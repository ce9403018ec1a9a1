package external

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/omnigate/omnigate/sdk/external/contract"
	pb "github.com/omnigate/omnigate/sdk/external/proto"
)

// process is one run of the plugin's executable.
type process struct {
	client  *plugin.Client
	cmd     *exec.Cmd
	rpc     *contract.Client
	phases  *pb.ConfigureResponse
	pid     int
	sockDir string
	started time.Time
	exit    atomic.Pointer[string] // the exit status, as go-plugin logs it
	killing atomic.Bool
}

// killGrace is how long a process asked to exit gets before it is killed.
const killGrace = 3 * time.Second

// start launches the executable, checks the handshake and configures the
// plugin. On error nothing is left running.
func (p *Plugin) start(ctx context.Context) (*process, error) {
	o := &p.opts
	pr := &process{started: time.Now()}
	// The plugin's Unix socket lives in a directory of its own, removed
	// with the process, so a killed plugin leaves no socket file behind.
	sockDir, err := os.MkdirTemp("", "omnigate-plugin-")
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", o.Path, err)
	}
	pr.sockDir = sockDir
	cmd := exec.Command(o.Path, o.Args...)
	// The environment is built here (go-plugin would put the gateway's
	// after Env, and the later value of a name wins).
	if !o.NoInheritEnv {
		cmd.Env = os.Environ()
	}
	for _, k := range slices.Sorted(maps.Keys(o.Env)) {
		cmd.Env = append(cmd.Env, k+"="+o.Env[k])
	}
	cmd.Env = append(cmd.Env, plugin.EnvUnixSocketDir+"="+sockDir)
	setParentDeathSignal(cmd)
	stderr := newLineLogger(p.log, "stderr", 8)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  contract.Handshake,
		Plugins:          contract.PluginSet(nil),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     o.StartTimeout,
		SkipHostEnv:      true,
		Stderr:           stderr,
		SyncStdout:       newLineLogger(p.log, "stdout", 0),
		SyncStderr:       newLineLogger(p.log, "stderr", 0),
		Logger:           newHCLogger(p.log, filepath.Base(o.Path), pr),
	})
	pr.client, pr.cmd = client, cmd
	fail := func(err error) (*process, error) {
		client.Kill()
		os.RemoveAll(sockDir)
		return nil, err
	}
	proto, err := client.Client()
	if err != nil {
		return fail(startError(o.Path, err, stderr.tail()))
	}
	raw, err := proto.Dispense(contract.PluginName)
	if err != nil {
		return fail(fmt.Errorf("start %s: %w", o.Path, err))
	}
	pr.rpc = raw.(*contract.Client)
	pr.pid = cmd.Process.Pid
	cctx, cancel := context.WithTimeout(ctx, o.StartTimeout)
	defer cancel()
	pr.phases, err = pr.rpc.Configure(cctx, &pb.ConfigureRequest{
		PluginName: o.Name, Config: o.Config, Version: contract.ProtocolVersion,
	})
	if err != nil {
		return fail(fmt.Errorf("plugin refused its config: %s", status.Convert(err).Message()))
	}
	return pr, nil
}

// startError explains a failed start: a handshake that does not match says
// so, with what the plugin wrote to stderr.
func startError(path string, err error, stderr []string) error {
	msg := err.Error()
	out := strings.Join(stderr, " | ")
	switch {
	case strings.Contains(msg, "incompatible API version"):
		return fmt.Errorf("start %s: handshake refused: the plugin speaks another contract version than this gateway (%d); rebuild it against this gateway's sdk/external: %w",
			path, contract.ProtocolVersion, err)
	case strings.Contains(out, "This binary is a plugin"):
		return fmt.Errorf("start %s: handshake refused: the plugin does not accept this gateway's magic cookie (a go-plugin plugin for another program?): %w",
			path, err)
	case strings.Contains(msg, "Unrecognized remote plugin message"):
		return fmt.Errorf("start %s: handshake refused: not an OmniGate external plugin (it printed no go-plugin handshake line)", path)
	case out != "":
		return fmt.Errorf("start %s: %w (stderr: %s)", path, err, out)
	}
	return fmt.Errorf("start %s: %w", path, err)
}

// check runs one gRPC health check.
func (pr *process) check(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(pr.rpc.Exited, timeout)
	defer cancel()
	resp, err := grpc_health_v1.NewHealthClient(pr.rpc.Conn).Check(ctx,
		&grpc_health_v1.HealthCheckRequest{Service: plugin.GRPCServiceName})
	if err != nil {
		return err
	}
	if resp.Status != grpc_health_v1.HealthCheckResponse_SERVING {
		return errors.New("not serving: " + resp.Status.String())
	}
	return nil
}

// kill stops the process and waits until it is gone. Unless force is set,
// the plugin is first asked to exit and given killGrace to do so.
func (pr *process) kill(force bool) {
	pr.killing.Store(true)
	if force {
		pr.signalKill()
	}
	done := make(chan struct{})
	go func() {
		pr.client.Kill()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(killGrace):
		// A process that hangs does not answer the request to exit either.
		pr.signalKill()
		<-done
	}
	os.RemoveAll(pr.sockDir)
}

// signalKill kills the process unless it has been waited for already
// (os.Process then refuses, so a reused pid is never signalled).
func (pr *process) signalKill() {
	if pr.cmd.Process != nil {
		pr.cmd.Process.Signal(syscall.SIGKILL)
	}
}

func (pr *process) exitStatus() string {
	if s := pr.exit.Load(); s != nil {
		return *s
	}
	return "exited"
}
