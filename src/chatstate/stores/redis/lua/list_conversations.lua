-- A user's live conversations, most recent first, ties by member descending (the order of
-- ZREVRANGE): {id, last active (ms), ...}.
-- KEYS: as for index_conversation.lua. ARGV: 1 now (ms); 2 offset; 3 limit (at least 1); 4 a
-- cursor's last active (ms; '': no cursor) and 5 its member: only those after that pair.
-- Entries past their deadline go whenever the index is read.
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
local limit = tonumber(ARGV[3])
if ARGV[4] == '' then
  local first = tonumber(ARGV[2])
  return redis.call('ZREVRANGE', KEYS[1], first, first + limit - 1, 'WITHSCORES')
end
-- Whether member a sorts below member b: by their bytes, as Redis sorts them (Lua's own '<'
-- follows the server's locale).
local function below(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
-- From the cursor's score down: those of its score come first, members descending; skip those
-- not below the cursor's member (in pages, in case many share the score).
local score, member = tonumber(ARGV[4]), ARGV[5]
local items, at = {}, 0
repeat
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[4], '-inf', 'WITHSCORES', 'LIMIT', at,
                          limit + 1)
  for i = 1, #page, 2 do
    if #items < 2 * limit and (tonumber(page[i + 1]) < score or below(page[i], member)) then
      items[#items + 1], items[#items + 2] = page[i], page[i + 1]
    end
  end
  at = at + limit + 1
until #items == 2 * limit or #page < 2 * (limit + 1)
return items
