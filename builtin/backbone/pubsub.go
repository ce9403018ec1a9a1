package backbone

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Subscribe calls fn with the payload of every message published on
// channel (by any instance, this one included) while Redis is up. The
// channel name is prefixed with the key prefix. Messages are delivered in
// order, one at a time per manager, so fn must be quick. Messages published
// while this instance is disconnected are lost: a builtin that keeps local
// state in step through messages should also drop that state when OnChange
// reports Redis up again. It returns a function that ends the subscription.
func (m *Manager) Subscribe(channel string, fn func(payload string)) (cancel func()) {
	return m.ps.add(m.cfg.KeyPrefix+channel, fn)
}

// Publish sends payload to every subscriber of channel on every instance.
// It returns ErrDisabled or ErrDown when Redis is not available; the
// message is then not sent.
func (m *Manager) Publish(ctx context.Context, op *Op, channel, payload string) error {
	return m.Do(ctx, op, func(ctx context.Context, c redis.UniversalClient) error {
		return c.Publish(ctx, m.cfg.KeyPrefix+channel, payload).Err()
	})
}

// pubsub keeps one Redis subscription per manager for all channels and
// renews it on the current client after every reconnect.
type pubsub struct {
	m      *Manager
	mu     sync.Mutex
	subs   map[string]map[int]func(string)
	nextID int
	ps     *redis.PubSub
	done   chan struct{} // closed when the reader of ps has stopped
}

func newPubsub(m *Manager) *pubsub {
	return &pubsub{m: m, subs: map[string]map[int]func(string){}}
}

func (p *pubsub) add(channel string, fn func(string)) func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := p.nextID
	p.nextID++
	hs := p.subs[channel]
	if hs == nil {
		hs = map[int]func(string){}
		p.subs[channel] = hs
		if p.ps != nil {
			ctx, cancel := context.WithTimeout(context.Background(), p.m.cfg.DialTimeout+p.m.cfg.WriteTimeout)
			p.ps.Subscribe(ctx, channel) // on failure go-redis resubscribes when it reconnects
			cancel()
		}
	}
	hs[id] = fn
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.subs[channel], id)
		if len(p.subs[channel]) == 0 {
			delete(p.subs, channel)
			if p.ps != nil {
				ctx, cancel := context.WithTimeout(context.Background(), p.m.cfg.DialTimeout+p.m.cfg.WriteTimeout)
				p.ps.Unsubscribe(ctx, channel)
				cancel()
			}
		}
	}
}

// reconnect subscribes to every channel on c, replacing the previous
// subscription.
func (p *pubsub) reconnect(c redis.UniversalClient) {
	p.disconnect(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	channels := make([]string, 0, len(p.subs))
	for ch := range p.subs {
		channels = append(channels, ch)
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.m.cfg.DialTimeout+p.m.cfg.ReadTimeout)
	defer cancel()
	ps := c.Subscribe(ctx, channels...)
	p.ps = ps
	done := make(chan struct{})
	p.done = done
	msgs := ps.Channel()
	go func() {
		defer close(done)
		for msg := range msgs {
			p.dispatch(msg.Channel, msg.Payload)
		}
	}()
}

func (p *pubsub) dispatch(channel, payload string) {
	p.mu.Lock()
	hs := make([]func(string), 0, len(p.subs[channel]))
	for _, fn := range p.subs[channel] {
		hs = append(hs, fn)
	}
	p.mu.Unlock()
	for _, fn := range hs {
		fn(payload)
	}
}

// disconnect ends the current subscription and, with wait, waits for its
// reader (not from a handler: a handler may be what noticed the outage).
func (p *pubsub) disconnect(wait bool) {
	p.mu.Lock()
	ps, done := p.ps, p.done
	p.ps, p.done = nil, nil
	p.mu.Unlock()
	if ps != nil {
		ps.Close()
		if wait {
			<-done
		}
	}
}

func (p *pubsub) close() { p.disconnect(true) }
