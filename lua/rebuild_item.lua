-- Rebuilds one item's shard of a gene from the database: its hash and its buyers' holdings,
-- replacing whatever Redis still had of them. Runs only while the caller holds the gene's rebuild
-- lock.
--
-- KEYS[1] rebuild lock, KEYS[2] the shard's item hash, KEYS[3] its buyers hash
-- ARGV: lock token, first chunk ('1' replaces, '0' appends buyers), the shard's remaining units,
--   the item's stock, limit, price, starts ms, ends ms, name, shards, then per buyer: user, units
--   held, latest held order id
-- Returns 1, or 0 when the lock is no longer ours (Redis lost it too: start again).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[2], 'remaining', ARGV[3], 'stock', ARGV[4], 'limit', ARGV[5],
    'price', ARGV[6], 'starts', ARGV[7], 'ends', ARGV[8], 'name', ARGV[9], 'shards', ARGV[10])
end
for i = 11, #ARGV, 3 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1], ARGV[i] .. ':o', ARGV[i + 2])
end
return 1
