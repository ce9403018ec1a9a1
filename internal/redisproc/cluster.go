package redisproc

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ClusterOptions configure a Redis Cluster of masters without replicas.
type ClusterOptions struct {
	// Dir holds one folder per node. Required.
	Dir string
	// Masters is the number of master nodes. Default 3 (the least Redis
	// accepts).
	Masters int
	// Persistent turns on the append-only file on every node.
	Persistent bool
	// NodeTimeout is cluster-node-timeout. Default 2s.
	NodeTimeout time.Duration
	// Args are appended to every node's command line.
	Args []string
}

// Cluster is a running Redis Cluster.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts the nodes with cluster-enabled, joins them with
// "redis-cli --cluster create … --cluster-yes" and waits until every node
// reports cluster_state:ok.
func StartCluster(ctx context.Context, opts ClusterOptions) (*Cluster, error) {
	if opts.Masters == 0 {
		opts.Masters = 3
	}
	if opts.Masters < 3 {
		return nil, errors.New("redisproc: a Redis Cluster needs at least 3 masters")
	}
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = 2 * time.Second
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, errors.New("redis-cli not found on PATH (Debian/Ubuntu: apt-get install redis-tools)")
	}
	c := &Cluster{}
	for i := range opts.Masters {
		args := append([]string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(opts.NodeTimeout.Milliseconds(), 10),
		}, opts.Args...)
		s, err := Start(ctx, Options{Dir: filepath.Join(opts.Dir, "node"+strconv.Itoa(i+1)),
			Persistent: opts.Persistent, Args: args})
		if err != nil {
			c.Close()
			return nil, err
		}
		c.Nodes = append(c.Nodes, s)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		c.Close()
		return nil, fmt.Errorf("redisproc: redis-cli --cluster create: %w: %s", err, out)
	}
	if err := c.WaitOK(ctx, 30*time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Addrs are the nodes' host:port.
func (c *Cluster) Addrs() []string {
	a := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		a[i] = n.Addr()
	}
	return a
}

// WaitOK waits until every node answers CLUSTER INFO with
// cluster_state:ok.
func (c *Cluster) WaitOK(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, 50*time.Millisecond, func() error {
		for _, n := range c.Nodes {
			info, err := n.Do(ctx, "CLUSTER", "INFO")
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("cluster not ok: %s: %s", n.Addr(), firstLine(info, err))
			}
		}
		return nil
	})
}

func firstLine(s string, err error) string {
	if err != nil {
		return err.Error()
	}
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}

// Shutdown stops every node with SIGTERM.
func (c *Cluster) Shutdown() {
	for _, n := range c.Nodes {
		n.Shutdown()
	}
}

// Kill stops every node with SIGKILL.
func (c *Cluster) Kill() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// Restart starts the stopped nodes again (they rejoin from nodes.conf) and
// waits until the cluster is ok.
func (c *Cluster) Restart(ctx context.Context) error {
	for _, n := range c.Nodes {
		if !n.Running() {
			if err := n.Restart(ctx); err != nil {
				return err
			}
		}
	}
	return c.WaitOK(ctx, 30*time.Second)
}

// PIDs are the running nodes' process ids.
func (c *Cluster) PIDs() []int {
	var p []int
	for _, n := range c.Nodes {
		if pid := n.PID(); pid != 0 {
			p = append(p, pid)
		}
	}
	return p
}

// Close kills every node.
func (c *Cluster) Close() { c.Kill() }
