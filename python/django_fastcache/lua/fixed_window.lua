-- Fixed window, one atomic check. Twin of detail::fixed_window in src/core/limiter.cpp.
-- KEYS[1]: a hash {w = window start (integer microseconds), n = units counted in it}.
-- ARGV: limit, period_us, burst (unused), cost, [now_us: tests only; empty means Redis
-- TIME]. Returns {allowed, remaining, retry_after_us, reset_after_us}.
-- `now` (integer microseconds) is set by _now.lua, prepended when the script is loaded.
local key = KEYS[1]
local limit, period, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local ws = now - math.fmod(now, period)
local stored = redis.call('HMGET', key, 'w', 'n')
local count = 0
if stored[1] and tonumber(stored[1]) == ws then count = tonumber(stored[2]) end
local window_left = ws + period - now

if cost > limit then
  local reset = 0
  if count > 0 then reset = window_left end
  return {0, limit - count, -1, reset}
end
if count + cost <= limit then
  redis.call('HSET', key, 'w', string.format('%d', ws), 'n', count + cost)
  redis.call('PEXPIRE', key, math.ceil(window_left / 1000))
  return {1, limit - count - cost, 0, window_left}
end
return {0, limit - count, window_left, window_left}
