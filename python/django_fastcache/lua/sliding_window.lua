-- Sliding window (two counters), one atomic check. Twin of detail::sliding_window in
-- src/core/limiter.cpp: the current fixed window's count plus the previous window's
-- count weighted by the share of it still inside the sliding window, in whole ms.
-- KEYS[1]: a hash {w = start of the window last written (integer microseconds), cur =
-- units in it, prev = units in the window before it}. ARGV: limit, period_us, burst
-- (unused), cost, [now_us: tests only; empty means Redis TIME].
-- Returns {allowed, remaining, retry_after_us, reset_after_us}.
-- `now` (integer microseconds) is set by _now.lua, prepended when the script is loaded.
local key = KEYS[1]
local limit, period, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local function fdiv(a, b) return (a - math.fmod(a, b)) / b end

local pm = period / 1000
local ws = now - math.fmod(now, period)
local stored = redis.call('HMGET', key, 'w', 'cur', 'prev')
local cur, prev = 0, 0
if stored[1] then
  local w = tonumber(stored[1])
  if w == ws then
    cur, prev = tonumber(stored[2]), tonumber(stored[3])
  elseif w == ws - period then
    prev = tonumber(stored[2])
  end
end
local elapsed_ms = fdiv(now - ws, 1000)
local weighted = prev * (pm - elapsed_ms)
local cap = limit * pm
local function left(c)
  local x = cap - weighted - c * pm
  if x < 0 then return 0 end
  return fdiv(x, pm)
end
local function reset(c, p)
  if c > 0 then return ws + 2 * period - now end
  if p > 0 then return ws + period - now end
  return 0
end

if cost > limit then
  return {0, left(cur), -1, reset(cur, prev)}
end
if weighted + (cur + cost) * pm <= cap then
  cur = cur + cost
  redis.call('HSET', key, 'w', string.format('%d', ws), 'cur', cur, 'prev', prev)
  -- The previous count is read until the end of the window after this one.
  redis.call('PEXPIRE', key, math.ceil((ws + 2 * period - now) / 1000))
  return {1, left(cur), 0, ws + 2 * period - now}
end
local retry
if cur + cost <= limit then
  retry = ws + (pm - fdiv((limit - cur - cost) * pm, prev)) * 1000 - now
else
  retry = ws + period + (pm - fdiv((limit - cost) * pm, cur)) * 1000 - now
end
return {0, left(cur), retry, reset(cur, prev)}
