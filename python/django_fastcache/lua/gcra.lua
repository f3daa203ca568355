-- GCRA, one atomic check. Twin of detail::gcra in src/core/limiter.cpp.
-- KEYS[1]: the theoretical arrival time (TAT), integer microseconds, as a string.
-- ARGV: limit, period_us, burst (0: the limit), cost, [now_us: tests only; empty means
-- Redis TIME]. Returns {allowed, remaining, retry_after_us, reset_after_us}.
-- `now` (integer microseconds) is set by _now.lua, prepended when the script is loaded.
local key = KEYS[1]
local limit, period, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
-- Floor division of non-negative integers, exact in doubles (fmod is exact).
local function fdiv(a, b) return (a - math.fmod(a, b)) / b end

if burst == 0 then burst = limit end
local t = fdiv(period, limit)
if math.fmod(period, limit) ~= 0 then t = t + 1 end
local tolerance = burst * t
local tat = tonumber(redis.call('GET', key) or '0')
if tat < now then tat = now end
local room = tolerance - (tat - now)
if room < 0 then room = 0 else room = fdiv(room, t) end

if cost > burst then
  return {0, room, -1, tat - now}
end
local new_tat = tat + cost * t
local allow_at = new_tat - tolerance
if now >= allow_at then
  -- The state means nothing once TAT has passed; never keep it longer than the period.
  local ttl = math.ceil((new_tat - now) / 1000)
  if ttl > period / 1000 then ttl = period / 1000 end
  redis.call('SET', key, string.format('%d', new_tat), 'PX', ttl)
  return {1, fdiv(now - allow_at, t), 0, new_tat - now}
end
return {0, room, allow_at - now, tat - now}
