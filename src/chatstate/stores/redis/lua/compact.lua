-- Fold the oldest entries into the summary, if the session is still in the generation read.
-- KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores, 5 the
--       gaps (see _numbers.lua), 6 the metadata (kept, as the times are).
-- ARGV: 1 the generation read; 2 the sequence number of the first entry kept (those below it
--       are folded: whatever of them a trim meanwhile left); 3 the new summary; 4 the write id.
-- Returns 1 if it committed (now or, for a retry, at its first run), 0 if the session was
-- saved, folded, deleted or restored meanwhile. Appends meanwhile are fine: their entries have
-- larger numbers and stay.
local meta = redis.call('HMGET', KEYS[3], 'w1', 'w2', 'w3', 'w4', 'wn', 'tail', 'gen', 'ver',
                        'h', 'm')
if seen(meta, ARGV[4]) then
  replayed(KEYS[3], meta[5])
  return 1
end
local length = redis.call('LLEN', KEYS[1])
if length == 0 then return 0 end
local tail, gen, ver
if meta[6] then
  tail, gen, ver = tonumber(meta[6]), tonumber(meta[7]), tonumber(meta[8])
else  -- a list written by 0.1.0, numbered as a read of it reported
  tail, gen, ver = length, 0, tonumber(redis.call('GET', KEYS[4]) or 1)
end
if gen ~= tonumber(ARGV[1]) then return 0 end
-- Counted by number: the gaps (pops, edits) between the head and the first entry kept are no
-- entries.
local N = numbering()
local g = N.parse(meta[9])
local head = tail - length - N.size(g)
local folded = N.count_below(g, head, length, tonumber(ARGV[2]))
if folded > 0 then
  redis.call('LTRIM', KEYS[1], folded, -1)
  if meta[9] then
    if folded < length then
      N.store(meta[9], N.above(g, N.number_at(g, head, folded)))
    else  -- nothing left to number (a fold keeps one entry: not from the store)
      N.store(meta[9], {})
    end
  end
end
redis.call('SET', KEYS[2], ARGV[3])
local field, ids, written = remember(meta, meta[5], ARGV[4])
redis.call('HSET', KEYS[3], 'tail', tail, 'gen', gen + 1, 'ver', ver + 1, 's', 1, field, ids,
           'wn', written)
redis.call('DEL', KEYS[4])
-- The summary, the numbers and the metadata live and die with the list.
local ttl = redis.call('PTTL', KEYS[1])
for i = 2, 6 do
  if i <= 3 or (i == 6 and meta[10]) then expire(KEYS[i], math.max(ttl, 0)) end
end
return 1
