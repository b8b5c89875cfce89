-- Forget a user's index; returns the conversation ids it held.
-- KEYS: as for index_conversation.lua.
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2])
return ids
