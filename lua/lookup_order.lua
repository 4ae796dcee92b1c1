-- Reads an order's record for its owner, and makes a "no such order" answer final: when the record
-- is missing and the id is recent, the id is declared void for this user, so a purchase of that id
-- still in flight (the gateway answered `503 outcome_unknown`) cannot sell afterwards
-- (`lua/purchase.lua`).
--
-- Recent is judged on Redis's clock (TIME), the one every gateway shares: an id minted by a
-- gateway whose clock runs ahead (an id "from the future") is recent too, so no clock skew makes
-- a "no such order" answer untrue.
--
-- KEYS[1] order hash, KEYS[2] its void key, KEYS[3] the gene's state hash
-- ARGV: user id, void ttl (s), the id's minted ms ('0': never void), in-flight window (ms)
-- Returns {0, fields...} with the record, {1} when there is none, {2} while the gene is recovering.
local rec = redis.call('HGETALL', KEYS[1])
if #rec > 0 then
  return {0, rec}
end
if not redis.call('HGET', KEYS[3], 'ready') then
  return {2}
end
local minted = tonumber(ARGV[3])
if minted > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  if now - minted <= tonumber(ARGV[4]) then
    redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
  end
end
return {1}
