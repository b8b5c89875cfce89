-- A whole session in one read. KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version
-- key of 0.1.0 stores (unused), 5 the gaps kept out of the meta hash (see _numbers.lua), 6 the
-- metadata.
-- Returns {entries, summary or false, ms left (-1: no expiry), tail, gaps or false, metadata or
-- false}, or false if there is none: the entries' numbers are those read.lua gives (a list
-- written by 0.1.0, without meta, is numbered from 0: its tail is its length).
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
if #entries == 0 then return false end
local meta = redis.call('HMGET', KEYS[3], 'tail', 'h', 'm')
local gaps = meta[2]
if gaps == '*' then gaps = redis.call('GET', KEYS[5]) end
return {entries, redis.call('GET', KEYS[2]) or false, redis.call('PTTL', KEYS[1]),
        tonumber(meta[1]) or #entries, gaps or false,
        meta[3] and redis.call('GET', KEYS[6]) or false}
