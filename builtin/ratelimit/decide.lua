-- One rate-limit decision, in one round trip. Both keys share the client's
-- hash tag, so the script runs on Redis Cluster.
--
-- KEYS[1] counters of (client, scope): a MessagePack array of one or two
--         rings (main window, then burst window), each {newest sub-window
--         index, total, n+1 counters} with index i counted in slot i % (n+1).
-- KEYS[2] offence state of the client: a hash; "r"/"ru" rejections and
--         when their count restarts, "o"/"ou" offences and when they are
--         forgotten.
-- KEYS[3] block of the client: its end (unix ms).
--
-- Every decision depends on now, never on TTLs (they only clean up), so
-- the script and the memory store agree under a test clock.
--
-- ARGV: now_ms (0: use Redis TIME), cost, limit, sub_window_ms,
--       precision n, burst, burst_sub_window_ms, count_rejected (0/1),
--       block_after, "within_ms duration_ms max_ms forget_ms",
--       extra_rejections, extra_cost
--
-- Returns {status, remaining, reset_ms, burst_remaining, burst_reset_ms,
--          retry_after_ms, new_block_ms, now_ms, rejections}; status 0
--          allowed, 1 limited, 2 blocked; rejections is the client's count
--          towards a block.
--
-- A request is counted while its sub-window is one of the n+1 newest: for
-- at least a window and at most a window plus one sub-window.

local floor, max = math.floor, math.max
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = t[1] * 1000 + floor(t[2] / 1000)
end
local cost = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local g = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local burst = tonumber(ARGV[6])
local bg = tonumber(ARGV[7])
local block_after = tonumber(ARGV[9])
local slots = n + 1

-- The counters and, when blocking is on, the end of the client's block,
-- in one call.
local raw
if block_after > 0 then
  local v = redis.call('MGET', KEYS[1], KEYS[3])
  raw = v[1]
  local u = tonumber(v[2] or '0')
  if u > now then
    return {2, 0, u - now, 0, u - now, u - now, 0, now, 0}
  end
else
  raw = redis.call('GET', KEYS[1])
end

local size = 2 + slots
if burst > 0 then size = 2 * size end
local st
if raw then st = cmsgpack.unpack(raw) end
if not st or #st ~= size then
  st = {}
  for i = 1, size do st[i] = 0 end
end

local cur = floor(now / g)
local last = st[1]
if cur > last then
  if cur - last > n then
    for i = 3, 2 + slots do st[i] = 0 end
    st[2] = 0
  else
    for i = last + 1, cur do
      local k = 3 + i % slots
      st[2] = st[2] - st[k]
      st[k] = 0
    end
  end
  st[1] = cur
else
  cur = last
end
local used = st[2]
local b0 = 2 + slots
local bcur, bused = 0, 0
if burst > 0 then
  bcur = floor(now / bg)
  last = st[b0 + 1]
  if bcur > last then
    if bcur - last > n then
      for i = b0 + 3, b0 + 2 + slots do st[i] = 0 end
      st[b0 + 2] = 0
    else
      for i = last + 1, bcur do
        local k = b0 + 3 + i % slots
        st[b0 + 2] = st[b0 + 2] - st[k]
        st[k] = 0
      end
    end
    st[b0 + 1] = bcur
  else
    bcur = last
  end
  bused = st[b0 + 2]
end

local ok = used + cost <= limit and (burst <= 0 or bused + cost <= burst)
local retry = 0
if not ok then
  if used + cost > limit then
    local left = used
    for i = cur - n, cur do
      left = left - st[3 + i % slots]
      if left + cost <= limit then retry = (i + n + 1) * g - now break end
    end
  end
  if burst > 0 and bused + cost > burst then
    local left = bused
    for i = bcur - n, bcur do
      left = left - st[b0 + 3 + i % slots]
      if left + cost <= burst then retry = max(retry, (i + n + 1) * bg - now) break end
    end
  end
end

local add = 0
if ok then
  add = cost
elseif ARGV[8] == '1' then
  add = cost + tonumber(ARGV[12])
end
local span = (slots + 1) * g
if add > 0 then
  local k = 3 + cur % slots
  st[k] = st[k] + add
  st[2] = st[2] + add
  used = st[2]
  if burst > 0 then
    k = b0 + 3 + bcur % slots
    st[k] = st[k] + add
    st[b0 + 2] = st[b0 + 2] + add
    bused = st[b0 + 2]
    span = max(span, (slots + 1) * bg)
  end
end
if add > 0 then
  redis.call('SET', KEYS[1], cmsgpack.pack(st), 'PX', span)
end

local reset = now
for i = cur, cur - n, -1 do
  if st[3 + i % slots] > 0 then reset = (i + n + 1) * g break end
end
local breset, bremaining = 0, 0
if burst > 0 then
  breset = now
  for i = bcur, bcur - n, -1 do
    if st[b0 + 3 + i % slots] > 0 then breset = (i + n + 1) * bg break end
  end
  breset = breset - now
  bremaining = max(burst - bused, 0)
end

local new_block = 0
local strikes = 0
local rejections = tonumber(ARGV[11])
if not ok then rejections = rejections + 1 end
if block_after > 0 and rejections > 0 then
  local within, duration, cap, forget = string.match(ARGV[10], '(%d+) (%d+) (%d+) (%d+)')
  within, duration, cap, forget = tonumber(within), tonumber(duration), tonumber(cap), tonumber(forget)
  local s = redis.call('HMGET', KEYS[2], 'r', 'ru', 'o', 'ou')
  local r, ru = tonumber(s[1] or '0'), tonumber(s[2] or '0')
  local o, ou = tonumber(s[3] or '0'), tonumber(s[4] or '0')
  if ru <= now then r, ru = 0, now + within end
  if ou <= now then o = 0 end
  r = r + rejections
  strikes = r
  if r > block_after then
    strikes = 0
    o = o + 1
    local d = duration
    for _ = 2, o do
      d = d * 2
      if d >= cap then break end
    end
    new_block = math.min(d, cap)
    redis.call('HSET', KEYS[2], 'r', 0, 'ru', 0, 'o', o, 'ou', now + forget)
    redis.call('SET', KEYS[3], now + new_block, 'PX', new_block)
  else
    redis.call('HSET', KEYS[2], 'r', r, 'ru', ru)
  end
  redis.call('PEXPIRE', KEYS[2], max(within, forget, new_block))
end


local status = 0
if not ok then status = 1 end
if new_block > 0 then
  status = 2
  retry = new_block
end
return {status, max(limit - used, 0), reset - now, bremaining, breset, retry, new_block, now, strikes}
