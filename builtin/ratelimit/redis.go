package ratelimit

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/omnigate/omnigate/builtin/backbone"
)

//go:embed decide.lua
var decideLua string

// decideScript is shared by every engine: go-redis keeps its SHA and falls
// back to EVAL (which caches it again) on NOSCRIPT.
var decideScript = redis.NewScript(decideLua)

// redisStore makes decisions with decide.lua, one round trip each.
//
// Key layout (P is the key prefix, N the engine name, C the client key, S
// the scope; C is hash-tagged so all of a client's keys share a slot):
//
//	P{rl:N:C}:c:S  hash   sub-window counters of C in scope S
//	P{rl:N:C}:blk  string C's current block (TTL = remaining block)
//	P{rl:N:C}:rej  int    C's rejections within block.within
//	P{rl:N:C}:off  int    C's offences within block.forget_after
//	Prl:N:blocks   zset   index of blocked clients, scored by end (ms)
type redisStore struct {
	m     *backbone.Manager
	name  string
	p     params
	op    *backbone.Op
	index string
	fixed []any // the arguments that do not change per call
}

func newRedisStore(ctx context.Context, m *backbone.Manager, name string, p params) *redisStore {
	s := &redisStore{
		m: m, name: name, p: p,
		op:    m.Op("ratelimit"),
		index: m.Prefix() + "rl:" + name + ":blocks",
	}
	cr := "0"
	if p.countRejected {
		cr = "1"
	}
	b := &p.block
	s.fixed = []any{p.precision, cr, b.After, b.Within.Milliseconds(), b.Duration.Milliseconds(),
		b.Max.Milliseconds(), b.Forget.Milliseconds()}
	m.Load(ctx, decideScript)
	return s
}

func (s *redisStore) tag(client string) string { return "rl:" + s.name + ":" + client }

func (s *redisStore) keys(client, scope string) []string {
	tag := s.tag(client)
	return []string{
		s.m.Key(tag, ":c:"+backbone.Tag(scope)),
		s.m.Key(tag, ":blk"),
		s.m.Key(tag, ":rej"),
		s.m.Key(tag, ":off"),
	}
}

func (s *redisStore) decide(ctx context.Context, q *query) (Decision, error) {
	args := make([]any, 0, 15)
	args = append(args, q.now, q.cost, q.pol.Limit, q.pol.Window.Milliseconds(), max(q.pol.Burst, 0),
		q.pol.BurstWindow.Milliseconds())
	args = append(args, s.fixed...)
	args = append(args, q.extra, q.extraCost)
	var res []int64
	err := s.m.Do(ctx, s.op, func(ctx context.Context, c redis.UniversalClient) error {
		var err error
		res, err = decideScript.Run(ctx, c, s.keys(q.client, q.scope), args...).Int64Slice()
		return err
	})
	if err != nil {
		return Decision{}, err
	}
	if len(res) != 9 {
		return Decision{}, fmt.Errorf("ratelimit script: %d results, want 9", len(res))
	}
	ms := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	d := Decision{
		Result: Result(res[0]), Limit: q.pol.Limit, Remaining: res[1], Reset: ms(res[2]),
		BurstLimit: max(q.pol.Burst, 0), BurstRemaining: res[3], BurstReset: ms(res[4]),
		RetryAfter: ms(res[5]), NewBlock: ms(res[6]), Source: "redis", strikes: res[8],
	}
	if d.NewBlock > 0 {
		// The index lives outside the client's slot: a second call, only
		// when a block starts.
		until := res[7] + res[6]
		s.m.Do(ctx, s.op, func(ctx context.Context, c redis.UniversalClient) error {
			return c.ZAdd(ctx, s.index, redis.Z{Score: float64(until), Member: q.client}).Err()
		})
	}
	return d, nil
}

func (s *redisStore) blocks(ctx context.Context) ([]Block, error) {
	var zs []redis.Z
	err := s.m.Do(ctx, s.op, func(ctx context.Context, c redis.UniversalClient) error {
		now, err := c.Time(ctx).Result()
		if err != nil {
			return err
		}
		ms := strconv.FormatInt(now.UnixMilli(), 10)
		if err := c.ZRemRangeByScore(ctx, s.index, "-inf", ms).Err(); err != nil {
			return err
		}
		zs, err = c.ZRangeByScoreWithScores(ctx, s.index, &redis.ZRangeBy{Min: "(" + ms, Max: "+inf"}).Result()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list blocks: %w", err)
	}
	out := make([]Block, 0, len(zs))
	for _, z := range zs {
		out = append(out, Block{Key: z.Member.(string), Until: time.UnixMilli(int64(z.Score)).UTC()})
	}
	return out, nil
}

func (s *redisStore) unblock(ctx context.Context, client string) (bool, error) {
	var n int64
	err := s.m.Do(ctx, s.op, func(ctx context.Context, c redis.UniversalClient) error {
		k := s.keys(client, "")
		var err error
		if n, err = c.Del(ctx, k[1]).Result(); err != nil {
			return err
		}
		if err := c.Del(ctx, k[2]).Err(); err != nil {
			return err
		}
		return c.ZRem(ctx, s.index, client).Err()
	})
	return n > 0, err
}
