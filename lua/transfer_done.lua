-- Ends a transfer on its source shard once its target has the units: the pending transfer goes.
--
-- KEYS[1] the source shard's item hash. ARGV: transfer id.
-- Returns 1 when it ended it now, 0 when it had ended before.
if redis.call('HDEL', KEYS[1], 'x:' .. ARGV[1]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'xpending', -1)
redis.call('HINCRBY', KEYS[1], 'xseq', 1)
return 1
