-- Reverses the Redis half of a stock adjustment the database refused, once: only while it is still
-- pending (its entry is the guard), and only while the gene's state is whole, so that a rebuild
-- that counted the pending adjustment (`seckill_infra::recovery`) is never half undone.
--
-- KEYS[1] item hash, KEYS[2] the gene's state hash, KEYS[3] the gene's pending adjustments hash
-- ARGV: adjustment id
-- Returns 1 when reversed, 0 when not pending (reversed or settled before), -1 while recovering.
if not redis.call('HGET', KEYS[2], 'ready') then
  return -1
end
local entry = redis.call('HGET', KEYS[3], ARGV[1])
if not entry then
  return 0
end
local delta = tonumber(string.match(entry, '^%S+ (%S+)'))
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'remaining', -delta)
  redis.call('HINCRBY', KEYS[1], 'stock', -delta)
end
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
