-- Takes, renews or gives up the lease of a gene's outbox relay: one relay at a time reads a gene's
-- outbox, so entries are read without a consumer group (whose pending-entry list cost Redis an
-- XCLAIM in the append-only file per entry read, and an XACK).
-- KEYS[1] lease key. ARGV: token, ttl ms, 'hold' or 'release'.
-- Returns 1 when the lease is the caller's (taken or renewed), 0 when another relay holds it or
-- it was given up.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if holder == ARGV[1] then
    redis.call('DEL', KEYS[1])
  end
  return 0
end
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
