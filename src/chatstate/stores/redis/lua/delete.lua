-- Remove a session: its list, summary, numbers and the version key of 0.1.0 stores. Its write
-- ids stay in the meta hash for a while, so that a retry of this delete (or of a write before
-- it) is still recognised.
-- KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores, 5 the
--       lease.
-- ARGV: 1 the write id; 2 the fence ('': none).
-- Returns 1 if the session existed, else 0 (a retry: what its first run found); false if the
-- fence is refused.
local meta = redis.call('HMGET', KEYS[3], 'w', 'x')
if seen(KEYS[3], meta[1], ARGV[1]) then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
  return tonumber(meta[2]) or 1
end
if fenced(KEYS[5], ARGV[2]) then return false end
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[3], 'w', remember(meta[1], ARGV[1]), 'x', existed)
redis.call('PEXPIRE', KEYS[3], DELETED_IDS_MS)
return existed
