-- Loads a new item's shard into Redis unless it is already there: a live `remaining` is never
-- overwritten, and an item Redis knew but lost is never warmed from scratch (that would forget
-- its buyers' holdings): its gene is rebuilt from the database instead.
-- KEYS[1] the shard's item hash, KEYS[2] its gene's state hash. ARGV: item id, the shard's
-- remaining units, the item's stock, per-user limit, price, starts ms, ends ms, name, shards.
-- Returns 1 when loaded, 0 when it was there, -1 when the gene must be rebuilt first.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local state = redis.call('HMGET', KEYS[2], 'ready', 'i:' .. ARGV[1])
if not state[1] then
  return -1
end
if state[2] then
  redis.call('HDEL', KEYS[2], 'ready')
  return -1
end
redis.call('HSET', KEYS[1], 'remaining', ARGV[2], 'stock', ARGV[3], 'limit', ARGV[4], 'price', ARGV[5],
  'starts', ARGV[6], 'ends', ARGV[7], 'name', ARGV[8], 'shards', ARGV[9])
redis.call('HSET', KEYS[2], 'i:' .. ARGV[1], '1')
return 1
