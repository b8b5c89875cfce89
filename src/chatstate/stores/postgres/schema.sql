-- The layout of schema version 3: the tables, and one function per write, so that a write is one
-- round trip and one transaction. "@schema@" is replaced by the store's schema name (checked to be
-- a plain lowercase identifier) before this runs. Times are Unix seconds (float8); a NULL "now"
-- argument means the server's clock.
--
-- A session's entries are numbered from head to tail - 1, and a number is never given twice in
-- the session's life: a pop or an edit leaves the numbers it freed unused (tail stays), a save
-- numbers on from tail, a restore given numbers takes them (tail never going down). "missing"
-- counts the numbers from head to tail - 1 that have no entry, so that the length is
-- tail - head - missing, and a session without gaps (missing 0) is appended to, trimmed and read
-- by arithmetic alone.
--
-- A session's metadata entry and its two times live in its row, so that they expire, are swept
-- and are deleted with it (a tombstone has none): "created_at" is set by the write that creates
-- the session and kept by every later one, "updated_at" by every write of its history (append,
-- replace, pop, edit; not a compaction, not write_meta). A session written before layout 3 has
-- NULL times until a write sets them (read as 0: not known).
--
-- Version 1 had no "missing" (numbers were reused after a pop), version 2 no "meta",
-- "created_at", "updated_at" and no index of the conversations by recency: migrating adds what a
-- version lacks (_schema._MIGRATIONS) and replaces every function (everything after the line
-- "-- @functions@"). So does opening a layout whose meta row "functions" is below the store's
-- revision (see _schema.FUNCTIONS_REVISION).

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
    existed boolean,                -- a tombstone's: whether its delete found the session
    missing bigint NOT NULL DEFAULT 0,  -- numbers from head to tail - 1 without an entry
    meta bytea,                     -- the metadata entry (NULL: none)
    created_at float8,              -- the session's creation (NULL: not known)
    updated_at float8               -- its history's last write (NULL: not known)
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
-- A listing's order, read backwards: newest first, ties by the member in code point order
-- (COLLATE "C", whatever the database's collation), so that a cursor is exact.
CREATE INDEX conversations_recent
    ON @schema@.conversations (user_session, last_active, conversation_id COLLATE "C");

-- @functions@

CREATE OR REPLACE FUNCTION @schema@._now(p_now float8) RETURNS float8
LANGUAGE sql STABLE AS $$ SELECT coalesce(p_now, extract(epoch FROM statement_timestamp())) $$;

-- The time of a history write, read once the session's row is locked (so that the writes of a
-- session have their times in the order they commit): p_now, or the server's clock now.
CREATE OR REPLACE FUNCTION @schema@._clock(p_now float8) RETURNS float8
LANGUAGE sql VOLATILE AS $$ SELECT coalesce(p_now, extract(epoch FROM clock_timestamp())) $$;

-- The session's row, locked (created as an expired tombstone if there is none, so that two
-- writers of a new session take turns). An expired row comes back as no session and no write ids,
-- its entries deleted.
CREATE OR REPLACE FUNCTION @schema@._lock(p_id text, p_now float8) RETURNS @schema@.sessions
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
        r.missing := 0;
        r.ids := '';
        r.existed := NULL;
        r.summary := NULL;
        r.meta := NULL;
        r.created_at := NULL;
        r.updated_at := NULL;
    END IF;
    RETURN r;
END $$;

CREATE OR REPLACE FUNCTION @schema@._seen(p_ids text, p_write text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT position(p_write || E'\n' IN p_ids) > 0 $$;

-- The ids with one more, the oldest dropped beyond 32 (tokens of 16 characters and a newline).
CREATE OR REPLACE FUNCTION @schema@._remember(p_ids text, p_write text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN length(p_ids) >= 31 * 17 THEN substr(p_ids, length(p_ids) - 31 * 17 + 1)
                ELSE p_ids END || p_write || E'\n'
$$;

-- The session's row made a tombstone (after a delete, or a pop or an edit that emptied it): no
-- entries' numbers, summary, metadata or times; its write ids, with p_write, kept until p_until.
CREATE OR REPLACE FUNCTION @schema@._bury(
    p_id text, p_ids text, p_write text, p_until float8, p_existed boolean
) RETURNS void
LANGUAGE sql AS $$
    UPDATE @schema@.sessions SET
        live = false, head = 0, tail = 0, missing = 0, expires_at = p_until, summary = NULL,
        meta = NULL, created_at = NULL, updated_at = NULL,
        ids = @schema@._remember(p_ids, p_write), existed = p_existed
    WHERE id = p_id
$$;

-- Raises (SQLSTATE CSFEN, the transaction rolled back) unless p_fence holds the lease.
CREATE OR REPLACE FUNCTION @schema@._fence(p_id text, p_fence text, p_now float8) RETURNS void
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

CREATE OR REPLACE FUNCTION @schema@._seed() RETURNS bigint
LANGUAGE sql VOLATILE AS $$ SELECT floor(random() * 281474976710656)::bigint + 1 $$;

-- Up to p_chunk expired rows deleted (rows that another transaction holds are left for the
-- next chunk), with expired leases and index entries: the rows deleted, and how many were live sessions
-- (the rest were the tombstones of deleted ones).
CREATE OR REPLACE FUNCTION @schema@.sweep(p_now float8, p_chunk integer, OUT deleted bigint, OUT expired bigint)
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

-- The hot path, written out: no call of a helper unless the session is new, expired, fenced or
-- due for a sweep; one row, not a set, returned. p_meta (not NULL) becomes the session's metadata.
-- (Until layout 3 it had no p_meta: that form is dropped, not left as an overload, and a call of
-- its eight arguments, by a store of layout 2 still running, is this one's without metadata.)
DROP FUNCTION IF EXISTS @schema@.append(text, bytea[], bigint, float8, text, text, float8, integer);
CREATE OR REPLACE FUNCTION @schema@.append(
    p_id text, p_entries bytea[], p_max bigint, p_ttl float8, p_write text, p_fence text,
    p_now float8, p_sweep integer, p_meta bytea DEFAULT NULL,
    OUT length bigint, OUT version bigint, OUT trimmed boolean, OUT applied boolean
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM statement_timestamp()));
    r @schema@.sessions;
    v_count bigint := cardinality(p_entries);
    v_skip bigint := 0;
    v_head bigint;
    v_missing bigint;
    v_at float8;
BEGIN
    SELECT * INTO r FROM @schema@.sessions WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR r.expires_at <= v_now THEN
        r := @schema@._lock(p_id, v_now);
    END IF;
    IF position(p_write || E'\n' IN r.ids) > 0 THEN
        length := CASE WHEN r.live THEN r.tail - r.head - r.missing ELSE 0 END;
        version := CASE WHEN r.live THEN r.version ELSE 0 END;
        trimmed := false; applied := false;
        RETURN;
    END IF;
    IF p_fence IS NOT NULL THEN
        PERFORM @schema@._fence(p_id, p_fence, v_now);
    END IF;
    IF NOT r.live THEN
        r.head := 0; r.tail := 0; r.missing := 0;
        r.version := @schema@._seed(); r.generation := @schema@._seed();
    END IF;
    -- Entries that the bound would trim at once are never written.
    IF p_max IS NOT NULL AND v_count > p_max THEN
        v_skip := v_count - p_max;
    END IF;
    INSERT INTO @schema@.messages (session_id, seq, entry)
    SELECT p_id, r.tail + ordinality - 1, entry
    FROM unnest(p_entries) WITH ORDINALITY AS t(entry, ordinality) WHERE ordinality > v_skip;
    v_head := r.head;
    v_missing := r.missing;
    trimmed := p_max IS NOT NULL AND r.tail + v_count - r.head - r.missing > p_max;
    IF trimmed THEN
        v_head := r.tail + v_count - p_max;
        IF r.missing > 0 AND v_count < p_max THEN
            -- Gaps: the bound keeps p_max entries, so the oldest kept is the p_max-th newest.
            SELECT seq INTO v_head FROM @schema@.messages WHERE session_id = p_id
            ORDER BY seq DESC OFFSET p_max - 1 LIMIT 1;
        END IF;
        v_missing := r.tail + v_count - v_head - p_max;
        IF r.live THEN
            DELETE FROM @schema@.messages WHERE session_id = p_id AND seq < v_head;
        END IF;
    END IF;
    -- The summary and the metadata are left as they are (a live session's) or cleared, never
    -- written back; so is the time of the session's creation. (_clock, written out.)
    v_at := coalesce(p_now, extract(epoch FROM clock_timestamp()));
    UPDATE @schema@.sessions SET
        live = true, head = v_head, tail = r.tail + v_count, missing = v_missing,
        expires_at = v_now + p_ttl,
        version = r.version + 1, generation = r.generation,
        summary = CASE WHEN r.live THEN summary END,
        meta = CASE WHEN p_meta IS NOT NULL THEN p_meta WHEN r.live THEN meta END,
        created_at = CASE WHEN r.live THEN created_at ELSE v_at END, updated_at = v_at,
        ids = CASE WHEN octet_length(r.ids) >= 32 * 17 THEN substr(r.ids, 18) ELSE r.ids END
              || p_write || E'\n',
        existed = NULL
    WHERE id = p_id;
    IF p_sweep > 0 THEN
        PERFORM @schema@.sweep(v_now, p_sweep);
    END IF;
    length := r.tail + v_count - v_head - v_missing; version := r.version + 1; applied := true;
END $$;

-- A save or a restore: the whole session, numbered on from its tail (a new one from 0), or, with
-- p_numbers (one per entry, increasing, checked by the caller), under those numbers: the numbers
-- between them, and from the last to a higher tail the session had, are missing ones (the tail
-- never goes down). The metadata becomes p_meta (NULL: none), or with p_keep_meta stays the
-- session's. No row when it exists and not p_overwrite. (Until p_numbers came, in revision 1 of
-- these functions, it had eight arguments, and until layout 3 nine: those are dropped, not left
-- as overloads; a call of nine, by a store of layout 2 still running, keeps the metadata.)
DROP FUNCTION IF EXISTS @schema@.replace(text, bytea[], bytea, float8, boolean, text, text, float8);
DROP FUNCTION IF EXISTS @schema@.replace(
    text, bytea[], bytea, float8, boolean, text, text, float8, bigint[]);
CREATE OR REPLACE FUNCTION @schema@.replace(
    p_id text, p_entries bytea[], p_summary bytea, p_ttl float8, p_overwrite boolean,
    p_write text, p_fence text, p_now float8, p_numbers bigint[], p_meta bytea DEFAULT NULL,
    p_keep_meta boolean DEFAULT true
) RETURNS TABLE (length bigint, version bigint, applied boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := @schema@._now(p_now);
    r @schema@.sessions := @schema@._lock(p_id, v_now);
    v_count bigint := cardinality(p_entries);
    v_had bigint := 0;
    v_tail bigint;
    v_at float8 := @schema@._clock(p_now);
BEGIN
    IF @schema@._seen(r.ids, p_write) THEN
        RETURN QUERY SELECT CASE WHEN r.live THEN r.tail - r.head - r.missing ELSE 0 END,
                            CASE WHEN r.live THEN r.version ELSE 0 END, false;
        RETURN;
    END IF;
    IF r.live AND NOT p_overwrite THEN
        RETURN;
    END IF;
    PERFORM @schema@._fence(p_id, p_fence, v_now);
    IF r.live THEN
        DELETE FROM @schema@.messages WHERE session_id = p_id;
        r.version := r.version + 1; r.generation := r.generation + 1; v_had := r.tail;
    ELSE
        r.version := @schema@._seed(); r.generation := @schema@._seed();
    END IF;
    IF p_numbers IS NULL THEN
        r.head := v_had; v_tail := v_had + v_count;
        INSERT INTO @schema@.messages (session_id, seq, entry)
        SELECT p_id, v_had + ordinality - 1, entry
        FROM unnest(p_entries) WITH ORDINALITY AS t(entry, ordinality);
    ELSE
        r.head := p_numbers[1];
        v_tail := greatest(p_numbers[cardinality(p_numbers)] + 1, v_had);
        INSERT INTO @schema@.messages (session_id, seq, entry)
        SELECT p_id, t.seq, t.entry FROM unnest(p_numbers, p_entries) AS t(seq, entry);
    END IF;
    UPDATE @schema@.sessions SET
        live = true, head = r.head, tail = v_tail, missing = v_tail - r.head - v_count,
        expires_at = CASE WHEN p_ttl IS NULL THEN NULL ELSE v_now + p_ttl END,
        version = r.version, generation = r.generation, summary = p_summary,
        meta = CASE WHEN NOT p_keep_meta THEN p_meta WHEN r.live THEN meta END,
        created_at = CASE WHEN r.live THEN created_at ELSE v_at END, updated_at = v_at,
        ids = @schema@._remember(r.ids, p_write), existed = NULL
    WHERE id = p_id;
    length := v_count; version := r.version; applied := true;
    RETURN NEXT;
END $$;

-- Whether the session existed. Its write ids stay p_keep seconds, in a tombstone.
CREATE OR REPLACE FUNCTION @schema@.delete(
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
    PERFORM @schema@._bury(p_id, r.ids, p_write, v_now + p_keep, r.live);
    RETURN r.live;
END $$;

-- A fold: commits only if the generation is still p_generation.
CREATE OR REPLACE FUNCTION @schema@.compact(
    p_id text, p_generation bigint, p_before bigint, p_summary bytea, p_write text, p_now float8
) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now float8 := @schema@._now(p_now);
    r @schema@.sessions := @schema@._lock(p_id, v_now);
    v_cut bigint;
    v_removed bigint := 0;
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
        GET DIAGNOSTICS v_removed = ROW_COUNT;
    END IF;
    UPDATE @schema@.sessions SET
        -- The numbers below the cut that had no entry are no longer counted.
        head = v_cut, missing = r.missing - (v_cut - r.head - v_removed),
        summary = p_summary, version = r.version + 1,
        generation = r.generation + 1, ids = @schema@._remember(r.ids, p_write)
    WHERE id = p_id;
    RETURN true;
END $$;

-- The appends of concurrent callers in one transaction, in the order given (the caller sorts
-- them by session, so that two batches lock their sessions in the same order and never
-- deadlock); each item's entries are its p_counts[i] elements of p_entries, in turn. An item
-- refused by its fence is rolled back alone (fenced true) and the others go on.
-- (p_metas: each item's metadata, NULL for none, or NULL for none of them. Until layout 3 it had
-- no p_metas: that form is dropped, and a call without them is a call of this one.)
DROP FUNCTION IF EXISTS @schema@.append_many(
    text[], integer[], bytea[], bigint[], float8[], text[], text[], float8, integer);
CREATE OR REPLACE FUNCTION @schema@.append_many(
    p_ids text[], p_counts integer[], p_entries bytea[], p_max bigint[], p_ttl float8[],
    p_writes text[], p_fences text[], p_now float8, p_sweep integer, p_metas bytea[] DEFAULT NULL
) RETURNS TABLE (length bigint, version bigint, trimmed boolean, applied boolean, fenced boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_from integer := 1;
    v_sweep integer := p_sweep;
    r record;
BEGIN
    FOR i IN 1 .. cardinality(p_ids) LOOP
        fenced := false;
        IF p_fences[i] IS NULL THEN
            r := @schema@.append(
                p_ids[i], p_entries[v_from : v_from + p_counts[i] - 1], p_max[i], p_ttl[i],
                p_writes[i], NULL, p_now, v_sweep, p_metas[i]);
        ELSE
            BEGIN  -- a savepoint, only for an item that carries a fence
                r := @schema@.append(
                    p_ids[i], p_entries[v_from : v_from + p_counts[i] - 1], p_max[i], p_ttl[i],
                    p_writes[i], p_fences[i], p_now, v_sweep, p_metas[i]);
            EXCEPTION WHEN SQLSTATE 'CSFEN' THEN
                fenced := true;
            END;
        END IF;
        IF fenced THEN
            length := 0; version := 0; trimmed := false; applied := false;
        ELSE
            length := r.length; version := r.version; trimmed := r.trimmed; applied := r.applied;
        END IF;
        v_sweep := 0;
        v_from := v_from + p_counts[i];
        RETURN NEXT;
    END LOOP;
END $$;

