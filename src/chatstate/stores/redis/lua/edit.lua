-- Replace or remove one entry by its number, and with truncate every entry after it: one step.
-- Nothing is renumbered (the numbers freed stay unused: gaps), the expiry and the summary stay;
-- the version goes up by one and the generation changes.
-- KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores, 5 the
--       gaps (see _numbers.lua), 6 the metadata, 7 the lease.
-- ARGV: 1 the entry's number; 2 '1' to truncate after it; 3 the version the edit is conditional
--       on ('': none); 4 the write id; 5 the fence ('': none); 6 the time (Unix seconds, as
--       text: the session's 'u'); 7 the new entry (none: remove).
-- Returns {length, version, applied (0/1)} ({0, 0, 1}: the edit emptied the session, which is
-- deleted as delete.lua deletes it); 'stale' if the version is not ARGV[3]; 'missing' if no
-- entry has the number (or there is no session); false if the fence is refused.
local meta = redis.call('HMGET', KEYS[3], 'w1', 'w2', 'w3', 'w4', 'wn', 'tail', 'gen', 'ver',
                        'h')
if seen(meta, ARGV[4]) then  -- a retry of a write already applied: the session as it is now
  replayed(KEYS[3], meta[5])
  return {redis.call('LLEN', KEYS[1]), tonumber(meta[8]) or 0, 0}
end
if fenced(KEYS[7], ARGV[5]) then return false end
local length = redis.call('LLEN', KEYS[1])
if length == 0 then return 'missing' end
local tail, gen, ver
if meta[6] then
  tail, gen, ver = tonumber(meta[6]), tonumber(meta[7]), tonumber(meta[8])
else  -- a list written by 0.1.0, numbered as a read of it reported
  tail, gen, ver = length, 0, tonumber(redis.call('GET', KEYS[4]) or 1)
end
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= ver then return 'stale' end
local N = numbering()
local g = N.parse(meta[9])
local head = tail - length - N.size(g)
local seq = tonumber(ARGV[1])
local index = N.index_of(g, head, tail, seq)
if not index then return 'missing' end
local entry, truncate = ARGV[7], ARGV[2] == '1'
local field, ids, written = remember(meta, meta[5], ARGV[4])
-- What stays: the entries before it, the entry replaced, and those after it unless truncated.
local kept = index + (entry and 1 or 0) + (truncate and 0 or length - index - 1)
if kept == 0 then  -- emptied: deleted, its write ids kept as delete.lua keeps them
  erase(KEYS, field, ids, written, 1)
  return {0, 0, 1}
end
if entry then redis.call('LSET', KEYS[1], index, entry) end
-- The index of the last entry kept when the edit cuts the list short (nil: it does not).
local last
if truncate then
  last = entry and index or index - 1
elseif not entry and index == length - 1 then
  last = index - 1
end
local gaps = g
if last then
  if last < length - 1 then
    redis.call('LTRIM', KEYS[1], 0, last)
    gaps = N.cut_after(g, N.number_at(g, head, last), tail)
  end
elseif not entry then
  if index == 0 then  -- the head: the next entry's number is the head now
    redis.call('LPOP', KEYS[1])
    gaps = N.above(g, N.number_at(g, head, 1))
  else  -- between two: marked by a value no entry has (the write id is unique), then removed
    local mark = '\0chatstate:removed:' .. ARGV[4]
    redis.call('LSET', KEYS[1], index, mark)
    redis.call('LREM', KEYS[1], index < length / 2 and 1 or -1, mark)  -- from the nearer end
    gaps = N.add(g, seq)
  end
end
ver = ver + 1
redis.call('HSET', KEYS[3], 'tail', tail, 'gen', gen + 1, 'ver', ver, field, ids,
           'wn', written, 'u', ARGV[6])
if not meta[6] then adopt(KEYS) end
if gaps ~= g then N.store(meta[9], gaps) end
return {kept, ver, 1}
