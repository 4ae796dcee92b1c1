-- Moves order records forward in the read model, never back; one call per hash slot. An order
-- whose record was not counted by the state Redis holds now (Redis lost its data and was rebuilt
-- from the database while the order was on its way there) is adopted: its record is written
-- again and, while it holds stock, its units are taken from the item and added to its buyer. A
-- `CREATED` order (its stock not locked in the database yet) is adopted only within the item's
-- stock and its buyer's limit; otherwise it is refused (the workers compensate it) and marked so,
-- which a redelivery finds again.
--
-- Two shapes. The short one, which the workers send first, carries what a move writes (nearly
-- always all there is to do): an order whose record belongs to another epoch is answered 2 and
-- left alone, and the workers send it again in the full shape, which carries what an adoption
-- needs too. The short shape is half the arguments per order: a tenth of Redis's work per sold
-- order was parsing and interning the full shape's arguments for a move that used a third of them.
--
-- A third shape, 'v' (verify), writes nothing: it asks only whether Redis counted the order (its
-- record is of this epoch) and whether it was refused. The workers send `CREATED` that way, the
-- status an order takes when its ORDER_CREATED is stored: `AWAITING_PAYMENT` follows within
-- milliseconds, so the read model goes from `PENDING` to `AWAITING_PAYMENT` and is written once
-- per order on its way to payment. An order of another epoch is answered 2 as in the short shape,
-- and its full shape adopts it and writes `CREATED` as before.
--
-- KEYS[1] the gene's state hash, then per order: its record (short, verify); its record, its item
--   hash, its buyers hash (full)
-- ARGV[1] now (ms), ARGV[2] 's' (short), 'v' (verify) or 'f' (full), then per order (none in the
--   verify shape): order id, status, rank,
--   payment id ('' = none), payment amount, payment status (short: 6 values); and in the full
--   shape 6 more: user, item, quantity, amount, created ms, mode: 'r' holds stock and may be
--   refused, 'h' holds stock, 'n' holds none
-- Returns {-1} while the gene is recovering, else one value per order: 1 counted, 0 refused,
-- 2 send it in the full shape; then the gene's write generation (`gen` of its state hash), which
-- a call that may write moves forward: the workers record it in the database, and a Redis found
-- below what the database recorded (a replica that missed writes) is rebuilt.
local epoch = redis.call('HGET', KEYS[1], 'ready')
if not epoch then
  return {-1}
end
local now = ARGV[1]
if ARGV[2] == 'v' then
  local out = {}
  for i = 2, #KEYS do
    local rec = redis.call('HMGET', KEYS[i], R_EPOCH, R_REFUSED)
    if rec[1] ~= epoch then
      out[i - 1] = 2
    elseif rec[2] then
      out[i - 1] = 0
    else
      out[i - 1] = 1
    end
  end
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
  return out
end
local full = ARGV[2] == 'f'
local stride, width = 1, 6
if full then
  stride, width = 3, 12
end
local out = {}
local n = (#KEYS - 1) / stride
for i = 1, n do
  local okey = KEYS[2 + (i - 1) * stride]
  local b = 2 + (i - 1) * width
  -- Strings go to redis.call as they came (ranks and quantities too): a Lua number would be
  -- formatted with sprintf on the way.
  local id, status, rank = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local pay = ARGV[b + 4] ~= ''
  local rec = redis.call('HMGET', okey, R_EPOCH, R_RANK, R_REFUSED)
  local result = 1
  if rec[1] ~= epoch and not full then
    result = 2
    pay = false
  elseif rec[1] == epoch then
    -- The status and the payment in one write where both change.
    if tonumber(rank) > tonumber(rec[2] or '0') then
      if pay then
        redis.call('HSET', okey, R_STATUS, status, R_RANK, rank, R_UPDATED, now,
          R_PAY_ID, ARGV[b + 4], R_PAY_AMOUNT, ARGV[b + 5], R_PAY_STATUS, ARGV[b + 6])
        pay = false
      else
        redis.call('HSET', okey, R_STATUS, status, R_RANK, rank, R_UPDATED, now)
      end
    end
    if rec[3] then
      result = 0
    end
  else
    local ikey, bkey = KEYS[i * 3], KEYS[i * 3 + 1]
    local user, units, mode = ARGV[b + 7], ARGV[b + 9], ARGV[b + 12]
    local qty = tonumber(units)
    local take = mode ~= 'n'
    if take and redis.call('EXISTS', ikey) == 0 then
      -- The item's hash is gone too: the whole gene is rebuilt first.
      redis.call('HDEL', KEYS[1], 'ready')
      return {-1}
    end
    if mode == 'r' then
      local it = redis.call('HMGET', ikey, 'remaining', 'limit')
      local held = tonumber(redis.call('HGET', bkey, user) or '0')
      if held + qty > (tonumber(it[2]) or 1) or tonumber(it[1]) < qty then
        take = false
        result = 0
      end
    end
    redis.call('DEL', okey)
    redis.call('HSET', okey, R_USER, user, R_ITEM, ARGV[b + 8], R_QTY, units, R_AMOUNT, ARGV[b + 10],
      R_STATUS, status, R_RANK, rank, R_CREATED, ARGV[b + 11], R_UPDATED, now, R_EPOCH, epoch)
    if take then
      redis.call('HINCRBY', ikey, 'remaining', '-' .. units)
      redis.call('HINCRBY', bkey, user, units)
      redis.call('HSET', bkey, user .. ':o', id)
    else
      -- Nothing of it is held here: a later close must not give units back.
      redis.call('HSET', okey, R_RELEASED, now)
      if result == 0 then
        redis.call('HSET', okey, R_REFUSED, '1')
      end
    end
  end
  if pay then
    redis.call('HSET', okey, R_PAY_ID, ARGV[b + 4], R_PAY_AMOUNT, ARGV[b + 5], R_PAY_STATUS, ARGV[b + 6])
  end
  out[i] = result
end
out[#out + 1] = redis.call('HINCRBY', KEYS[1], 'gen', 1)
return out
