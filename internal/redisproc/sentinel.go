package redisproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SentinelOptions configure a primary, one replica and its sentinels.
type SentinelOptions struct {
	// Dir holds one folder per process. Required.
	Dir string
	// MasterName is the name the sentinels monitor. Default "omnigate".
	MasterName string
	// Sentinels is the number of sentinels. Default 3.
	Sentinels int
	// Quorum is the number of sentinels that must agree the primary is
	// down. Default a majority of Sentinels.
	Quorum int
	// DownAfter is down-after-milliseconds. Default 1s.
	DownAfter time.Duration
	// FailoverTimeout is failover-timeout. Default 5s.
	FailoverTimeout time.Duration
	// Persistent turns on the append-only file on the primary and replica.
	Persistent bool
	// Args are appended to the primary's and replica's command lines.
	Args []string
}

// Sentinel is a running primary, replica and sentinels. Primary and
// Replica are the roles at start; after a failover ask MasterAddr.
type Sentinel struct {
	MasterName string
	Primary    *Server
	Replica    *Server
	Sentinels  []*Server
}

// StartSentinel starts the primary, the replica (replicaof the primary)
// and the sentinels, and waits until every sentinel knows the primary, the
// replica and the other sentinels.
func StartSentinel(ctx context.Context, opts SentinelOptions) (*Sentinel, error) {
	if opts.MasterName == "" {
		opts.MasterName = "omnigate"
	}
	if opts.Sentinels == 0 {
		opts.Sentinels = 3
	}
	if opts.Quorum == 0 {
		opts.Quorum = opts.Sentinels/2 + 1
	}
	if opts.DownAfter <= 0 {
		opts.DownAfter = time.Second
	}
	if opts.FailoverTimeout <= 0 {
		opts.FailoverTimeout = 5 * time.Second
	}
	s := &Sentinel{MasterName: opts.MasterName}
	var err error
	s.Primary, err = Start(ctx, Options{Dir: filepath.Join(opts.Dir, "primary"), Persistent: opts.Persistent, Args: opts.Args})
	if err != nil {
		return nil, err
	}
	s.Replica, err = Start(ctx, Options{Dir: filepath.Join(opts.Dir, "replica"), Persistent: opts.Persistent,
		Args: append([]string{"--replicaof", "127.0.0.1", strconv.Itoa(s.Primary.Port())}, opts.Args...)})
	if err != nil {
		s.Close()
		return nil, err
	}
	if err := waitLinkUp(ctx, s.Replica, 30*time.Second); err != nil {
		s.Close()
		return nil, err
	}
	conf := []string{
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d %d", opts.MasterName, s.Primary.Port(), opts.Quorum),
		fmt.Sprintf("sentinel down-after-milliseconds %s %d", opts.MasterName, opts.DownAfter.Milliseconds()),
		fmt.Sprintf("sentinel failover-timeout %s %d", opts.MasterName, opts.FailoverTimeout.Milliseconds()),
		fmt.Sprintf("sentinel parallel-syncs %s 1", opts.MasterName),
	}
	for i := range opts.Sentinels {
		sn, err := Start(ctx, Options{Dir: filepath.Join(opts.Dir, "sentinel"+strconv.Itoa(i+1)),
			Sentinel: true, SentinelConf: conf})
		if err != nil {
			s.Close()
			return nil, err
		}
		s.Sentinels = append(s.Sentinels, sn)
	}
	if err := s.waitTopology(ctx, opts.Sentinels, 30*time.Second); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// waitLinkUp waits until the replica has synced with its primary.
func waitLinkUp(ctx context.Context, replica *Server, timeout time.Duration) error {
	return poll(ctx, timeout, 50*time.Millisecond, func() error {
		info, err := replica.Do(ctx, "INFO", "replication")
		if err == nil && strings.Contains(info, "master_link_status:up") {
			return nil
		}
		return fmt.Errorf("replica %s not in sync", replica.Addr())
	})
}

// waitTopology waits until each sentinel sees the replica and the other
// sentinels, so that a failover can be agreed on.
func (s *Sentinel) waitTopology(ctx context.Context, sentinels int, timeout time.Duration) error {
	return poll(ctx, timeout, 100*time.Millisecond, func() error {
		for _, sn := range s.Sentinels {
			m, err := sn.Do(ctx, "SENTINEL", "MASTER", s.MasterName)
			f := pairs(m)
			if err != nil || f["num-slaves"] != "1" || f["num-other-sentinels"] != strconv.Itoa(sentinels-1) {
				return fmt.Errorf("sentinel %s not ready: replicas %q, other sentinels %q, %v",
					sn.Addr(), f["num-slaves"], f["num-other-sentinels"], err)
			}
		}
		return nil
	})
}

// pairs reads a flat name/value reply (one item per line).
func pairs(reply string) map[string]string {
	f := strings.Split(reply, "\n")
	m := map[string]string{}
	for i := 0; i+1 < len(f); i += 2 {
		m[f[i]] = f[i+1]
	}
	return m
}

// SentinelAddrs are the sentinels' host:port.
func (s *Sentinel) SentinelAddrs() []string {
	a := make([]string, len(s.Sentinels))
	for i, sn := range s.Sentinels {
		a[i] = sn.Addr()
	}
	return a
}

// MasterAddr asks the sentinels (the first that answers) for the current
// primary's host:port.
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	var errs []error
	for _, sn := range s.Sentinels {
		r, err := sn.Do(ctx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.MasterName)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		host, port, ok := strings.Cut(r, "\n")
		if !ok {
			errs = append(errs, fmt.Errorf("unexpected reply %q", r))
			continue
		}
		return net.JoinHostPort(host, port), nil
	}
	return "", fmt.Errorf("redisproc: no sentinel answered: %w", errors.Join(errs...))
}

// Server returns the process listening on addr (primary or replica).
func (s *Sentinel) Server(addr string) *Server {
	for _, sv := range []*Server{s.Primary, s.Replica} {
		if sv.Addr() == addr {
			return sv
		}
	}
	return nil
}

// WaitMaster waits until the sentinels name a primary other than old and
// that primary answers as a master; it returns its address.
func (s *Sentinel) WaitMaster(ctx context.Context, old string, timeout time.Duration) (string, error) {
	var addr string
	err := poll(ctx, timeout, 20*time.Millisecond, func() error {
		a, err := s.MasterAddr(ctx)
		if err != nil {
			return err
		}
		if a == old {
			return fmt.Errorf("sentinels still name %s", old)
		}
		if role, err := Do(ctx, a, "ROLE"); err != nil || !strings.HasPrefix(role, "master") {
			return fmt.Errorf("%s is not a master yet", a)
		}
		addr = a
		return nil
	})
	return addr, err
}

// PIDs are the running processes' ids (data nodes first).
func (s *Sentinel) PIDs() []int {
	var p []int
	for _, sv := range append([]*Server{s.Primary, s.Replica}, s.Sentinels...) {
		if sv != nil && sv.PID() != 0 {
			p = append(p, sv.PID())
		}
	}
	return p
}

// Close kills every process.
func (s *Sentinel) Close() {
	for _, sv := range append([]*Server{s.Primary, s.Replica}, s.Sentinels...) {
		if sv != nil {
			sv.Kill()
		}
	}
}
