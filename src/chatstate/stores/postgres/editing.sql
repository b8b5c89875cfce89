-- The history operations of schema version 2 (a pop, an edit by number) and the metadata's write
-- of version 3, beside schema.sql's functions and in the same form: "@schema@" is the store's
-- schema, a NULL "now" the server's clock, every function one transaction. They are created, and
-- replaced by a migration, with the functions of schema.sql.

-- The newest p_count entries removed and returned (oldest first); their numbers stay unused. A pop
-- that empties the session deletes it, its write ids kept p_keep seconds as a delete keeps them.
CREATE OR REPLACE FUNCTION @schema@.pop(
    p_id text, p_count bigint, p_write text, p_fence text, p_now float8, p_keep float8,
    OUT entries bytea[], OUT length bigint, OUT version bigint, OUT applied boolean
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := @schema@._now(p_now);
    r @schema@.sessions := @schema@._lock(p_id, v_now);
    v_from bigint;
    v_taken bigint;
BEGIN
    entries := '{}';
    IF @schema@._seen(r.ids, p_write) THEN
        length := CASE WHEN r.live THEN r.tail - r.head - r.missing ELSE 0 END;
        version := CASE WHEN r.live THEN r.version ELSE 0 END; applied := false;
        RETURN;
    END IF;
    PERFORM @schema@._fence(p_id, p_fence, v_now);
    length := 0; version := 0; applied := true;
    IF NOT r.live THEN
        RETURN;
    END IF;
    SELECT coalesce(array_agg(t.entry ORDER BY t.seq), '{}'), min(t.seq), count(*)
    INTO entries, v_from, v_taken
    FROM (SELECT seq, entry FROM @schema@.messages WHERE session_id = p_id
          ORDER BY seq DESC LIMIT p_count) t;
    IF v_taken >= r.tail - r.head - r.missing THEN
        DELETE FROM @schema@.messages WHERE session_id = p_id;
        PERFORM @schema@._bury(p_id, r.ids, p_write, v_now + p_keep, true);
        RETURN;
    END IF;
    DELETE FROM @schema@.messages WHERE session_id = p_id AND seq >= v_from;
    UPDATE @schema@.sessions SET
        missing = r.missing + v_taken, version = r.version + 1, generation = r.generation + 1,
        updated_at = @schema@._clock(p_now), ids = @schema@._remember(r.ids, p_write)
    WHERE id = p_id;
    length := r.tail - r.head - r.missing - v_taken; version := r.version + 1;
END $$;

-- The entry numbered p_seq replaced by p_entry (NULL: removed) and, with p_truncate, every later
-- one removed; the numbers freed stay unused, the expiry and the summary stay. outcome 'missing'
-- (no such entry, or no session) or 'stale' (p_version given and not the session's): nothing
-- changed. An edit that empties the session deletes it, as a pop does.
CREATE OR REPLACE FUNCTION @schema@.edit(
    p_id text, p_seq bigint, p_entry bytea, p_truncate boolean, p_version bigint,
    p_write text, p_fence text, p_now float8, p_keep float8,
    OUT outcome text, OUT length bigint, OUT version bigint, OUT applied boolean
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := @schema@._now(p_now);
    r @schema@.sessions := @schema@._lock(p_id, v_now);
    v_removed bigint := 0;
    v_later bigint := 0;
    v_missing bigint;
BEGIN
    length := 0; version := 0;
    IF @schema@._seen(r.ids, p_write) THEN
        IF r.live THEN
            length := r.tail - r.head - r.missing; version := r.version;
        END IF;
        applied := false;
        RETURN;
    END IF;
    PERFORM @schema@._fence(p_id, p_fence, v_now);
    applied := true;
    IF NOT r.live THEN
        outcome := 'missing';
        RETURN;
    END IF;
    IF p_version IS NOT NULL AND p_version <> r.version THEN
        outcome := 'stale';
        RETURN;
    END IF;
    IF p_entry IS NULL THEN
        DELETE FROM @schema@.messages WHERE session_id = p_id AND seq = p_seq;
    ELSE
        UPDATE @schema@.messages SET entry = p_entry WHERE session_id = p_id AND seq = p_seq;
    END IF;
    IF NOT FOUND THEN
        outcome := 'missing';  -- nothing was removed or changed
        RETURN;
    END IF;
    IF p_entry IS NULL THEN
        v_removed := 1;
    END IF;
    IF p_truncate THEN
        DELETE FROM @schema@.messages WHERE session_id = p_id AND seq > p_seq;
        GET DIAGNOSTICS v_later = ROW_COUNT;
    END IF;
    v_missing := r.missing + v_removed + v_later;
    IF r.tail - r.head - v_missing = 0 THEN
        PERFORM @schema@._bury(p_id, r.ids, p_write, v_now + p_keep, true);
        RETURN;
    END IF;
    UPDATE @schema@.sessions SET
        missing = v_missing, version = r.version + 1, generation = r.generation + 1,
        updated_at = @schema@._clock(p_now), ids = @schema@._remember(r.ids, p_write)
    WHERE id = p_id;
    length := r.tail - r.head - v_missing; version := r.version + 1;
END $$;

-- The session's metadata made p_meta (NULL: none); its history, version, generation, times and
-- expiry kept. No session: length NULL, and nothing written (not even the write id).
CREATE OR REPLACE FUNCTION @schema@.write_meta(
    p_id text, p_meta bytea, p_write text, p_fence text, p_now float8,
    OUT length bigint, OUT version bigint, OUT applied boolean
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := @schema@._now(p_now);
    r @schema@.sessions := @schema@._lock(p_id, v_now);
BEGIN
    applied := NOT @schema@._seen(r.ids, p_write);
    IF applied THEN
        PERFORM @schema@._fence(p_id, p_fence, v_now);
        IF NOT r.live THEN
            RETURN;
        END IF;
        UPDATE @schema@.sessions SET meta = p_meta, ids = @schema@._remember(r.ids, p_write)
        WHERE id = p_id;
    END IF;
    length := 0; version := 0;
    IF r.live THEN
        length := r.tail - r.head - r.missing; version := r.version;
    END IF;
END $$;
