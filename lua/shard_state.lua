-- What one shard of an item holds, read at one instant: its remaining units, the units its
-- buyers hold, its transfers out not yet ended (their units and their ids with targets), and its
-- transfer sequence (moved by every transfer step), so that a reader of every shard can tell a
-- consistent reading (each sequence the same twice) from one a transfer ran through.
--
-- KEYS[1] the shard's item hash, KEYS[2] its buyers hash
-- ARGV[1] '1': sum what the buyers hold (a read of every buyer); '0': held is answered 0
-- Returns {exists (0/1), remaining, held, pending units, sequence, then per pending transfer: id,
-- units, target gene, ms}.
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return {0, 0, 0, 0, 0}
end
local remaining, seq, pending = 0, 0, 0
local transfers = {}
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if name == 'remaining' then
    remaining = tonumber(value)
  elseif name == 'xseq' then
    seq = tonumber(value)
  elseif string.sub(name, 1, 2) == 'x:' then
    local units, target, ms = string.match(value, '^(%d+) (%d+) (%d+)$')
    pending = pending + tonumber(units)
    transfers[#transfers + 1] = string.sub(name, 3)
    transfers[#transfers + 1] = units
    transfers[#transfers + 1] = target
    transfers[#transfers + 1] = ms
  end
end
local held = 0
if ARGV[1] == '1' then
  local buyers = redis.call('HGETALL', KEYS[2])
  for i = 1, #buyers, 2 do
    if not string.find(buyers[i], ':', 1, true) then
      held = held + tonumber(buyers[i + 1])
    end
  end
end
local out = {1, remaining, held, pending, seq}
for _, v in ipairs(transfers) do
  out[#out + 1] = v
end
return out
