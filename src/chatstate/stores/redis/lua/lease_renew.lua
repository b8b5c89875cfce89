-- Extend a lease, only for the token that holds it: a lease that expired and was taken by
-- another instance must not be extended by its late former holder.
-- KEYS: 1 the lease. ARGV: 1 the token; 2 the new time to live in ms. Returns 1 or 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
