-- Takes units out of one shard of an item for another, under a transfer id: the first step of a
-- transfer (then `lua/transfer_in.lua` on the target, then `lua/transfer_done.lua` here). Safe to
-- repeat: a transfer id taken before answers the units it took, and takes nothing more. While the
-- units are on their way they are the shard's pending transfer (`x:<id>` = `<units> <target gene>
-- <ms>`), counted as the item's stock by everything that sums its shards.
--
-- KEYS[1] the source shard's item hash, KEYS[2] its gene's state hash, KEYS[3] the item's freeze
-- key in this gene (a rebuild of another shard holds it while it counts the shards)
-- ARGV: transfer id, units wanted, target gene, now (ms)
-- Returns the units taken (0: none left), -1 no such shard, -2 the gene is recovering, -3 frozen.
if not redis.call('HGET', KEYS[2], 'ready') then
  return -2
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return -3
end
local field = 'x:' .. ARGV[1]
local taken = redis.call('HGET', KEYS[1], field)
if taken then
  return tonumber(string.match(taken, '^(%d+)'))
end
local remaining = redis.call('HGET', KEYS[1], 'remaining')
if not remaining then
  return -1
end
local n = math.min(tonumber(remaining), tonumber(ARGV[2]))
if n <= 0 then
  return 0
end
local units = string.format('%d', n)
redis.call('HINCRBY', KEYS[1], 'remaining', '-' .. units)
redis.call('HSET', KEYS[1], field, units .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
redis.call('HINCRBY', KEYS[1], 'xpending', 1)
redis.call('HINCRBY', KEYS[1], 'xseq', 1)
return n
