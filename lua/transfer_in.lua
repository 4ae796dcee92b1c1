-- Credits a transfer's units to its target shard, once: the transfer id's marker (kept a day)
-- makes a repeat credit nothing.
--
-- KEYS[1] the target shard's item hash, KEYS[2] the transfer's marker, KEYS[3] the gene's state
-- hash, KEYS[4] the item's freeze key in this gene
-- ARGV: transfer id, units
-- Returns 1 credited, 0 credited before, -1 no such shard, -2 the gene is recovering, -3 frozen.
if not redis.call('HGET', KEYS[3], 'ready') then
  return -2
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return -3
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
redis.call('HINCRBY', KEYS[1], 'remaining', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'xseq', 1)
redis.call('SET', KEYS[2], ARGV[2], 'EX', 86400)
return 1
