-- Remove the newest entries of a session and return them: one step. What it removed is kept for
-- 10 minutes in a key of its own (the write id, then each entry as its length, ':' and its
-- bytes), so that a retry of this pop (a lost reply) returns them again; not in the meta hash,
-- which stays small enough for Redis's compact encoding.
-- KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores, 5 the
--       gaps (see _numbers.lua), 6 the metadata, 7 the lease, 8 the last pop's entries.
-- ARGV: 1 how many to remove (at least 1); 2 a random seed, the new generation; 3 the write id;
--       4 the fence ('': none); 5 the time (Unix seconds, as text: the session's 'u').
-- Returns {entries, length, version, 1}; a retry: {the kept entries or '', length, version, 0};
-- false if the fence is refused. A pop that empties the session deletes it (as delete.lua).
-- The numbers it frees stay unused: a gap up to the tail, which stays.
local meta = redis.call('HMGET', KEYS[3], 'w1', 'w2', 'w3', 'w4', 'wn', 'tail', 'ver', 'h')
if seen(meta, ARGV[3]) then
  replayed(KEYS[3], meta[5])
  local kept = redis.call('GET', KEYS[8]) or ''
  if string.sub(kept, 1, 8) ~= ARGV[3] then kept = '' end
  return {kept, redis.call('LLEN', KEYS[1]), tonumber(meta[7]) or 0, 0}
end
if fenced(KEYS[7], ARGV[4]) then return false end
local n = redis.call('LLEN', KEYS[1])
if n == 0 then return {{}, 0, 0, 1} end
local count = math.min(tonumber(ARGV[1]), n)
local popped = redis.call('LRANGE', KEYS[1], -count, -1)
local kept = {ARGV[3]}
for _, entry in ipairs(popped) do
  kept[#kept + 1] = #entry .. ':' .. entry
end
redis.call('SET', KEYS[8], table.concat(kept), 'PX', 600000)
local field, ids, written = remember(meta, meta[5], ARGV[3])
if count == n then  -- emptied: deleted, its write ids kept as delete.lua keeps them
  erase(KEYS, field, ids, written, 1)
  return {popped, 0, 0, 1}
end
redis.call('LTRIM', KEYS[1], 0, -count - 1)
-- A list written by 0.1.0 has no meta: numbered from 0, its version in its old version key.
local tail = tonumber(meta[6]) or n
local ver = (tonumber(meta[7]) or tonumber(redis.call('GET', KEYS[4]) or 1)) + 1
-- A new generation (a fold of what was read before cannot commit); the tail stays.
redis.call('HSET', KEYS[3], 'tail', tail, 'ver', ver, 'gen', tonumber(ARGV[2]),
           field, ids, 'wn', written, 'u', ARGV[5])
if not meta[6] then adopt(KEYS) end
local N = numbering()
local g = N.parse(meta[8])
local last = N.number_at(g, tail - n - N.size(g), n - count - 1)  -- of the entries left
N.store(meta[8], N.cut_after(g, last, tail))
return {popped, n - count, ver, 1}
