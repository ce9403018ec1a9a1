-- One rate-limit decision, in one round trip. All keys share the client's
-- hash tag, so the script runs on Redis Cluster.
--
-- KEYS[1] counters of (client, scope): a hash of sub-window buckets,
--         "w<index>" for the main window and "b<index>" for the burst window
-- KEYS[2] block of the client: its end (unix ms); the TTL only cleans up
-- KEYS[3] rejections of the client: hash n (count), u (end of the period)
-- KEYS[4] offences of the client: hash n (count), u (when forgotten)
--
-- Every decision depends on now, never on TTLs, so that the script and
-- the memory store agree under a test clock.
--
-- ARGV: now_ms (0: use Redis TIME), cost, limit, window_ms, burst,
--       burst_window_ms, precision, count_rejected (0/1), block_after,
--       block_within_ms, block_ms, block_max_ms, forget_ms,
--       extra_rejections, extra_cost
--
-- Returns {status, remaining, reset_ms, burst_remaining, burst_reset_ms,
--          retry_after_ms, new_block_ms, now_ms, rejections}; status 0
--          allowed, 1 limited, 2 blocked; rejections is the client's count
--          towards a block.

local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local cost = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])
local bwindow = tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local count_rejected = ARGV[8] == '1'
local block_after = tonumber(ARGV[9])
local extra = tonumber(ARGV[14])
local extra_cost = tonumber(ARGV[15])

local blocked_until = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked_until > now then
  local left = blocked_until - now
  return {2, 0, left, 0, left, left, 0, now, 0}
end

-- Sub-window size and current bucket index of each window. A request is
-- counted while its bucket is one of the n+1 newest: for at least a window
-- and at most a window plus one sub-window.
local g = math.floor(window / n)
local cur = math.floor(now / g)
local bg, bcur = 1, 0
if burst > 0 then
  bg = math.floor(bwindow / n)
  bcur = math.floor(now / bg)
end

local used, bused = 0, 0
local wb, bb = {}, {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local f = flat[i]
  local kind = string.sub(f, 1, 1)
  local idx = tonumber(string.sub(f, 2))
  local c = tonumber(flat[i + 1])
  if kind == 'w' and idx >= cur - n then
    used = used + c
    wb[#wb + 1] = {idx, c}
  elseif kind == 'b' and burst > 0 and idx >= bcur - n then
    bused = bused + c
    bb[#bb + 1] = {idx, c}
  else
    redis.call('HDEL', KEYS[1], f)
  end
end

-- free_at returns when enough of the oldest buckets have left the window
-- for need more units to fit under lim.
local function free_at(buckets, total, lim, need, size)
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  local left = total
  for _, e in ipairs(buckets) do
    left = left - e[2]
    if left + need <= lim then
      return (e[1] + n + 1) * size
    end
  end
  return now
end

-- newest_out returns when every counted request has left the window.
local function newest_out(buckets, size)
  local top = nil
  for _, e in ipairs(buckets) do
    if e[2] > 0 and (top == nil or e[1] > top) then top = e[1] end
  end
  if top == nil then return now end
  return (top + n + 1) * size
end

local ok = used + cost <= limit and (burst <= 0 or bused + cost <= burst)
local retry = 0
if not ok then
  if used + cost > limit then
    retry = free_at(wb, used, limit, cost, g) - now
  end
  if burst > 0 and bused + cost > burst then
    retry = math.max(retry, free_at(bb, bused, burst, cost, bg) - now)
  end
end

local add = 0
if ok then
  add = cost
elseif count_rejected then
  add = cost + extra_cost
end
local span = window + g
if burst > 0 then span = math.max(span, bwindow + bg) end
if add > 0 then
  redis.call('HINCRBY', KEYS[1], 'w' .. cur, add)
  used = used + add
  wb[#wb + 1] = {cur, add}
  if burst > 0 then
    redis.call('HINCRBY', KEYS[1], 'b' .. bcur, add)
    bused = bused + add
    bb[#bb + 1] = {bcur, add}
  end
  redis.call('PEXPIRE', KEYS[1], span)
end

local new_block = 0
local strikes = 0
local rejections = extra
if not ok then rejections = rejections + 1 end
if block_after > 0 and rejections > 0 then
  -- count(key, add, period): a counter that restarts after period ms.
  local function count(key, add, period)
    local v = redis.call('HMGET', key, 'n', 'u')
    local c, u = tonumber(v[1] or '0'), tonumber(v[2] or '0')
    if u <= now then
      c, u = 0, now + period
      redis.call('HSET', key, 'u', u)
      redis.call('PEXPIRE', key, period)
    end
    c = c + add
    redis.call('HSET', key, 'n', c)
    return c
  end
  local v = count(KEYS[3], rejections, tonumber(ARGV[10]))
  strikes = v
  if v > block_after then
    strikes = 0
    local forget = tonumber(ARGV[13])
    local offences = count(KEYS[4], 1, forget)
    -- Each offence keeps the count for forget_after from itself.
    redis.call('HSET', KEYS[4], 'u', now + forget)
    redis.call('PEXPIRE', KEYS[4], forget)
    local d = tonumber(ARGV[11])
    local cap = tonumber(ARGV[12])
    for _ = 2, offences do
      d = d * 2
      if d >= cap then break end
    end
    new_block = math.min(d, cap)
    redis.call('SET', KEYS[2], now + new_block, 'PX', new_block)
    redis.call('DEL', KEYS[3])
  end
end

local status = 0
if not ok then status = 1 end
if new_block > 0 then
  status = 2
  retry = new_block
end
local breset = 0
local bremaining = 0
if burst > 0 then
  breset = newest_out(bb, bg) - now
  bremaining = math.max(burst - bused, 0)
end
return {status, math.max(limit - used, 0), newest_out(wb, g) - now, bremaining, breset, retry, new_block, now, strikes}
