-- Set or remove a session's metadata, keeping its history, numbers, version, generation, times
-- and expiry: one step.
-- KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores, 5 the
--       gaps (see _numbers.lua), 6 the metadata, 7 the lease.
-- ARGV: 1 the write id; 2 the fence ('': none); 3 the metadata entry (none: remove it).
-- Returns {length, version, applied (0/1)}; {} if there is no session (nothing written); false
-- if the fence is refused.
local meta = redis.call('HMGET', KEYS[3], 'w1', 'w2', 'w3', 'w4', 'wn', 'tail', 'ver')
if seen(meta, ARGV[1]) then  -- a retry of a write already applied: the session as it is now
  replayed(KEYS[3], meta[5])
  return {redis.call('LLEN', KEYS[1]), tonumber(meta[7]) or 0, 0}
end
if fenced(KEYS[7], ARGV[2]) then return false end
local length = redis.call('LLEN', KEYS[1])
if length == 0 then return {} end
local field, ids, written = remember(meta, meta[5], ARGV[1])
local ver = tonumber(meta[7])
if not meta[6] then  -- a list written by 0.1.0: numbered as a read of it reported, until now
  ver = tonumber(redis.call('GET', KEYS[4]) or 1)
  redis.call('HSET', KEYS[3], 'tail', length, 'gen', 0, 'ver', ver)
  adopt(KEYS)
end
if ARGV[3] then
  local ttl = redis.call('PTTL', KEYS[1])  -- the session's expiry, as it is
  if ttl > 0 then
    redis.call('SET', KEYS[6], ARGV[3], 'PX', ttl)
  else
    redis.call('SET', KEYS[6], ARGV[3])
  end
  redis.call('HSET', KEYS[3], field, ids, 'wn', written, 'm', 1)
else
  redis.call('DEL', KEYS[6])
  redis.call('HDEL', KEYS[3], 'm')
  redis.call('HSET', KEYS[3], field, ids, 'wn', written)
end
return {length, ver, 1}
