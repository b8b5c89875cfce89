-- A user's live conversations, most recent first: {id, last active (ms), ...}.
-- KEYS: as for index_conversation.lua. ARGV: 1 now (ms); 2 offset; 3 limit.
-- Entries past their deadline go whenever the index is read.
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
local first = tonumber(ARGV[2])
return redis.call('ZREVRANGE', KEYS[1], first, first + tonumber(ARGV[3]) - 1, 'WITHSCORES')
