-- The Redis half of an operator's stock adjustment, atomically: the gene's state, the item, the
-- floor (stock may shrink only down to the units held by live orders, which `remaining` already
-- leaves out), then `remaining` and `stock` moved together and the adjustment recorded as pending
-- until the database has it too (`seckill_infra::stock`). Sent again with the same id, it does
-- nothing: the id is pending already.
--
-- KEYS[1] item hash, KEYS[2] the gene's state hash, KEYS[3] the gene's pending adjustments hash
-- ARGV: adjustment id, item id, delta, now (ms), reason
--
-- Returns {code, …}: {0, remaining, stock} applied, {1} already pending, {2} unknown item,
-- {3} recovering (Redis lost the gene's state: nothing changed), {4, remaining} the shrink would
-- take units that live orders hold (nothing changed).
local state = redis.call('HMGET', KEYS[2], 'ready', 'i:' .. ARGV[2])
if not state[1] then
  return {3}
end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return {1}
end
local remaining = redis.call('HGET', KEYS[1], 'remaining')
if not remaining then
  if state[2] then
    -- A known item lost its hash (a flushed key): the gene is rebuilt from the database.
    redis.call('HDEL', KEYS[2], 'ready')
    return {3}
  end
  return {2}
end
local delta = tonumber(ARGV[3])
if tonumber(remaining) + delta < 0 then
  return {4, remaining}
end
local left = redis.call('HINCRBY', KEYS[1], 'remaining', delta)
local stock = redis.call('HINCRBY', KEYS[1], 'stock', delta)
-- Decoded by `PendingAdjustment` (schema/src/scripts.rs): item, delta, ms, reason (last: it may
-- hold spaces, never a control character).
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
return {0, left, stock}
