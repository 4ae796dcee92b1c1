-- Copies an item's sale window and per-user limit from the database into its Redis hash, which
-- the purchase script reads. Only an existing hash is touched: a lost one is rebuilt from the
-- database whole, and a hash of only these fields would look like an item to no one's benefit.
--
-- KEYS[1] item hash. ARGV: starts ms, ends ms (0 = open), per-user limit.
-- Returns 1 when written, 0 when Redis holds no such item.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'starts', ARGV[1], 'ends', ARGV[2], 'limit', ARGV[3])
return 1
