-- Lays one shard of an item out anew when its shards change (PATCH, only while the sale is not
-- live and no buyer holds units): 'set' writes the shard's hash whole (its share of the units, the
-- item's settings and its shard count) and marks the item known in the gene; 'drop' removes a
-- shard the item no longer has.
--
-- KEYS[1] the shard's item hash, KEYS[2] its buyers hash, KEYS[3] its gene's state hash
-- ARGV: 'set' or 'drop', item id, remaining, stock, limit, price, starts ms, ends ms, name,
--   shards
-- Returns 1, or -2 while the gene is recovering (nothing written).
if not redis.call('HGET', KEYS[3], 'ready') then
  return -2
end
if ARGV[1] == 'drop' then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HDEL', KEYS[3], 'i:' .. ARGV[2])
  return 1
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'remaining', ARGV[3], 'stock', ARGV[4], 'limit', ARGV[5], 'price', ARGV[6],
  'starts', ARGV[7], 'ends', ARGV[8], 'name', ARGV[9], 'shards', ARGV[10])
redis.call('HSET', KEYS[3], 'i:' .. ARGV[2], '1')
return 1
