-- Shared by every script that writes (put before it when it is loaded): write ids and fences,
-- as chatstate.stores._writes describes them. A session's meta hash holds in 'w' the ids of its
-- last 32 writes, 16 characters each, each followed by a newline (oldest first).
local IDS_BYTES = 32 * 17
local DELETED_IDS_MS = 600000

-- Whether the id is among the session's remembered ones (kept in the hash at key). A retry
-- found there writes the ids again, unchanged: a write, so replicated, so a WAIT after this
-- retry also covers its first run (the durability option).
local function seen(key, ids, id)
  if ids and string.find(ids, id .. '\n', 1, true) ~= nil then
    redis.call('HSET', key, 'w', ids)
    return true
  end
  return false
end

-- The ids with one more, the oldest dropped beyond 32.
local function remember(ids, id)
  ids = (ids or '') .. id .. '\n'
  if #ids > IDS_BYTES then ids = string.sub(ids, 18) end
  return ids
end

-- Whether a write carrying the fence (the lease token of its caller; '' for none) is refused.
local function fenced(lease, fence)
  return fence ~= '' and redis.call('GET', lease) ~= fence
end
