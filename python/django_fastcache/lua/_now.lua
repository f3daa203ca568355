-- Prepended to every limiter script when it is loaded (limiter._load_script): the time
-- in integer microseconds, from Redis TIME so that app servers' clocks do not matter, or
-- from ARGV[5] when a test gives one.
local now
if ARGV[5] and ARGV[5] ~= '' then
  now = tonumber(ARGV[5])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
