-- Takes or renews the lease of a snowflake node id.
-- KEYS[1] lease key, KEYS[2] high-water key. ARGV: token, ttl ms, high-water ms to record.
-- Returns {recorded high water (ms), 1 when the lease was free and is taken now, 0 when it was
-- ours already} when the lease is ours, {-1, 0} when another process holds it.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {-1, 0}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
local hwm = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[3]) > hwm then
  hwm = tonumber(ARGV[3])
  redis.call('SET', KEYS[2], string.format('%d', hwm))
end
return {hwm, holder and 0 or 1}
