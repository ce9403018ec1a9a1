-- Gives back units a decision counted (a reservation that turned out not
-- to count, such as a login attempt that succeeded). One key: the counters
-- of (client, scope), laid out as in decide.lua.
--
-- ARGV: at_ms (the decision's time), cost, sub_window_ms, precision n,
--       burst_sub_window_ms (0: no burst window)
--
-- The units are taken from the sub-window they were counted in, and only
-- while it is still counted: a slot that has left the window already
-- freed them. Returns the units given back from the main window.

local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local st = cmsgpack.unpack(raw)
local at, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local slots = n + 1
local size = 2 + slots
local bg = tonumber(ARGV[5])
if (bg > 0 and #st ~= 2 * size) or (bg == 0 and #st ~= size) then return 0 end

local function undo(base, g)
  local idx = math.floor(at / g)
  local last = st[base + 1]
  if idx > last or idx < last - n then return 0 end
  local k = base + 3 + idx % slots
  local c = math.min(cost, st[k])
  if c <= 0 then return 0 end
  st[k] = st[k] - c
  st[base + 2] = st[base + 2] - c
  return c
end

local done = undo(0, tonumber(ARGV[3]))
if bg > 0 then undo(size, bg) end
redis.call('SET', KEYS[1], cmsgpack.pack(st), 'KEEPTTL')
return done
