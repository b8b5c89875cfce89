-- The newest entries of a session with its numbers, summary and expiry refreshed, in one step.
-- KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores, 5 the
--       gaps kept out of the meta hash (see _numbers.lua), 6 the metadata.
-- ARGV: 1 the first index to read ('' to read none: the numbers alone);
--       2 ms to set the expiry to (0: leave it); 3 '1' to return the summary; 4 '1' to return
--       the gaps; 5 '1' to return the metadata and the times.
-- Returns {entries, summary or false, tail, generation, version, length, gaps or false}, and
-- with ARGV[5] then {metadata, created, updated} (the times as _writes.lua writes them; false:
-- none, or not known);
-- {} if no session. The gaps are the text of _numbers.lua (false: none, or not asked for).
-- A list without meta was written by 0.1.0: its head is 0, its generation 0, its version that
-- of its old version key (1 if it had none), until a write gives it a meta hash.
local meta  -- the times only when asked for: each field looked up costs
if ARGV[5] == '1' then
  meta = redis.call('HMGET', KEYS[3], 'tail', 'gen', 'ver', 'h', 'm', 'c', 'u')
else
  meta = redis.call('HMGET', KEYS[3], 'tail', 'gen', 'ver', 'h', 'm')
end
local length = redis.call('LLEN', KEYS[1])
if length == 0 then return {} end
local entries = {}
if ARGV[1] ~= '' then entries = redis.call('LRANGE', KEYS[1], ARGV[1], -1) end
local ttl = tonumber(ARGV[2])
if ttl > 0 then touch(ttl, meta[4], meta[5]) end
local summary = false
if ARGV[3] == '1' then summary = redis.call('GET', KEYS[2]) end
local gaps = false
if ARGV[4] == '1' and meta[4] then
  gaps = meta[4]
  if gaps == '*' then gaps = redis.call('GET', KEYS[5]) end
end
if not meta[1] then  -- nor metadata, nor times
  meta = {length, 0, tonumber(redis.call('GET', KEYS[4]) or 1)}
end
local page = {entries, summary, tonumber(meta[1]), tonumber(meta[2]), tonumber(meta[3]), length,
              gaps}
if ARGV[5] == '1' then
  page[8] = meta[5] and redis.call('GET', KEYS[6]) or false
  page[9], page[10] = meta[6] or false, meta[7] or false
end
return page
