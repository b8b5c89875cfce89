-- Remove a session: its list, summary, numbers, metadata and times, and the version key of
-- 0.1.0 stores. Its write
-- ids stay in the meta hash for a while, so that a retry of this delete (or of a write before
-- it) is still recognised.
-- KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores, 5 the
--       gaps (see _numbers.lua), 6 the metadata, 7 the lease.
-- ARGV: 1 the write id; 2 the fence ('': none).
-- Returns 1 if the session existed, else 0 (a retry: what its first run found); false if the
-- fence is refused.
local meta = redis.call('HMGET', KEYS[3], 'w1', 'w2', 'w3', 'w4', 'wn', 'x')
if seen(meta, ARGV[1]) then
  replayed(KEYS[3], meta[5])
  if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
  return tonumber(meta[6]) or 1
end
if fenced(KEYS[7], ARGV[2]) then return false end
local existed = redis.call('EXISTS', KEYS[1])
local field, ids, written = remember(meta, meta[5], ARGV[1])
erase(KEYS, field, ids, written, existed)  -- the ids outlive the session by 10 minutes
return existed
