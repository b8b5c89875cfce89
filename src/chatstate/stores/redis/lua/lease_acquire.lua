-- Take a session's lease for a token, if nobody else holds it. Safe to repeat: a token that
-- holds the lease already keeps it (for ARGV[2] ms from now).
-- KEYS: 1 the lease. ARGV: 1 the token; 2 its time to live in ms. Returns 1 if held, else 0.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
