-- Lets go of a gene's rebuild lock after a failed rebuild, if it is still the caller's, so another
-- process (or the next attempt) need not wait for it to expire.
-- KEYS[1] rebuild lock. ARGV[1] lock token. Returns 1 when released, 0 when it was not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
