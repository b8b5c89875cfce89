-- Remove a session: its list, summary, numbers and the version key of 0.1.0 stores.
-- KEYS: 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores.
-- Returns 1 if the session existed, else 0.
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return existed
