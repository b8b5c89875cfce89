-- Shared by the scripts that need a session's numbers (put before each when it is loaded): the
-- gaps, as chatstate.stores.redis._numbering describes them. Such a script has the session's keys in this order: 1 the list, 2 the summary, 3 the meta hash, 4
-- the version key of 0.1.0 stores, 5 the gaps that are too long for the meta hash.
-- A session's gaps are the numbers between its head and 'tail' that no entry has: a flat list
-- {first, count, first, count, ...}, sorted, neither touching nor overlapping, each above the
-- head (a number no entry has below the head is simply gone). The head is then
-- tail - LLEN - (their total). Stored in the meta field 'h' as 'offset:count' pairs joined by
-- ',', each offset from the end of the gap before (from 0 for the first); '*' when that text is
-- longer than Redis keeps in a hash's compact encoding (64 bytes): it is then in KEYS[5].
-- The helpers are made by numbering(), on first use: a script runs it only where a session has
-- gaps or it needs them (an append to a session without gaps makes no closure of them).

local function numbering()
  local N = {}
  local INLINE = 64  -- hash-max-listpack-value's default: a longer value converts the hash

  -- The text of the gaps, given the meta field 'h' (false: none).
  function N.text(h)
    if h == '*' then return redis.call('GET', KEYS[5]) or '' end
    return h
  end

  function N.parse(h)
    local g, at = {}, 0
    if not h then return g end
    for offset, count in string.gmatch(N.text(h), '(%d+):(%d+)') do
      local first = at + tonumber(offset)
      g[#g + 1], g[#g + 2] = first, tonumber(count)
      at = first + tonumber(count)
    end
    return g
  end

  function N.size(g)
    local size = 0
    for k = 2, #g, 2 do size = size + g[k] end
    return size
  end

  -- The number of the entry at index i (0: the head, numbered head).
  function N.number_at(g, head, i)
    local number = head
    for k = 1, #g, 2 do
      local run = g[k] - number  -- entries numbered number .. g[k] - 1
      if i < run then return number + i end
      i = i - run
      number = g[k] + g[k + 1]
    end
    return number + i
  end

  -- How many of the session's entries (length of them) are numbered below seq.
  function N.count_below(g, head, length, seq)
    local count = seq - head
    for k = 1, #g, 2 do
      if g[k] >= seq then break end
      count = count - (math.min(g[k] + g[k + 1], seq) - g[k])
    end
    return math.max(0, math.min(count, length))
  end

  -- The index of the entry numbered seq, or nil if no entry has it.
  function N.index_of(g, head, tail, seq)
    if seq < head or seq >= tail or seq ~= math.floor(seq) then return nil end
    local index = seq - head
    for k = 1, #g, 2 do
      if seq < g[k] then break end
      if seq < g[k] + g[k + 1] then return nil end
      index = index - g[k + 1]
    end
    return index
  end

  -- The gaps above a new head (an entry's number): those below it are gone with the entries.
  function N.above(g, head)
    local kept = {}
    for k = 1, #g, 2 do
      if g[k] > head then kept[#kept + 1], kept[#kept + 2] = g[k], g[k + 1] end
    end
    return kept
  end

  -- The gaps once every entry after the one numbered seq is gone: those below it, and one from
  -- seq + 1 up to the tail (the numbers freed stay unused).
  function N.cut_after(g, seq, tail)
    local kept = {}
    for k = 1, #g, 2 do
      if g[k] < seq then kept[#kept + 1], kept[#kept + 2] = g[k], g[k + 1] end
    end
    if tail > seq + 1 then kept[#kept + 1], kept[#kept + 2] = seq + 1, tail - seq - 1 end
    return kept
  end

  -- The gaps once the entry numbered seq (not the head) is gone: merged with its neighbours.
  function N.add(g, seq)
    local all, placed = {}, false
    for k = 1, #g, 2 do
      if not placed and g[k] > seq then all[#all + 1], all[#all + 2], placed = seq, 1, true end
      all[#all + 1], all[#all + 2] = g[k], g[k + 1]
    end
    if not placed then all[#all + 1], all[#all + 2] = seq, 1 end
    local merged = {}
    for k = 1, #all, 2 do
      local last = #merged
      if last > 0 and merged[last - 1] + merged[last] == all[k] then
        merged[last] = merged[last] + all[k + 1]
      else
        merged[last + 1], merged[last + 2] = all[k], all[k + 1]
      end
    end
    return merged
  end

  -- The text of the gaps g.
  function N.format(g)
    local parts, at = {}, 0
    for k = 1, #g, 2 do
      parts[#parts + 1] = string.format('%d:%d', g[k] - at, g[k + 1])
      at = g[k] + g[k + 1]
    end
    return table.concat(parts, ',')
  end

  -- Record the gaps (old: the meta field 'h' before, false if none) while KEYS[1] still holds
  -- entries: in the meta hash, or in KEYS[5] (expiring with the list) if too long for it.
  function N.store(old, g)
    N.store_text(old, N.format(g))
  end

  -- The same, given their text ('': none).
  function N.store_text(old, text)
    if #text > INLINE then
      local ttl = redis.call('PTTL', KEYS[1])
      if ttl > 0 then
        redis.call('SET', KEYS[5], text, 'PX', ttl)
      else
        redis.call('SET', KEYS[5], text)
      end
      text = '*'
    elseif old == '*' then
      redis.call('DEL', KEYS[5])
    end
    if text ~= '' then
      redis.call('HSET', KEYS[3], 'h', text)
    elseif old then
      redis.call('HDEL', KEYS[3], 'h')
    end
  end
  return N
end
