-- Reads an order's record for its owner, and makes a "no such order" answer final: when the record
-- is missing, the id is declared void for this user, so a purchase of that id still in flight
-- (the gateway answered `503 outcome_unknown`) cannot sell afterwards (`lua/purchase.lua`).
--
-- KEYS[1] order hash, KEYS[2] its void key, KEYS[3] the gene's state hash
-- ARGV: user id, void ttl (s), '1' when the id is recent enough for a purchase to be in flight
-- Returns {0, fields...} with the record, {1} when there is none, {2} while the gene is recovering.
local rec = redis.call('HGETALL', KEYS[1])
if #rec > 0 then
  return {0, rec}
end
if not redis.call('HGET', KEYS[3], 'ready') then
  return {2}
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
end
return {1}
