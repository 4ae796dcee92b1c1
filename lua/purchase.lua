-- One purchase, atomically: the item, its sale window, the idempotency key, the buyer's limit
-- (before any decrement, so a repeat click never burns stock), the stock, the decrement, the
-- order's read model and its ORDER_CREATED event in the outbox stream.
--
-- KEYS[1] item hash      (remaining, limit, price, starts, ends; ms, 0 = open)
-- KEYS[2] buyers hash    (<user> = units held by live orders, <user>:o = latest order id)
-- KEYS[3] order hash     (the order's read model)
-- KEYS[4] outbox stream
-- KEYS[5] idempotency key, or a placeholder in the same slot when ARGV[5] == '0'
-- ARGV: order_id, user_id, quantity, item_id, has_idempotency_key, idempotency_ttl_secs
--
-- Returns {code, value}: 0 accepted (order id, created ms), 1 unknown item, 2 not started,
-- 3 ended, 4 replay of an accepted request (order id), 5 limit reached (the held order id),
-- 6 sold out (units remaining).
local item = redis.call('HMGET', KEYS[1], 'remaining', 'limit', 'price', 'starts', 'ends')
if not item[1] then
  return {1, ''}
end
local remaining = tonumber(item[1])
local limit = tonumber(item[2]) or 1
local price = tonumber(item[3]) or 0
local starts = tonumber(item[4]) or 0
local ends = tonumber(item[5]) or 0

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if starts > 0 and now < starts then
  return {2, ''}
end
if ends > 0 and now >= ends then
  return {3, ''}
end

if ARGV[5] == '1' then
  local first = redis.call('GET', KEYS[5])
  if first then
    return {4, first}
  end
end

local user = ARGV[2]
local qty = tonumber(ARGV[3])
local held = tonumber(redis.call('HGET', KEYS[2], user) or '0')
if held + qty > limit then
  return {5, redis.call('HGET', KEYS[2], user .. ':o') or ''}
end
if remaining < qty then
  return {6, tostring(remaining)}
end

local order_id = ARGV[1]
redis.call('HINCRBY', KEYS[1], 'remaining', -qty)
redis.call('HINCRBY', KEYS[2], user, qty)
redis.call('HSET', KEYS[2], user .. ':o', order_id)
local amount = price * qty
redis.call('HSET', KEYS[3], 'user', user, 'item', ARGV[4], 'qty', qty, 'amount', amount,
  'status', 'PENDING', 'created', now, 'updated', now)
redis.call('XADD', KEYS[4], '*', 'o', order_id, 'u', user, 'i', ARGV[4], 'q', qty, 'a', amount, 't', now)
if ARGV[5] == '1' then
  redis.call('SET', KEYS[5], order_id, 'EX', tonumber(ARGV[6]))
end
return {0, order_id, tostring(now)}
