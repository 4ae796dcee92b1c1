-- Reads an order's record for its owner, and makes a "no such order" answer final: when the record
-- is missing and the id is recent, the id is declared void for this user, so a purchase of that id
-- still in flight (the gateway answered `503 outcome_unknown`) cannot sell afterwards
-- (`lua/purchase.lua`).
--
-- Recent is judged on Redis's clock (TIME), the one every gateway shares, both ways: an id whose
-- time is within the window of Redis's clock, before or after it, is made void. The purchase
-- script never sells an id whose time is further from Redis's clock than its allowed skew, which
-- is smaller than this window, so every id that could still sell is covered, whatever the minting
-- gateway's clock said.
--
-- A record of another epoch than the gene's (its state was rebuilt since, after a failover to a
-- replica that missed writes) is trusted only while it says PENDING, an order on its way to the
-- database: of any later status the database is the record, and the caller reads it there.
--
-- KEYS[1] order hash, KEYS[2] its void key, KEYS[3] the gene's state hash
-- ARGV: user id, void ttl (s), the id's minted ms ('0': never void), window (ms)
-- Returns {0, fields...} with the record, {1} when there is none, {2} while the gene is recovering.
local rec = redis.call('HGETALL', KEYS[1])
local ready = redis.call('HGET', KEYS[3], 'ready')
if #rec > 0 then
  local epoch, status
  for i = 1, #rec, 2 do
    if rec[i] == R_EPOCH then
      epoch = rec[i + 1]
    elseif rec[i] == R_STATUS then
      status = rec[i + 1]
    end
  end
  if epoch == ready or status == 'PENDING' or not ready then
    return {0, rec}
  end
  -- A stale record of a stored order: the database tells.
  return {1}
end
if not ready then
  return {2}
end
local minted = tonumber(ARGV[3])
if minted > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  if math.abs(now - minted) <= tonumber(ARGV[4]) then
    redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
  end
end
return {1}
