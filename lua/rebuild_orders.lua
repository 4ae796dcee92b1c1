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
  redis.call('HSET', KEYS[i], R_USER, ARGV[b], R_ITEM, ARGV[b + 1], R_QTY, ARGV[b + 2],
    R_AMOUNT, ARGV[b + 3], R_STATUS, ARGV[b + 4], R_RANK, ARGV[b + 5], R_CREATED, ARGV[b + 6],
    R_UPDATED, ARGV[b + 7], R_EPOCH, ARGV[2])
  if ARGV[b + 8] ~= '' then
    redis.call('HSET', KEYS[i], R_PAY_ID, ARGV[b + 8], R_PAY_AMOUNT, ARGV[b + 9], R_PAY_STATUS, ARGV[b + 10])
  end
end
return 1
