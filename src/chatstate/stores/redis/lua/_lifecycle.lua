-- Shared by the writes that set a session's expiry, remove it or give a 0.1.0 list its meta hash
-- (put before each when it is loaded; not before append.lua, the hottest script, which needs
-- none of them and does its own expiry). Their keys are the session's KEYS, in the order of the
-- scripts that write it: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0
-- stores, 5 the gaps, 6 the metadata.

-- Give a session the expiry ms (0: none), on a key that lives and dies with its list.
local function expire(key, ms)
  if ms > 0 then redis.call('PEXPIRE', key, ms) else redis.call('PERSIST', key) end
end

-- Remove a session, its write ids kept for 10 minutes with the new one (field, ids, written:
-- what remember() gave) and whether it existed: a retry of its delete (or of a write before it)
-- is still recognised.
local function erase(keys, field, ids, written, existed)
  redis.call('DEL', keys[1], keys[2], keys[4], keys[5], keys[6])
  redis.call('HDEL', keys[3], 'tail', 'gen', 'ver', 's', 'h', 'm', 'c', 'u')
  redis.call('HSET', keys[3], field, ids, 'wn', written, 'x', existed)
  redis.call('PEXPIRE', keys[3], 600000)
end

-- The meta hash that the first write of a list written by 0.1.0 gives it (the write sets its
-- numbers): it expires with the list and says whether there is a summary; the list's old version
-- key goes.
local function adopt(keys)
  redis.call('DEL', keys[4])
  local ttl = redis.call('PTTL', keys[1])
  if ttl > 0 then redis.call('PEXPIRE', keys[3], ttl) end
  if redis.call('EXISTS', keys[2]) == 1 then redis.call('HSET', keys[3], 's', 1) end
end
