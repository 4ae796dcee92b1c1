-- Closes an order in Redis (its status, and no pending intent) and gives its units back, exactly
-- once: the `released` field of the order's record is the guard, so a redelivered close changes
-- nothing. Units go back only when the record was counted by the state Redis holds now (its
-- `epoch` is the gene's): an order sold before Redis lost its data and was rebuilt holds nothing
-- here.
--
-- KEYS[1] item hash, KEYS[2] buyers hash, KEYS[3] order hash, KEYS[4] the gene's state hash
-- ARGV: order_id, user_id, quantity, final status, rank of that status, now (ms)
-- Returns {code, generation}: code 1 when units went back, 0 when they already had (or were
-- never held here), -1 when Redis has no record of the order (nothing is touched then), -2 while
-- the gene is recovering; the gene's write generation, moved forward by a call that may write
-- (see `lua/mirror.lua`), 0 when nothing was touched.
local epoch = redis.call('HGET', KEYS[4], 'ready')
if not epoch then
  return {-2, 0}
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return {-1, 0}
end
local gen = redis.call('HINCRBY', KEYS[4], 'gen', 1)
local rec = redis.call('HMGET', KEYS[3], R_RANK, R_EPOCH, R_PAY_STATUS)
if tonumber(ARGV[5]) > tonumber(rec[1] or '0') then
  redis.call('HSET', KEYS[3], R_STATUS, ARGV[4], R_RANK, ARGV[5], R_UPDATED, ARGV[6])
end
-- A closed order has no payment pending: its intent goes, as the database shows it (the intent
-- is shown only while the order awaits payment). A result the provider sends later shows when
-- the workers mirror it.
if rec[3] == 'PENDING' then
  redis.call('HDEL', KEYS[3], R_PAY_ID, R_PAY_AMOUNT, R_PAY_STATUS)
end
if redis.call('HSETNX', KEYS[3], R_RELEASED, ARGV[6]) == 0 then
  return {0, gen}
end
if rec[2] ~= epoch then
  return {0, gen}
end
local qty = tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'remaining', qty)
end
local user = ARGV[2]
local left = redis.call('HINCRBY', KEYS[2], user, -qty)
if left <= 0 then
  redis.call('HDEL', KEYS[2], user)
  if redis.call('HGET', KEYS[2], user .. ':o') == ARGV[1] then
    redis.call('HDEL', KEYS[2], user .. ':o')
  end
end
return {1, gen}
