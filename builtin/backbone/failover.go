package backbone

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/omnigate/omnigate/gateway"
)

// Metric names the manager exports.
const (
	MetricUp        = "omnigate_redis_up"
	MetricFailovers = "omnigate_redis_failovers_total"
	MetricLatency   = "omnigate_redis_command_duration_seconds"
	MetricInstances = "omnigate_redis_live_instances"
)

type metrics struct {
	up        prometheus.Gauge
	failovers prometheus.Counter
	latency   *prometheus.HistogramVec
	instances prometheus.Gauge
}

// newMetrics returns the manager's metrics, labelled redis=<name>
// ("redis", or "redis-cache" for cache_redis).
func newMetrics(reg prometheus.Registerer, name string) *metrics {
	up := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: MetricUp, Help: "1 while Redis answers, 0 while builtins run on in-process state.",
	}, []string{"redis"})
	failovers := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricFailovers, Help: "Switches from Redis to in-process state after Redis stopped answering.",
	}, []string{"redis"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    MetricLatency,
		Help:    "Latency of Redis round trips, by operation.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
	}, []string{"op"})
	instances := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: MetricInstances, Help: "Live gateway instances seen in the last heartbeat.",
	}, []string{"redis"})
	if reg != nil {
		up = gateway.RegisterMetric(reg, up)
		failovers = gateway.RegisterMetric(reg, failovers)
		latency = gateway.RegisterMetric(reg, latency)
		instances = gateway.RegisterMetric(reg, instances)
	}
	return &metrics{up: up.WithLabelValues(name), failovers: failovers.WithLabelValues(name),
		latency: latency, instances: instances.WithLabelValues(name)}
}

// connect builds a fresh client, pings it and, when it answers, makes it
// the current client: scripts are loaded, the old client is closed,
// subscriptions are renewed and Redis is marked up.
func (m *Manager) connect(ctx context.Context) error {
	c, _, err := m.newClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.DialTimeout+m.cfg.ReadTimeout)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return fmt.Errorf("ping: %w", err)
	}
	if err := clusterOK(ctx, c); err != nil {
		c.Close()
		return err
	}
	m.mu.Lock()
	scripts := append([]*redis.Script(nil), m.scripts...)
	m.mu.Unlock()
	for _, s := range scripts {
		if err := s.Load(ctx, c).Err(); err != nil {
			c.Close()
			return fmt.Errorf("load script: %w", err)
		}
	}
	select {
	case <-m.closed:
		c.Close()
		return ErrDisabled
	default:
	}
	m.checkSettings(ctx, c)
	old := m.client.Swap(&clientBox{c})
	if old != nil {
		old.c.Close()
	}
	m.fails.Store(0)
	m.ps.reconnect(c)
	m.up.Store(true)
	m.metrics.up.Set(1)
	return nil
}

// clusterOK checks, on a Redis Cluster, that every master reports
// cluster_state:ok. A node answers PING while the cluster is still down
// (after a restart, before the nodes agree), and every keyed command then
// fails with CLUSTERDOWN: going back up on PING alone would flap.
func clusterOK(ctx context.Context, c redis.UniversalClient) error {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return nil
	}
	var masters atomic.Int32
	err := cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		masters.Add(1)
		info, err := n.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("cluster info: %w", err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("cluster %s: not cluster_state:ok", n.Options().Addr)
		}
		return nil
	})
	if err == nil && masters.Load() == 0 {
		err = errors.New("cluster: no master known")
	}
	return err
}

// markDown switches to in-process state once, after a failed call.
func (m *Manager) markDown(cause error) {
	if !m.up.CompareAndSwap(true, false) {
		return
	}
	m.downSince.Store(time.Now().UnixNano())
	m.metrics.up.Set(0)
	m.metrics.failovers.Inc()
	m.logger.Error("redis down; builtins switch to in-process state", "redis", m.mode, "error", cause.Error())
	m.ps.disconnect(false)
	m.mu.Lock()
	m.notifyLocked(false)
	m.startProberLocked()
	m.mu.Unlock()
}

func (m *Manager) notifyLocked(up bool) {
	for _, fn := range m.listeners {
		go fn(up)
	}
}

func (m *Manager) startProberLocked() {
	if m.probing {
		return
	}
	select {
	case <-m.closed:
		return
	default:
	}
	m.probing = true
	m.wg.Add(1)
	go m.probe()
}

// probe reconnects with exponential backoff and equal jitter: each wait is
// between half and all of the current backoff (never below reconnect_min),
// and the backoff doubles up to reconnect_max.
func (m *Manager) probe() {
	defer m.wg.Done()
	backoff := m.cfg.ReconnectMin
	for {
		wait := backoff/2 + rand.N(backoff/2+1)
		wait = max(wait, m.cfg.ReconnectMin)
		m.mu.Lock()
		m.nextProbe = time.Now().Add(wait)
		m.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-m.closed:
			t.Stop()
			m.mu.Lock()
			m.probing = false
			m.mu.Unlock()
			return
		case <-t.C:
		}
		err := m.connect(context.Background())
		if err == nil {
			down := time.Duration(time.Now().UnixNano() - m.downSince.Load())
			m.logger.Info("redis up again; builtins switch back to redis", "redis", m.mode,
				"down_for", down.Round(time.Millisecond).String())
			m.mu.Lock()
			m.probing = false
			m.notifyLocked(true)
			m.mu.Unlock()
			m.beat()
			return
		}
		m.misses.Add(1)
		m.logger.Debug("redis reconnect attempt failed", "redis", m.mode, "error", err.Error())
		backoff = min(backoff*2, m.cfg.ReconnectMax)
	}
}

// heartbeatScript records the calling instance (ARGV[1]) with Redis's own
// time, forgets instances silent for ARGV[2] milliseconds, and returns how
// many are live.
const heartbeatScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
`

func (m *Manager) instancesKey() string { return m.cfg.KeyPrefix + "instances" }

func (m *Manager) heartbeatLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-m.closed:
			return
		case <-t.C:
			m.beat()
		}
	}
}

// beat announces the instance and refreshes the live instance count.
func (m *Manager) beat() {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.DialTimeout+m.cfg.ReadTimeout)
	defer cancel()
	ttl := 3 * m.opts.Heartbeat.Milliseconds()
	var n int64
	err := m.Do(ctx, m.hbOp, func(ctx context.Context, c redis.UniversalClient) error {
		var err error
		n, err = m.heartbeat.Run(ctx, c, []string{m.instancesKey()}, m.opts.InstanceID, ttl).Int64()
		return err
	})
	if err == nil && n > 0 {
		m.instances.Store(int32(n))
		m.metrics.instances.Set(float64(n))
	}
}
