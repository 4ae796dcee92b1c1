-- Ends a gene's rebuild: marks the state Redis now holds as complete (`ready` = its epoch) with
-- the gene's known items, and lets go of the lock. From here on the gene sells and releases again.
--
-- The gene's write generation starts at the database's (what it recorded of the workers' writes),
-- so that the rebuilt state is not taken for a stale one.
--
-- KEYS[1] rebuild lock, KEYS[2] the gene's state hash
-- ARGV: lock token, epoch, write generation, then the gene's item ids
-- Returns 1, or 0 when the lock is no longer ours (nothing is marked).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'ready', ARGV[2], 'gen', ARGV[3])
for i = 4, #ARGV do
  redis.call('HSET', KEYS[2], 'i:' .. ARGV[i], '1')
end
redis.call('DEL', KEYS[1])
return 1
