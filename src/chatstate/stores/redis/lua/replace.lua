-- Make the given entries and summary the whole session: a save, or a restore.
-- KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores, 5 the
--       gaps (see _numbers.lua), 6 the metadata, 7 the lease.
-- ARGV: 1 '1' to overwrite an existing session ('0': leave it and return {0}); 2 ttl in ms (0:
--       none); 3 a random seed (the numbers of a session this creates); 4 the write id; 5 the
--       fence ('': none); 6 the summary ('': none); 7 the last entry's number + 1 ('': number
--       them on, as below); 8 the gaps between the entries' numbers (the text of _numbers.lua,
--       made by _numbering.py; '': none); 9 the metadata: 'k' to keep the session's, 's' to
--       set it to ARGV[10], 'd' for none; 10 that entry (or ''); 11 the time (Unix seconds, as
--       text: the session's 'u', and 'c' if this creates it); 12.. the entries (at least one).
-- Returns {length, version, applied (0/1)}; {0} if the session exists and ARGV[1] is '0';
-- false if the fence is refused. Without ARGV[7], the entries are numbered on after the highest
-- number the session gave (a new session: from 0), without gaps. With it, they take the numbers
-- it and ARGV[8] say (the first is then tail - length - the gaps' total, as ever), and the
-- session's next number is ARGV[7] or, if higher, the one it had (those between: a gap).
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'list' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the key holds a ' .. kind)
end
local meta = redis.call('HMGET', KEYS[3], 'w1', 'w2', 'w3', 'w4', 'wn', 'gen', 'ver', 'tail',
                        'm')
if seen(meta, ARGV[4]) then  -- a retry of a write already applied
  replayed(KEYS[3], meta[5])
  return {redis.call('LLEN', KEYS[1]), tonumber(meta[7]) or 0, 0}
end
if kind ~= 'none' and ARGV[1] == '0' then return {0} end
if fenced(KEYS[7], ARGV[5]) then return false end
local gen, ver, first  -- first: the number the session would give next (0: a new one)
if kind == 'none' then
  gen, ver, first = tonumber(ARGV[3]), tonumber(ARGV[3]), 0
elseif meta[6] then
  gen, ver, first = tonumber(meta[6]) + 1, tonumber(meta[7]) + 1, tonumber(meta[8])
else  -- a list written by 0.1.0 (generation 0, numbered from 0, as a read of it reported)
  gen, ver = 1, tonumber(redis.call('GET', KEYS[4]) or 1) + 1
  first = redis.call('LLEN', KEYS[1])
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
-- A new session keeps no metadata (none is left but by another version's delete).
local described = kind ~= 'none' and meta[9]
if ARGV[9] == 's' then
  redis.call('SET', KEYS[6], ARGV[10])
  described = '1'
elseif ARGV[9] == 'd' or not described then
  redis.call('DEL', KEYS[6])
  described = false
end
local n = 0
for i = 12, #ARGV, 1000 do
  n = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HDEL', KEYS[3], 'x', 's', 'h')
if described then redis.call('HSET', KEYS[3], 'm', 1) else redis.call('HDEL', KEYS[3], 'm') end
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[2], ARGV[6])
  redis.call('HSET', KEYS[3], 's', 1)
end
-- Numbered on after the old entries (or as given), in a new generation: a fold of the old
-- history cannot commit.
local tail = first + n
if ARGV[7] ~= '' then tail = math.max(tonumber(ARGV[7]), first) end
local field, ids, written = remember(meta, meta[5], ARGV[4])
local time = ARGV[11]
redis.call('HSET', KEYS[3], 'tail', tail, 'gen', gen, 'ver', ver, field, ids, 'wn', written,
           'u', time)
if kind == 'none' then redis.call('HSET', KEYS[3], 'c', time) end  -- else: the session's kept
local ttl = tonumber(ARGV[2])
for i = 1, 6 do
  if i <= 3 or (i == 6 and described) then expire(KEYS[i], ttl) end
end
-- The gaps, once the list has its expiry (a gaps key takes it): those between the numbers
-- given, and the old numbers after the last of them, which stay unused.
if ARGV[7] ~= '' then
  local N = numbering()
  local after = tonumber(ARGV[7])
  if tail > after then
    local g = N.parse(ARGV[8])
    g[#g + 1], g[#g + 2] = after, tail - after
    N.store(false, g)
  else
    N.store_text(false, ARGV[8])
  end
end
return {n, ver, 1}
