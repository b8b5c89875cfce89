-- The layout of schema version 1: the tables, and one function per write, so that a write is one
-- round trip and one transaction. "@schema@" is replaced by the store's schema name (checked to be
-- a plain lowercase identifier) before this runs. Times are Unix seconds (float8); a NULL "now"
-- argument means the server's clock.

CREATE TABLE @schema@.sessions (
    id text PRIMARY KEY,
    live boolean NOT NULL,          -- false: a tombstone (deleted; its write ids kept a while)
    head bigint NOT NULL,           -- the number of the oldest entry kept
    tail bigint NOT NULL,           -- the number the next entry takes
    expires_at float8,              -- NULL: never
    version bigint NOT NULL,
    generation bigint NOT NULL,
    summary bytea,
    ids text NOT NULL DEFAULT '',   -- the last write ids, each followed by a newline
    existed boolean                 -- a tombstone's: whether its delete found the session
);
CREATE INDEX sessions_expiry ON @schema@.sessions (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE @schema@.messages (
    session_id text NOT NULL,
    seq bigint NOT NULL,
    entry bytea NOT NULL,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE @schema@.leases (
    session_id text PRIMARY KEY,
    token text NOT NULL,
    expires_at float8 NOT NULL
);
CREATE INDEX leases_expiry ON @schema@.leases (expires_at);

CREATE TABLE @schema@.conversations (
    user_session text NOT NULL,
    conversation_id text NOT NULL,
    last_active float8 NOT NULL,
    deadline float8,
    PRIMARY KEY (user_session, conversation_id)
);
CREATE INDEX conversations_deadline ON @schema@.conversations (deadline)
    WHERE deadline IS NOT NULL;

CREATE FUNCTION @schema@._now(p_now float8) RETURNS float8
LANGUAGE sql STABLE AS $$ SELECT coalesce(p_now, extract(epoch FROM statement_timestamp())) $$;

-- The session's row, locked (created as an expired tombstone if there is none, so that two
-- writers of a new session take turns). An expired row comes back as no session and no write ids,
-- its entries deleted.
CREATE FUNCTION @schema@._lock(p_id text, p_now float8) RETURNS @schema@.sessions
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r @schema@.sessions;
BEGIN
    SELECT * INTO r FROM @schema@.sessions WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO @schema@.sessions (id, live, head, tail, expires_at, version, generation)
        VALUES (p_id, false, 0, 0, p_now, 0, 0) ON CONFLICT (id) DO NOTHING;
        SELECT * INTO r FROM @schema@.sessions WHERE id = p_id FOR UPDATE;
    END IF;
    IF r.expires_at <= p_now THEN
        IF r.live THEN
            DELETE FROM @schema@.messages WHERE session_id = p_id;
        END IF;
        r.live := false;
        r.ids := '';
        r.existed := NULL;
        r.summary := NULL;
    END IF;
    RETURN r;
END $$;

CREATE FUNCTION @schema@._seen(p_ids text, p_write text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT position(p_write || E'\n' IN p_ids) > 0 $$;

-- The ids with one more, the oldest dropped beyond 32 (tokens of 16 characters and a newline).
CREATE FUNCTION @schema@._remember(p_ids text, p_write text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN length(p_ids) >= 31 * 17 THEN substr(p_ids, length(p_ids) - 31 * 17 + 1)
                ELSE p_ids END || p_write || E'\n'
$$;

-- Raises (SQLSTATE CSFEN, the transaction rolled back) unless p_fence holds the lease.
CREATE FUNCTION @schema@._fence(p_id text, p_fence text, p_now float8) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF p_fence IS NOT NULL AND NOT EXISTS (
        SELECT FROM @schema@.leases
        WHERE session_id = p_id AND token = p_fence AND expires_at > p_now
    ) THEN
        RAISE EXCEPTION 'the lease of session % is not held by this token', p_id
            USING ERRCODE = 'CSFEN';
    END IF;
END $$;

CREATE FUNCTION @schema@._seed() RETURNS bigint
LANGUAGE sql VOLATILE AS $$ SELECT floor(random() * 281474976710656)::bigint + 1 $$;

-- Up to p_chunk expired rows deleted (rows that another transaction holds are left for the
-- next chunk), with expired leases and index entries: the rows deleted, and how many were live sessions
-- (the rest were the tombstones of deleted ones).
CREATE FUNCTION @schema@.sweep(p_now float8, p_chunk integer, OUT deleted bigint, OUT expired bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := @schema@._now(p_now);
BEGIN
    WITH gone AS (
        DELETE FROM @schema@.sessions WHERE id IN (
            SELECT id FROM @schema@.sessions WHERE expires_at <= v_now
            LIMIT p_chunk FOR UPDATE SKIP LOCKED
        ) RETURNING id, live
    ), entries AS (
        DELETE FROM @schema@.messages WHERE session_id IN (SELECT id FROM gone WHERE live)
    )
    SELECT count(*), count(*) FILTER (WHERE live) INTO deleted, expired FROM gone;
    DELETE FROM @schema@.leases WHERE session_id IN (
        SELECT session_id FROM @schema@.leases WHERE expires_at <= v_now
        LIMIT p_chunk FOR UPDATE SKIP LOCKED
    );
    DELETE FROM @schema@.conversations WHERE (user_session, conversation_id) IN (
        SELECT user_session, conversation_id FROM @schema@.conversations WHERE deadline <= v_now
        LIMIT p_chunk FOR UPDATE SKIP LOCKED
    );
END $$;

CREATE FUNCTION @schema@.append(
    p_id text, p_entries bytea[], p_max bigint, p_ttl float8, p_write text, p_fence text,
    p_now float8, p_sweep integer
) RETURNS TABLE (length bigint, version bigint, trimmed boolean, applied boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := @schema@._now(p_now);
    r @schema@.sessions := @schema@._lock(p_id, v_now);
    v_count bigint := cardinality(p_entries);
    v_skip bigint := 0;
BEGIN
    IF @schema@._seen(r.ids, p_write) THEN
        RETURN QUERY SELECT CASE WHEN r.live THEN r.tail - r.head ELSE 0 END,
                            CASE WHEN r.live THEN r.version ELSE 0 END, false, false;
        RETURN;
    END IF;
    PERFORM @schema@._fence(p_id, p_fence, v_now);
    IF NOT r.live THEN
        r.head := 0; r.tail := 0; r.version := @schema@._seed(); r.generation := @schema@._seed();
        r.summary := NULL;
    END IF;
    -- Entries that the bound would trim at once are never written.
    IF p_max IS NOT NULL AND v_count > p_max THEN
        v_skip := v_count - p_max;
    END IF;
    INSERT INTO @schema@.messages (session_id, seq, entry)
    SELECT p_id, r.tail + ordinality - 1, entry
    FROM unnest(p_entries) WITH ORDINALITY AS t(entry, ordinality) WHERE ordinality > v_skip;
    r.tail := r.tail + v_count;
    trimmed := false;
    IF p_max IS NOT NULL AND r.tail - r.head > p_max THEN
        trimmed := true;
        IF r.live THEN
            DELETE FROM @schema@.messages WHERE session_id = p_id AND seq < r.tail - p_max;
        END IF;
        r.head := r.tail - p_max;
    END IF;
    UPDATE @schema@.sessions SET
        live = true, head = r.head, tail = r.tail,
        expires_at = CASE WHEN p_ttl IS NULL THEN NULL ELSE v_now + p_ttl END,
        version = r.version + 1, generation = r.generation, summary = r.summary,
        ids = @schema@._remember(r.ids, p_write), existed = NULL
    WHERE id = p_id;
    IF p_sweep > 0 THEN
        PERFORM @schema@.sweep(v_now, p_sweep);
    END IF;
    length := r.tail - r.head; version := r.version + 1; applied := true;
    RETURN NEXT;
END $$;

-- A save or a restore: the whole session. No row when it exists and not p_overwrite.
CREATE FUNCTION @schema@.replace(
    p_id text, p_entries bytea[], p_summary bytea, p_ttl float8, p_overwrite boolean,
    p_write text, p_fence text, p_now float8
) RETURNS TABLE (length bigint, version bigint, applied boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := @schema@._now(p_now);
    r @schema@.sessions := @schema@._lock(p_id, v_now);
BEGIN
    IF @schema@._seen(r.ids, p_write) THEN
        RETURN QUERY SELECT CASE WHEN r.live THEN r.tail - r.head ELSE 0 END,
                            CASE WHEN r.live THEN r.version ELSE 0 END, false;
        RETURN;
    END IF;
    IF r.live AND NOT p_overwrite THEN
        RETURN;
    END IF;
    PERFORM @schema@._fence(p_id, p_fence, v_now);
    IF r.live THEN
        DELETE FROM @schema@.messages WHERE session_id = p_id;
        r.version := r.version + 1; r.generation := r.generation + 1;
    ELSE
        r.version := @schema@._seed(); r.generation := @schema@._seed();
    END IF;
    INSERT INTO @schema@.messages (session_id, seq, entry)
    SELECT p_id, ordinality - 1, entry FROM unnest(p_entries) WITH ORDINALITY AS t(entry, ordinality);
    UPDATE @schema@.sessions SET
        live = true, head = 0, tail = cardinality(p_entries),
        expires_at = CASE WHEN p_ttl IS NULL THEN NULL ELSE v_now + p_ttl END,
        version = r.version, generation = r.generation, summary = p_summary,
        ids = @schema@._remember(r.ids, p_write), existed = NULL
    WHERE id = p_id;
    length := cardinality(p_entries); version := r.version; applied := true;
    RETURN NEXT;
END $$;

-- Whether the session existed. Its write ids stay p_keep seconds, in a tombstone.
CREATE FUNCTION @schema@.delete(
    p_id text, p_write text, p_fence text, p_now float8, p_keep float8
) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := @schema@._now(p_now);
    r @schema@.sessions := @schema@._lock(p_id, v_now);
BEGIN
    IF @schema@._seen(r.ids, p_write) THEN
        RETURN r.live OR r.existed IS NULL OR r.existed;
    END IF;
    PERFORM @schema@._fence(p_id, p_fence, v_now);
    IF r.live THEN
        DELETE FROM @schema@.messages WHERE session_id = p_id;
    END IF;
    UPDATE @schema@.sessions SET
        live = false, head = 0, tail = 0, expires_at = v_now + p_keep, summary = NULL,
        ids = @schema@._remember(r.ids, p_write), existed = r.live
    WHERE id = p_id;
    RETURN r.live;
END $$;

-- A fold: commits only if the generation is still p_generation.
CREATE FUNCTION @schema@.compact(
    p_id text, p_generation bigint, p_before bigint, p_summary bytea, p_write text, p_now float8
) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := @schema@._now(p_now);
    r @schema@.sessions := @schema@._lock(p_id, v_now);
    v_cut bigint;
BEGIN
    IF @schema@._seen(r.ids, p_write) THEN
        RETURN true;  -- its first run committed
    END IF;
    IF NOT r.live OR r.generation <> p_generation THEN
        RETURN false;  -- saved, compacted, deleted or expired meanwhile
    END IF;
    -- Entries appended meanwhile stay; those trimmed meanwhile are not removed twice.
    v_cut := greatest(r.head, least(p_before, r.tail));
    IF v_cut > r.head THEN
        DELETE FROM @schema@.messages WHERE session_id = p_id AND seq < v_cut;
    END IF;
    UPDATE @schema@.sessions SET
        head = v_cut, summary = p_summary, version = r.version + 1,
        generation = r.generation + 1, ids = @schema@._remember(r.ids, p_write)
    WHERE id = p_id;
    RETURN true;
END $$;
