-- Sliding log, one atomic check: at most ARGV[1] units in any window (now - period, now].
-- Twin of detail::sliding_log in src/core/limiter.cpp (keep them line for line).
-- KEYS[1]: a list of entry times (integer microseconds), newest at the head, one element
-- per unit of cost. ARGV: limit, period_us, burst (unused), cost, [now_us: tests only;
-- empty means Redis TIME]. Returns {allowed, remaining, retry_after_us, reset_after_us}.
-- `now` (integer microseconds) is set by _now.lua, prepended when the script is loaded.
local key = KEYS[1]
local limit, period, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local horizon = now - period

-- When even the newest entry has left the window, drop the whole log in one command.
local newest = redis.call('LINDEX', key, 0)
if newest and tonumber(newest) <= horizon then
  redis.call('DEL', key)
  newest = nil
end
if newest then
  while true do
    local oldest = redis.call('LINDEX', key, -1)
    if not oldest or tonumber(oldest) > horizon then break end
    redis.call('RPOP', key)
  end
end
local total = redis.call('LLEN', key)
local reset = 0
if newest then reset = tonumber(newest) + period - now end

if cost > limit then
  return {0, limit - total, -1, reset}
end
if total + cost <= limit then
  local stamp = string.format('%d', now)
  local batch = {}
  for i = 1, cost do
    batch[#batch + 1] = stamp
    -- Lua's C stack bounds unpack(); push in chunks.
    if #batch == 1000 or i == cost then
      redis.call('LPUSH', key, unpack(batch))
      batch = {}
    end
  end
  redis.call('PEXPIRE', key, period / 1000)
  return {1, limit - total - cost, 0, period}
end
-- The unit whose expiry makes room for this cost: the (total + cost - limit)-th oldest.
local at = tonumber(redis.call('LINDEX', key, -(total + cost - limit)))
return {0, limit - total, at + period - now, reset}
