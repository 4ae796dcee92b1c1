-- Purchases, each atomically: the gene's state, the item, the idempotency key (before the sale
-- window, so a retry after the sale ended still gets its first answer), the sale window, the
-- buyer's limit (before any decrement, so a repeat click never burns stock), the stock, the
-- decrement, the order's read model and its ORDER_CREATED event in the outbox stream.
--
-- One call carries one purchase or several of one hash slot (the gateway sends the purchases that
-- arrived together as one call: a call's own cost, which is most of a purchase's, is then paid
-- once), run one after the other in arrival order, each as if it were the script's only one.
-- Below, per purchase i (from 0), KEYS[7i + n] and ARGV[7i + n] are its KEYS[n] and ARGV[n].
--
-- An item may spread its stock over K shards, each a gene of its own; a purchase runs on its
-- buyer's home shard (its keys are that shard's, and its order id carries that gene), and sells
-- only the units that shard holds. It is refused unchanged when the caller assumed another K.
--
-- The sale window is judged on Redis's clock (TIME, read once per call), the one clock every
-- gateway shares: a gateway whose own clock runs fast or slow neither sells early nor late. The
-- same instant is the orders' accepted time.
--
-- KEYS[1] item hash      (remaining, limit, price, starts, ends; ms, 0 = open; shards, absent
--                        for 1), the home shard's
-- KEYS[2] buyers hash    (<user> = units held by live orders, <user>:o = latest order id)
-- KEYS[3] order hash     (the order's read model)
-- KEYS[4] outbox stream
-- KEYS[5] idempotency key, or a placeholder in the same slot when ARGV[5] == '0'
-- KEYS[6] the gene's state hash (ready = epoch of what Redis holds, i:<item> = known item)
-- KEYS[7] the order id's void key (its owner was told it does not exist)
-- ARGV: order_id, user_id, quantity, item_id, has_idempotency_key, idempotency_ttl_secs, the
-- item's shards as the caller knows them, and,
-- after every purchase's six, one last value: the largest skew (ms) allowed between an order id's
-- time (the minting gateway's clock) and Redis's
--
-- An id whose time is further from Redis's clock than that (a gateway whose clock is badly off)
-- never sells: `lua/lookup_order.lua` makes a missing id void within a window wider than that
-- skew, so every id that could still sell is covered and a "no such order" stays true.
--
-- Returns, per purchase, three values: code, value, accepted ms (or ''). Codes: 0 accepted (order
-- id, created ms), 1 unknown item, 2 not started, 3 ended, 4 replay of an accepted request (order
-- id), 5 limit reached (the held order id), 6 sold out (units remaining), 7 recovering (Redis lost
-- the gene's state: nothing sold), 8 void (the order id was declared unknown to its owner, or its
-- time is too far from Redis's clock: nothing sold), 9 Redis refused it (the error; nothing sold:
-- a purchase's first write comes after every check, and Redis refuses a script's writes, out of
-- memory or read-only, at its first), 10 the item's shards are not the caller's (nothing sold).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local at = string.format('%d', now)
local max_skew = tonumber(ARGV[#ARGV])
-- An order id's time: its top 41 bits, milliseconds since 2024-01-01 (a double keeps them exact:
-- the id's low bits lost to rounding are below the millisecond).
local function id_ms(id)
  return math.floor(tonumber(id) / 4194304) + 1704067200000
end

local function purchase(k, a)
  local state = redis.call('HMGET', KEYS[k + 6], 'ready', 'i:' .. ARGV[a + 4])
  local epoch = state[1]
  if not epoch then
    return 7, '', ''
  end
  local item = redis.call('HMGET', KEYS[k + 1], 'remaining', 'limit', 'price', 'starts', 'ends',
    'shards')
  if not item[1] then
    if state[2] then
      -- A known item lost its hash (a flushed key): the gene is rebuilt from the database.
      redis.call('HDEL', KEYS[k + 6], 'ready')
      return 7, '', ''
    end
    return 1, '', ''
  end

  if ARGV[a + 5] == '1' then
    local first = redis.call('GET', KEYS[k + 5])
    if first then
      return 4, first, ''
    end
  end

  -- Values reach redis.call as the strings they came as where they can: a Lua number passed to
  -- redis.call, or concatenated, is formatted with sprintf, a measurable share of this script's
  -- cost.
  local remaining = tonumber(item[1])
  local limit = tonumber(item[2]) or 1
  local price = tonumber(item[3]) or 0
  local starts = tonumber(item[4]) or 0
  local ends = tonumber(item[5]) or 0

  if starts > 0 and now < starts then
    return 2, '', ''
  end
  if ends > 0 and now >= ends then
    return 3, '', ''
  end
  if (item[6] or '1') ~= ARGV[a + 7] then
    return 10, '', ''
  end

  local user = ARGV[a + 2]
  local qty = tonumber(ARGV[a + 3])
  local held = tonumber(redis.call('HGET', KEYS[k + 2], user) or '0')
  if held + qty > limit then
    return 5, redis.call('HGET', KEYS[k + 2], user .. ':o') or '', ''
  end
  if remaining < qty then
    return 6, item[1], ''
  end
  -- Only on the selling path: the owner's GET may have declared this id unknown while the purchase
  -- was in flight; then it must not sell, or that answer would have been a lie.
  if redis.call('GET', KEYS[k + 7]) == user then
    return 8, '', ''
  end
  if math.abs(id_ms(ARGV[a + 1]) - now) > max_skew then
    return 8, '', ''
  end

  local order_id = ARGV[a + 1]
  local units = ARGV[a + 3]
  redis.call('HINCRBY', KEYS[k + 1], 'remaining', '-' .. units)
  redis.call('HINCRBY', KEYS[k + 2], user, units)
  redis.call('HSET', KEYS[k + 2], user .. ':o', order_id)
  -- One unit costs the price as Redis holds it; more are multiplied (and formatted) here.
  local amount = item[3]
  if qty ~= 1 or not amount then
    amount = string.format('%d', price * qty)
  end
  redis.call('HSET', KEYS[k + 3], R_USER, user, R_ITEM, ARGV[a + 4], R_QTY, units, R_AMOUNT, amount,
    R_STATUS, 'PENDING', R_CREATED, at, R_UPDATED, at, R_EPOCH, epoch)
  -- One field, decoded by schema/src/outbox.rs: order id, user, item, quantity, amount, accepted ms.
  redis.call('XADD', KEYS[k + 4], '*', 'e', order_id .. ' ' .. user .. ' ' .. ARGV[a + 4] .. ' ' .. units .. ' ' .. amount .. ' ' .. at)
  if ARGV[a + 5] == '1' then
    redis.call('SET', KEYS[k + 5], order_id, 'EX', ARGV[a + 6])
  end
  return 0, order_id, at
end

local out = {}
for i = 0, #KEYS / 7 - 1 do
  local ok, code, value, at = pcall(purchase, i * 7, i * 7)
  if not ok then
    value = type(code) == 'table' and (code.err or '') or tostring(code)
    code, at = 9, ''
  end
  out[#out + 1] = code
  out[#out + 1] = value or ''
  out[#out + 1] = at or ''
end
return out
