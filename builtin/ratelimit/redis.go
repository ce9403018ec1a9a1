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

//go:embed refund.lua
var refundLua string

// refundScript gives back units a decision counted (Engine.Refund).
var refundScript = redis.NewScript(refundLua)

// redisStore makes decisions with decide.lua, one round trip each.
//
// Key layout (P is the key prefix, N the engine name, C the client key, S
// the scope; C is hash-tagged so all of a client's keys share a slot):
//
//	P{rl:N:C}:c:S  hash  sub-window counters of C in scope S (see decide.lua)
//	P{rl:N:C}:s    hash  C's rejections and offences
//	P{rl:N:C}:b    string end of C's block (unix ms)
//	Prl:N:blocks   zset  index of blocked clients, scored by block end (ms)
type redisStore struct {
	m     *backbone.Manager
	name  string
	p     params
	op    *backbone.Op
	index string
	cr    string // count_rejected argument
	block string // block policy argument
}

func newRedisStore(ctx context.Context, m *backbone.Manager, name string, p params) *redisStore {
	s := &redisStore{
		m: m, name: name, p: p,
		op:    m.Op("ratelimit"),
		index: m.Prefix() + "rl:" + name + ":blocks",
		cr:    "0",
	}
	if p.countRejected {
		s.cr = "1"
	}
	b := &p.block
	s.block = fmt.Sprintf("%d %d %d %d", b.Within.Milliseconds(), b.Duration.Milliseconds(),
		b.Max.Milliseconds(), b.Forget.Milliseconds())
	m.Load(ctx, decideScript, refundScript)
	return s
}

func (s *redisStore) keys(client, scope string) []string {
	tag := "rl:" + s.name + ":" + client
	return []string{s.m.Key(tag, ":c:"+backbone.Tag(scope)), s.m.Key(tag, ":s"), s.m.Key(tag, ":b")}
}

func (s *redisStore) decide(ctx context.Context, q *query) (Decision, error) {
	n := s.p.precision
	burst, bg := max(q.pol.Burst, 0), int64(1)
	if burst > 0 {
		bg = q.pol.BurstWindow.Milliseconds() / n
	}
	args := []any{q.now, q.cost, q.pol.Limit, q.pol.Window.Milliseconds() / n, n, burst, bg,
		s.cr, s.p.block.After, s.block, q.extra, q.extraCost}
	keys := s.keys(q.client, q.scope)
	cmd, err := s.m.Batch(ctx, s.op, func(p redis.Pipeliner) redis.Cmder {
		return decideScript.EvalSha(ctx, p, keys, args...)
	})
	var res []int64
	if err == nil {
		res, err = cmd.(*redis.Cmd).Int64Slice()
	} else if redis.HasErrorPrefix(err, "NOSCRIPT") {
		// Redis lost its script cache (a restart, SCRIPT FLUSH): EVAL
		// loads it again.
		err = s.m.Do(ctx, s.op, func(ctx context.Context, c redis.UniversalClient) error {
			var err error
			res, err = decideScript.Run(ctx, c, keys, args...).Int64Slice()
			return err
		})
	}
	if err != nil {
		return Decision{}, err
	}
	if len(res) != 9 {
		return Decision{}, fmt.Errorf("ratelimit script: %d results, want 9", len(res))
	}
	ms := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	d := Decision{
		Result: Result(res[0]), Limit: q.pol.Limit, Remaining: res[1], Reset: ms(res[2]),
		BurstLimit: burst, BurstRemaining: res[3], BurstReset: ms(res[4]),
		RetryAfter: ms(res[5]), NewBlock: ms(res[6]), Source: "redis", At: time.UnixMilli(res[7]), strikes: res[8],
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

// refund gives back cost units counted at q.now (unix ms) for q's client
// and scope, from the sub-windows they were counted in.
func (s *redisStore) refund(ctx context.Context, q *query) error {
	n := s.p.precision
	bg := int64(0)
	if q.pol.Burst > 0 {
		bg = q.pol.BurstWindow.Milliseconds() / n
	}
	keys := s.keys(q.client, q.scope)[:1]
	return s.m.Do(ctx, s.op, func(ctx context.Context, c redis.UniversalClient) error {
		return refundScript.Run(ctx, c, keys, q.now, q.cost, q.pol.Window.Milliseconds()/n, n, bg).Err()
	})
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

// unblock lifts the block of client and forgets its rejections (not its
// offences); now is unix ms, or 0 for Redis's clock.
func (s *redisStore) unblock(ctx context.Context, client string, now int64) (bool, error) {
	var until int64
	err := s.m.Do(ctx, s.op, func(ctx context.Context, c redis.UniversalClient) error {
		if now == 0 {
			t, err := c.Time(ctx).Result()
			if err != nil {
				return err
			}
			now = t.UnixMilli()
		}
		k := s.keys(client, "")
		var err error
		until, err = c.Get(ctx, k[2]).Int64()
		if err != nil && err != redis.Nil {
			return err
		}
		if err := c.Del(ctx, k[2]).Err(); err != nil {
			return err
		}
		if err := c.HSet(ctx, k[1], "r", 0, "ru", 0).Err(); err != nil {
			return err
		}
		return c.ZRem(ctx, s.index, client).Err()
	})
	return until > now, err
}
