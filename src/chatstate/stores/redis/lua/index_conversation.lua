-- Record that a user's conversation was active now.
-- KEYS: 1 the user's conversations scored by last activity (ms), 2 the same by deadline (ms;
--       'inf': none). Both in the user's slot; they expire with the last deadline, so the index
--       never outlives its conversations.
-- ARGV: 1 now (ms); 2 the conversation id; 3 its deadline (ms, or 'inf').
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
-- Entries past their deadline go whenever the index is touched.
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]
for _, key in ipairs(KEYS) do
  if last == 'inf' then redis.call('PERSIST', key)
  else redis.call('PEXPIREAT', key, math.ceil(tonumber(last))) end
end
