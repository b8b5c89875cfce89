-- Give a lease up, only for the token that holds it (never cut another holder's lease short).
-- KEYS: 1 the lease. ARGV: 1 the token. Returns 1 if it was released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
