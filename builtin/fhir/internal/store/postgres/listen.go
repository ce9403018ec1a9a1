package postgres

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
)

// notifyChannel is the channel of commit notifications: every write
// transaction notifies "type/id" of each resource it wrote (delivered to
// the listeners when it commits), or notifyAll.
const notifyChannel = "omnigate_fhir_writes"

// notifyAll asks listeners to drop their whole cache: sent instead of the
// keys by a transaction that wrote more than maxNotifyKeys resources, or
// one whose key is too long for a notification.
const notifyAll = "*"

const (
	maxNotifyKeys = 1000
	// maxPayload is below PostgreSQL's limit of 8000 bytes.
	maxPayload = 7900
)

// listener keeps a connection of its own that LISTENs on notifyChannel and
// drops the resources other instances (and this one) write from the read
// cache. The cache is live only while the connection is up and listening;
// when it breaks the cache is turned off at once, and the connection is
// made again with a growing delay (50 ms to 2 s).
type listener struct {
	cfg   *pgx.ConnConfig
	cache *readCache
	// pingEvery is how long the connection may stay silent before it is
	// checked with a ping, which must answer within pingTimeout: a
	// connection lost without a word (a network cut) turns the cache off
	// within their sum.
	pingEvery, pingTimeout time.Duration
	done                   chan struct{}
}

func (l *listener) run(ctx context.Context) {
	defer close(l.done)
	delay := 50 * time.Millisecond
	for ctx.Err() == nil {
		if err := l.listen(ctx); err == nil {
			delay = 50 * time.Millisecond // it was up: retry soon
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay/2 + rand.N(delay/2+1)):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// listen connects, listens, serves notifications until the connection
// fails, and returns why; a nil error means it was live for a while.
func (l *listener) listen(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, l.pingEvery+l.pingTimeout)
	conn, err := pgx.ConnectConfig(cctx, l.cfg)
	if err == nil {
		_, err = conn.Exec(cctx, `LISTEN `+notifyChannel)
	}
	cancel()
	if err != nil {
		if conn != nil {
			conn.Close(context.Background())
		}
		return err
	}
	defer func() {
		l.cache.setLive(false)
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn.Close(cctx)
		cancel()
	}()
	// Listening from here on: commits made before it may have been
	// missed, so the cache starts empty.
	l.cache.setLive(true)
	for {
		wctx, cancel := context.WithTimeout(ctx, l.pingEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			if n.Payload == notifyAll {
				l.cache.clear()
			} else {
				l.cache.invalidate([]string{n.Payload})
			}
			continue
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed():
			pctx, cancel := context.WithTimeout(ctx, l.pingTimeout)
			err = conn.Ping(pctx)
			cancel()
			if err == nil {
				continue
			}
		}
		return nil
	}
}
