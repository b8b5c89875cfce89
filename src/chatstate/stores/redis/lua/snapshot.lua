-- A whole session in one read. KEYS: 1 the list, 2 the summary.
-- Returns {entries, summary or false, ms left (-1: no expiry)}, or false if there is none.
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
if #entries == 0 then return false end
return {entries, redis.call('GET', KEYS[2]) or false, redis.call('PTTL', KEYS[1])}
