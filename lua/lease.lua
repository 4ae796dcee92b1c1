-- Takes or renews the lease of a snowflake node id.
-- KEYS[1] lease key, KEYS[2] high-water key. ARGV: token, ttl ms, high-water ms to record.
-- Returns the recorded high water (ms) when the lease is ours, -1 when another process holds it.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return -1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
local hwm = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[3]) > hwm then
  hwm = tonumber(ARGV[3])
  redis.call('SET', KEYS[2], hwm)
end
return hwm
