-- Drops the outbox entries every relay is done with, atomically. An entry can go once it was
-- delivered to the group and acked: everything before the oldest pending entry, or, with nothing
-- pending, everything up to the group's last delivered id. `XTRIM MINID` drops whole stream nodes,
-- where `XDEL` edits them entry by entry and stalls every purchase behind it for milliseconds.
--
-- KEYS[1] outbox stream. ARGV[1] group name. Returns how many entries went.
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local threshold
if tonumber(summary[1]) > 0 then
  threshold = summary[2]
else
  local last
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local fields = {}
    for i = 1, #group, 2 do
      fields[group[i]] = group[i + 1]
    end
    if fields['name'] == ARGV[1] then
      last = fields['last-delivered-id']
    end
  end
  if not last then
    return 0
  end
  local ms, seq = string.match(last, '^(%d+)-(%d+)$')
  threshold = ms .. '-' .. (tonumber(seq) + 1)
end
return redis.call('XTRIM', KEYS[1], 'MINID', threshold)
