-- Shared by the reads that can refresh a session's expiry (put before each when it is loaded),
-- whose KEYS are 1 the list, 2 the summary, 3 the meta hash, 4 the version key of 0.1.0 stores,
-- 5 the gaps, 6 the metadata: a sliding expiry, ms from now, for every key of the session that
-- lives and dies with its list ('h' and 'm': the meta hash's fields, saying where the gaps are
-- and whether there is metadata).
local function touch(ms, h, m)
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ms) end
  if h == '*' then redis.call('PEXPIRE', KEYS[5], ms) end
  if m then redis.call('PEXPIRE', KEYS[6], ms) end
end
