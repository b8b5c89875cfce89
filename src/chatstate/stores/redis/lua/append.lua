-- Append entries, keep the newest, set the expiry, number them and bump the version: one step.
-- KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores, 5 the
--       gaps (see _numbers.lua), 6 the metadata, 7 the lease.
-- ARGV: 1 keep the newest N (0: all); 2 ttl in ms (0: none); 3 a random seed, the generation
--       and version of a session this creates; 4 the write id; 5 the fence ('': none);
--       6 the session's metadata entry ('': keep it as it is; an entry is never empty);
--       7 the time (Unix seconds, as text: the session's 'u', and 'c' if this creates it);
--       8.. the entries.
-- Returns {length, version, trimmed (0/1), applied (0/1)}; false if the fence is refused.
-- The reads come first and RPUSH is the first write: a key of another type fails the script
-- (WRONGTYPE) before anything is changed.
local meta = redis.call('HMGET', KEYS[3], 'w1', 'w2', 'w3', 'w4', 'wn', 'tail', 'ver', 's', 'h',
                        'm')
if seen(meta, ARGV[4]) then  -- a retry of a write already applied
  replayed(KEYS[3], meta[5])
  return {redis.call('LLEN', KEYS[1]), tonumber(meta[7]) or 0, 0, 0}
end
if fenced(KEYS[7], ARGV[5]) then return false end
local count = #ARGV - 7
local n
-- unpack() has a stack limit of a few thousand values: push in chunks.
for i = 8, #ARGV, 1000 do
  n = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local before = n - count
local field, ids, written = remember(meta, meta[5], ARGV[4])
local time = ARGV[7]
local ver, summary, gaps, described = false, false, false, meta[10]
if before > 0 and meta[6] then  -- the common case: the generation stays
  ver, summary, gaps = tonumber(meta[7]) + 1, meta[8], meta[9]
  redis.call('HSET', KEYS[3], 'tail', tonumber(meta[6]) + count, 'ver', ver, field, ids,
             'wn', written, 'u', time)
else
  local tail, gen
  if before == 0 then  -- a new session (any meta left is a deleted one's: its ids stay)
    tail, gen, ver = 0, tonumber(ARGV[3]), tonumber(ARGV[3]) + 1
    described = false
    redis.call('HDEL', KEYS[3], 'x', 's', 'h', 'm')
    if ARGV[6] == '' then redis.call('DEL', KEYS[6]) end  -- none left by an older delete
  else  -- a list written by 0.1.0: numbered from 0, as a read of it reported
    tail, gen, ver = before, 0, tonumber(redis.call('GET', KEYS[4]) or 1) + 1
    summary = redis.call('EXISTS', KEYS[2]) == 1 and '1'
    if summary then redis.call('HSET', KEYS[3], 's', 1) end
  end
  redis.call('HSET', KEYS[3], 'tail', tail + count, 'gen', gen, 'ver', ver, field, ids,
             'wn', written, 'u', time)
  if before == 0 then redis.call('HSET', KEYS[3], 'c', time) end
  redis.call('DEL', KEYS[4])
end
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[6], ARGV[6])
  if not described then redis.call('HSET', KEYS[3], 'm', 1) end
  described = '1'
end
local keep = tonumber(ARGV[1])
local trimmed = 0
if keep > 0 and n > keep then
  redis.call('LTRIM', KEYS[1], -keep, -1)
  if gaps then  -- those below the new head go with the entries trimmed
    local N = numbering()
    local g = N.parse(gaps)
    local head = tonumber(meta[6]) - before - N.size(g)
    N.store(gaps, N.above(g, N.number_at(g, head, n - keep)))
  end
  n, trimmed = keep, 1
end
-- The summary, the numbers and the metadata live and die with the list (the summary's key only
-- if there is one: the 's' flag of the meta hash; the gaps' only if they are kept there: '*';
-- the metadata's if the 'm' flag says there is some).
local ttl = tonumber(ARGV[2])
for i = 1, 6 do
  if i == 1 or i == 3 or (i == 2 and summary) or (i == 5 and gaps == '*')
      or (i == 6 and described) then
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) else redis.call('PERSIST', KEYS[i]) end
  end
end
return {n, ver, trimmed, 1}
