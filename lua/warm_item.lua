-- Loads a new item into Redis unless it is already there: a live `remaining` is never
-- overwritten, and an item Redis knew but lost is never warmed from scratch (that would forget
-- its buyers' holdings): its gene is rebuilt from the database instead.
-- KEYS[1] item hash, KEYS[2] the gene's state hash. ARGV: item id, stock, per-user limit, price,
-- starts ms, ends ms, name.
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
redis.call('HSET', KEYS[1], 'remaining', ARGV[2], 'stock', ARGV[2], 'limit', ARGV[3], 'price', ARGV[4],
  'starts', ARGV[5], 'ends', ARGV[6], 'name', ARGV[7])
redis.call('HSET', KEYS[2], 'i:' .. ARGV[1], '1')
return 1
