-- A page of a session's entries by number, the expiry refreshed, in one step.
-- KEYS: as for read.lua (1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0
--       stores, 5 the gaps kept out of the meta hash, 6 the metadata).
-- ARGV: 1 'b' for the newest entries numbered below ARGV[2], 'a' for the oldest numbered above
--       it, '' for the newest of the session; 2 that number; 3 how many at most (at least 1);
--       4 ms to set the expiry to (0: leave it).
-- Returns {entries, the index of the first, tail, generation, version, length, gaps or false}
-- (the gaps as read.lua returns them, for the numbers of the entries); {} if no session.
local meta = redis.call('HMGET', KEYS[3], 'tail', 'gen', 'ver', 'h', 'm')
local length = redis.call('LLEN', KEYS[1])
if length == 0 then return {} end
local ttl = tonumber(ARGV[4])
if ttl > 0 then touch(ttl, meta[4], meta[5]) end
if not meta[1] then  -- a list written by 0.1.0: numbered from 0, as read.lua reports it
  meta = {length, 0, tonumber(redis.call('GET', KEYS[4]) or 1)}
end
local tail = tonumber(meta[1])
local N = numbering()
local text = meta[4] and N.text(meta[4])
local g = N.parse(text)
local head = tail - length - N.size(g)
local limit, first, last = tonumber(ARGV[3])
if ARGV[1] == 'b' then
  last = N.count_below(g, head, length, tonumber(ARGV[2])) - 1
  first = math.max(0, last - limit + 1)
elseif ARGV[1] == 'a' then
  first = N.count_below(g, head, length, tonumber(ARGV[2]) + 1)
  last = math.min(length, first + limit) - 1
else
  first, last = math.max(0, length - limit), length - 1
end
local entries = {}
if first <= last then entries = redis.call('LRANGE', KEYS[1], first, last) end
return {entries, first, tail, tonumber(meta[2]), tonumber(meta[3]), length, text or false}
