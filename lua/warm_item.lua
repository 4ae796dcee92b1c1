-- Loads an item into Redis unless it is already there: a live `remaining` is never overwritten.
-- KEYS[1] item hash. ARGV: stock, per-user limit, price, starts ms, ends ms, name.
-- Returns 1 when loaded, 0 when it was there.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'remaining', ARGV[1], 'stock', ARGV[1], 'limit', ARGV[2], 'price', ARGV[3],
  'starts', ARGV[4], 'ends', ARGV[5], 'name', ARGV[6])
return 1
