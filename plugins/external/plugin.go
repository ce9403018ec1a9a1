package external

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/omnigate/omnigate/gateway"
)

// Options configure a Plugin built with New. Zero values take the defaults
// stated per field.
type Options struct {
	// Name names the plugin in logs and metrics and is given to the plugin
	// with its config. Required.
	Name string
	// Path is the plugin's executable. Required.
	Path string
	// Args are the executable's arguments. Default none.
	Args []string
	// Env is added to the process's environment. Default none.
	Env map[string]string
	// NoInheritEnv starts the process with Env only; by default it also
	// gets the gateway's environment.
	NoInheritEnv bool
	// Config is given to the plugin once per process start (JSON by
	// convention). Default "null".
	Config []byte
	// FailOpen passes requests on when the plugin fails or is down; the
	// default (false) answers them with 500.
	FailOpen bool
	// Timeout is the deadline of one call. Default 50ms.
	Timeout time.Duration
	// StartTimeout bounds starting the process, the handshake and
	// Configure. Default 10s.
	StartTimeout time.Duration
	// HealthInterval is how often the process is health-checked (gRPC
	// health service). Default 5s; negative turns checks off.
	HealthInterval time.Duration
	// HealthTimeout bounds one health check. Default 1s.
	HealthTimeout time.Duration
	// HealthFailures is how many checks in a row may fail before the
	// process is killed and restarted. Default 3.
	HealthFailures int
	// RestartMin and RestartMax bound the exponential backoff between
	// restarts, with ±20% jitter. Defaults 100ms and 30s. The backoff
	// starts again from RestartMin once a process has run for RestartMax.
	RestartMin, RestartMax time.Duration
	// MaxRequestBody caps the request body sent to a plugin that reads
	// bodies. Default 1MiB; negative sends none.
	MaxRequestBody int64
	// MaxResponseBody caps the response body buffered for a plugin that
	// reads bodies. Default 4MiB; negative buffers none.
	MaxResponseBody int64
	// Logger receives the plugin's events and its stdout and stderr.
	// Default: slog.Default() with plugin=Name.
	Logger *slog.Logger
	// Registerer receives the plugin's metrics. Default: none.
	Registerer prometheus.Registerer
}

// Plugin is a running external policy plugin: a gateway.Plugin that calls
// the plugin process on requests and responses, and keeps the process
// running. It is safe for concurrent use.
type Plugin struct {
	opts    Options
	log     *slog.Logger
	metrics *pluginMetrics

	cur     atomic.Pointer[process] // nil while down
	down    atomic.Pointer[string]  // why, while down
	stop    chan struct{}
	life    context.Context // canceled by Close, bounds restarts
	cancel  context.CancelFunc
	stopped sync.WaitGroup
	closed  atomic.Bool
	isUp    atomic.Bool
}

var (
	_ gateway.Plugin         = (*Plugin)(nil)
	_ gateway.HealthReporter = (*Plugin)(nil)
)

// New starts the plugin's process, checks the handshake, gives the plugin
// its config and starts supervising the process. The error names what
// failed: starting the executable, the handshake (another contract
// version, not a plugin), or the plugin refusing its config.
func New(ctx context.Context, opts Options) (*Plugin, error) {
	if opts.Name == "" {
		return nil, errors.New("external: Options.Name is required")
	}
	if opts.Path == "" {
		return nil, errors.New("external: Options.Path is required")
	}
	if opts.Config == nil {
		opts.Config = []byte("null")
	}
	setDefault(&opts.Timeout, DefaultTimeout)
	setDefault(&opts.StartTimeout, DefaultStartTimeout)
	setDefault(&opts.HealthInterval, DefaultHealthInterval)
	setDefault(&opts.HealthTimeout, DefaultHealthTimeout)
	setDefault(&opts.RestartMin, DefaultRestartMin)
	setDefault(&opts.RestartMax, DefaultRestartMax)
	setDefault(&opts.MaxRequestBody, DefaultMaxRequestBody)
	setDefault(&opts.MaxResponseBody, DefaultMaxResponseBody)
	setDefault(&opts.HealthFailures, DefaultHealthFailures)
	if opts.RestartMax < opts.RestartMin {
		opts.RestartMax = opts.RestartMin
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default().With(slog.String("plugin", opts.Name))
	}
	p := &Plugin{opts: opts, log: opts.Logger, stop: make(chan struct{})}
	p.life, p.cancel = context.WithCancel(context.Background())
	p.metrics = newPluginMetrics(opts.Registerer, opts.Name)
	pr, err := p.start(ctx)
	if err != nil {
		p.cancel()
		return nil, err
	}
	p.cur.Store(pr)
	p.setUp(true)
	p.log.Info("external plugin started", "path", opts.Path, "pid", pr.pid)
	p.stopped.Add(1)
	go p.supervise(pr)
	return p, nil
}

func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

// Health reports the process's state for /ping: up while it serves, down
// while it is being restarted. A plugin that fails closed is required: its
// routes cannot serve while it is down.
func (p *Plugin) Health() gateway.Health {
	if p.closed.Load() {
		return gateway.Health{Status: gateway.StatusDown, Detail: "closed"}
	}
	if pr := p.cur.Load(); pr != nil {
		return gateway.Health{Status: gateway.StatusUp,
			Detail: fmt.Sprintf("pid %d, up %s", pr.pid, time.Since(pr.started).Round(time.Second))}
	}
	detail := "restarting"
	if d := p.down.Load(); d != nil {
		detail = *d
	}
	return gateway.Health{Status: gateway.StatusDown, Required: !p.opts.FailOpen, Detail: detail}
}

// Close stops supervising and stops the process: it asks the plugin to
// exit, and kills it if it has not within a few seconds. Close returns
// once the process is gone.
func (p *Plugin) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	close(p.stop)
	p.cancel()
	p.stopped.Wait()
	if pr := p.cur.Swap(nil); pr != nil {
		pr.kill(false)
	}
	p.setUp(false)
	return nil
}

// supervise watches the running process: it health-checks it, and when it
// exits (or stops answering health checks), restarts it with backoff.
func (p *Plugin) supervise(pr *process) {
	defer p.stopped.Done()
	attempt := 0
	for {
		reason := p.watch(pr)
		if reason == "" { // closing: Close stops the process
			return
		}
		p.cur.Store(nil)
		p.setUp(false)
		p.setDown(reason)
		pr.kill(true)
		if time.Since(pr.started) >= p.opts.RestartMax {
			attempt = 0
		}
		for {
			delay := backoff(attempt, p.opts.RestartMin, p.opts.RestartMax)
			attempt++
			p.setDown(fmt.Sprintf("%s; restarting in %s", reason, delay.Round(time.Millisecond)))
			p.log.Error("external plugin down; restarting", "reason", reason, "delay", delay, "attempt", attempt)
			select {
			case <-p.stop:
				return
			case <-time.After(delay):
			}
			next, err := p.start(p.life)
			if err == nil {
				if p.closed.Load() {
					next.kill(false)
					return
				}
				pr = next
				break
			}
			p.metrics.restarts.WithLabelValues("failure").Inc()
			reason = "restart failed: " + err.Error()
		}
		p.metrics.restarts.WithLabelValues("success").Inc()
		p.cur.Store(pr)
		p.down.Store(nil)
		p.setUp(true)
		p.log.Info("external plugin restarted", "pid", pr.pid, "attempt", attempt)
	}
}

// watch returns why pr must be replaced, or "" when the plugin is closing.
func (p *Plugin) watch(pr *process) string {
	var tick <-chan time.Time
	if p.opts.HealthInterval > 0 {
		t := time.NewTicker(p.opts.HealthInterval)
		defer t.Stop()
		tick = t.C
	}
	failures := 0
	for {
		select {
		case <-p.stop:
			return ""
		case <-pr.rpc.Exited.Done():
			return "process exited: " + pr.exitStatus()
		case <-tick:
			err := pr.check(p.opts.HealthTimeout)
			if err == nil {
				failures = 0
				continue
			}
			failures++
			p.metrics.healthFailures.Inc()
			p.log.Warn("external plugin health check failed", "error", err, "failures", failures)
			if failures >= p.opts.HealthFailures {
				return fmt.Sprintf("%d health checks failed: %v", failures, err)
			}
		}
	}
}

func (p *Plugin) setDown(s string) { p.down.Store(&s) }

// setUp moves the up gauge, which the plugins of a name share across a
// reload, by this plugin's change of state.
func (p *Plugin) setUp(up bool) {
	if p.isUp.Swap(up) == up {
		return
	}
	if up {
		p.metrics.up.Inc()
	} else {
		p.metrics.up.Dec()
	}
}

// backoff is min·2^attempt, capped at max, with ±20% jitter.
func backoff(attempt int, min, max time.Duration) time.Duration {
	d := min
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
