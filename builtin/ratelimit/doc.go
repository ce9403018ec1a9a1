// Package ratelimit is the distributed rate limiter, plugin type
// "ratelimit": limits per user (else per client IP, or per API key header),
// by role, per route group, with burst protection, request costs and
// automatic blocking of clients that keep going over their limit. Its state
// lives in Redis through the backbone, so limits hold across every gateway
// instance; without Redis, or while it is down, it runs in memory.
//
// # Algorithm
//
// A sliding window of sub-window counters (a "bucketed sliding log"): each
// window of length W is split into n sub-windows (precision, default 10)
// of length g = W/n, and a request is counted in the sub-window it falls
// in. At time t the counted sub-windows are the n+1 newest, those that
// started after t-W-g. A request therefore counts against the limit for at
// least W and at most W+g after it was made.
//
// Error bound: the limiter never admits more than the limit in any span of
// length W, at any alignment — the guarantee of an exact sliding log. Its
// only error is on the safe side: a slot frees up to g late (W/10 by
// default: 90 s for a 15-minute window, 100 ms for a 1 s burst window), so
// a client pacing itself at exactly the limit may see a rejection that an
// exact log would not have given. The contract tests check both bounds
// against random traffic, on Redis and in memory.
//
// Why not the alternatives: an exact sliding log (a sorted set of
// timestamps) costs memory and Redis CPU in proportion to the limit (100
// entries per client for 100 requests per window); the common two-counter approximation (weighting
// the previous fixed window) is cheaper but can admit up to twice the limit
// within one window when traffic is bursty, which a healthcare API must
// not. The sub-window counters cost a fixed n+1 numbers per window and
// client, and one short Lua script per decision.
//
// Burst protection is a second window of the same kind (for example 20
// requests per second inside 100 per 15 minutes); a request must fit both.
// Costs are counted in units: a request costing 3 uses three units of each
// window.
//
// # Redis
//
// One decision is one EVALSHA of decide.lua, on keys that share the
// client's hash tag (so it runs on Redis Cluster), with time from Redis
// TIME (so gateway clocks do not matter). Decisions of concurrent requests
// are auto-pipelined by the backbone. Clients over a limit or blocked are
// remembered in a local cache until their retry time, so an attack stops
// costing Redis round trips; the cache still reports its rejections to
// Redis when one more would start a block.
//
// While Redis is down (on_redis_down: memory, the default), each instance
// decides in memory with every limit divided by the number of live
// instances it last saw in the backbone's heartbeats, so the fleet-wide
// limit roughly holds during an outage. The memory store implements the
// same algorithm with bounded memory (max_keys).
//
// # Responses
//
// A rejected request gets 429 with Retry-After, the IETF draft
// (draft-ietf-httpapi-ratelimit-headers) RateLimit-Policy and RateLimit
// fields, and X-RateLimit-Limit, -Remaining and -Reset (Unix seconds); the
// body is an OperationOutcome (code throttled) on FHIR routes and a problem
// document elsewhere. Admitted requests carry the same headers.
//
// See docs/RATELIMIT.md for the configuration reference and the admin
// endpoints.
package ratelimit
