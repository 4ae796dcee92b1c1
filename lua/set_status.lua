-- Moves order records forward in the read model; never back. One call per hash slot.
--
-- KEYS: order hashes (one slot)
-- ARGV: now (ms), then per key: status, rank, payment id ('' = none), payment amount, payment status
-- Returns how many records moved.
local moved = 0
for i, key in ipairs(KEYS) do
  local base = 1 + (i - 1) * 5
  if redis.call('EXISTS', key) == 1 then
    local rank = tonumber(redis.call('HGET', key, 'rank') or '0')
    if tonumber(ARGV[base + 2]) > rank then
      redis.call('HSET', key, 'status', ARGV[base + 1], 'rank', ARGV[base + 2], 'updated', ARGV[1])
      moved = moved + 1
    end
    if ARGV[base + 3] ~= '' then
      redis.call('HSET', key, 'pay_id', ARGV[base + 3], 'pay_amount', ARGV[base + 4], 'pay_status', ARGV[base + 5])
    end
  end
end
return moved
