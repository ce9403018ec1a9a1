package scaletest

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/omnigate/omnigate/internal/redisproc"
)

// topology is the Redis the fleet shares, as the tool started it.
type topology interface {
	// yaml is the body of the config's redis section (indented by two).
	yaml() string
	// describe says what runs, for the report.
	describe() string
	// stop takes Redis away (the failover's first half).
	stop(ctx context.Context) (string, error)
	// restart brings back what stop took away.
	restart(ctx context.Context) (string, error)
	// pids are the processes to measure.
	pids() map[string]int
	close()
}

func startTopology(ctx context.Context, o *Options, dir string) (topology, error) {
	dir = filepath.Join(dir, "redis")
	switch o.Redis {
	case RedisSingle:
		s, err := redisproc.Start(ctx, redisproc.Options{Dir: dir, Persistent: true})
		if err != nil {
			return nil, err
		}
		return &single{s: s, kill: o.Kill}, nil
	case RedisCluster:
		c, err := redisproc.StartCluster(ctx, redisproc.ClusterOptions{Dir: dir, Persistent: true})
		if err != nil {
			return nil, err
		}
		return &cluster{c: c, kill: o.Kill}, nil
	case RedisSentinel:
		s, err := redisproc.StartSentinel(ctx, redisproc.SentinelOptions{Dir: dir, Persistent: true})
		if err != nil {
			return nil, err
		}
		return &sentinel{s: s}, nil
	case RedisURL:
		return external(o.RedisURL), nil
	}
	return nil, nil
}

type single struct {
	s    *redisproc.Server
	kill bool
}

func (t *single) yaml() string { return "  url: " + t.s.URL() }
func (t *single) describe() string {
	return "one redis-server (" + t.s.Addr() + ", append-only file, fsync every second)"
}
func (t *single) stop(ctx context.Context) (string, error) {
	if t.kill {
		t.s.Kill()
		return "redis-server killed (SIGKILL)", nil
	}
	t.s.Shutdown()
	return "redis-server stopped (SIGTERM)", nil
}
func (t *single) restart(ctx context.Context) (string, error) {
	return "redis-server restarted", t.s.Restart(ctx)
}
func (t *single) pids() map[string]int { return map[string]int{"redis": t.s.PID()} }
func (t *single) close()               { t.s.Kill() }

type cluster struct {
	c    *redisproc.Cluster
	kill bool
}

func (t *cluster) yaml() string {
	return "  cluster: {addrs: [" + strings.Join(t.c.Addrs(), ", ") + "]}"
}
func (t *cluster) describe() string {
	return fmt.Sprintf("Redis Cluster, %d masters (%s), append-only files", len(t.c.Nodes), strings.Join(t.c.Addrs(), ", "))
}
func (t *cluster) stop(ctx context.Context) (string, error) {
	if t.kill {
		t.c.Kill()
		return "every cluster node killed (SIGKILL)", nil
	}
	t.c.Shutdown()
	return "every cluster node stopped (SIGTERM)", nil
}
func (t *cluster) restart(ctx context.Context) (string, error) {
	return "cluster nodes restarted, cluster_state:ok", t.c.Restart(ctx)
}
func (t *cluster) pids() map[string]int {
	m := map[string]int{}
	for i, n := range t.c.Nodes {
		m[fmt.Sprintf("redis-%d", i+1)] = n.PID()
	}
	return m
}
func (t *cluster) close() { t.c.Close() }

type sentinel struct {
	s      *redisproc.Sentinel
	killed *redisproc.Server
}

func (t *sentinel) yaml() string {
	return fmt.Sprintf("  sentinel: {master_name: %s, addrs: [%s]}", t.s.MasterName, strings.Join(t.s.SentinelAddrs(), ", "))
}
func (t *sentinel) describe() string {
	return fmt.Sprintf("Sentinel: primary %s, replica %s, %d sentinels (down-after 1s), append-only files",
		t.s.Primary.Addr(), t.s.Replica.Addr(), len(t.s.Sentinels))
}

// stop kills the current primary and waits for the sentinels to promote
// the replica.
func (t *sentinel) stop(ctx context.Context) (string, error) {
	addr, err := t.s.MasterAddr(ctx)
	if err != nil {
		return "", err
	}
	t.killed = t.s.Server(addr)
	if t.killed == nil {
		return "", fmt.Errorf("sentinels name an unknown primary %s", addr)
	}
	t.killed.Kill()
	start := time.Now()
	next, err := t.s.WaitMaster(ctx, addr, 60*time.Second)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("primary %s killed (SIGKILL); sentinels promoted %s after %s", addr, next, ms(time.Since(start))), nil
}

// restart starts the killed primary again; the sentinels make it a
// replica of the new primary.
func (t *sentinel) restart(ctx context.Context) (string, error) {
	if t.killed == nil {
		return "", nil
	}
	if err := t.killed.Restart(ctx); err != nil {
		return "", err
	}
	return "old primary " + t.killed.Addr() + " restarted (rejoins as a replica)", nil
}
func (t *sentinel) pids() map[string]int {
	m := map[string]int{"redis-a": t.s.Primary.PID(), "redis-b": t.s.Replica.PID()}
	for i, sn := range t.s.Sentinels {
		m[fmt.Sprintf("sentinel-%d", i+1)] = sn.PID()
	}
	return m
}
func (t *sentinel) close() { t.s.Close() }

type external string

func (t external) yaml() string                                { return "  url: " + string(t) }
func (t external) describe() string                            { return "an external Redis (not stopped)" }
func (t external) stop(ctx context.Context) (string, error)    { return "", nil }
func (t external) restart(ctx context.Context) (string, error) { return "", nil }
func (t external) pids() map[string]int                        { return nil }
func (t external) close()                                      {}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }
