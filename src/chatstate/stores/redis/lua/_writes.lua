-- Shared by every script that writes (put before it when it is loaded): write ids and fences,
-- as chatstate.stores._writes describes them. A write id is 8 bytes. A session's meta hash keeps
-- the ids of its last 32 writes in a ring of four fields, 'w1' to 'w4', of eight ids each (64
-- bytes: small enough for Redis's compact encoding of a hash), and in 'wn' how many it was given.

-- Whether the id is among the remembered ones: 'ids' holds the four fields (false if unset).
local function seen(ids, id)
  for i = 1, 4 do
    local field = ids[i]
    if field then
      local at = string.find(field, id, 1, true)
      while at do
        if at % 8 == 1 then return true end  -- a whole id, not the end of one and start of another
        at = string.find(field, id, at + 1, true)
      end
    end
  end
  return false
end

-- What to HSET to remember the id: the field that takes it, its new value, and the new count.
local function remember(ids, count, id)
  count = tonumber(count) or 0
  local slot = count % 32
  local i = math.floor(slot / 8) + 1
  local at = slot % 8 * 8
  local field = ids[i] or ''
  if #field < at then field = field .. string.rep('\0', at - #field) end
  return 'w' .. i, string.sub(field, 1, at) .. id .. string.sub(field, at + 9), count + 1
end

-- Whether a write carrying the fence (the lease token of its caller; '' for none) is refused.
local function fenced(lease, fence)
  return fence ~= '' and redis.call('GET', lease) ~= fence
end

-- A retry found among the remembered ids writes its count again, unchanged: a write, and so
-- replicated, so that a WAIT after the retry (the durability option) also covers its first run.
local function replayed(meta, count)
  redis.call('HSET', meta, 'wn', count or 0)
end

