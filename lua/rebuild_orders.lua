-- Rewrites the read model of live orders from the database, counted by the new state (`epoch`).
-- Runs only while the caller holds the gene's rebuild lock.
--
-- KEYS[1] rebuild lock, then one record key per order
-- ARGV: lock token, epoch, now, then per order 11 values: user, item, quantity, amount, status,
--   rank, created ms, updated ms, payment id ('' = none), payment amount, payment status
-- Returns 1, or 0 when the lock is no longer ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
for i = 2, #KEYS do
  local b = 4 + (i - 2) * 11
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], 'user', ARGV[b], 'item', ARGV[b + 1], 'qty', ARGV[b + 2],
    'amount', ARGV[b + 3], 'status', ARGV[b + 4], 'rank', ARGV[b + 5], 'created', ARGV[b + 6],
    'updated', ARGV[b + 7], 'epoch', ARGV[2])
  if ARGV[b + 8] ~= '' then
    redis.call('HSET', KEYS[i], 'pay_id', ARGV[b + 8], 'pay_amount', ARGV[b + 9], 'pay_status', ARGV[b + 10])
  end
end
return 1
