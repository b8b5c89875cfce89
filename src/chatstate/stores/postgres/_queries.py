"""The statements of the PostgreSQL backend that are not calls of the layout's functions (the
reads, the leases, the conversation index), each one round trip; ``{s}`` is the store's schema."""

from __future__ import annotations

__all__ = ["QUERIES"]

# What a page is read from: head, tail, missing, version, generation, summary, entries, and
# their numbers where some numbers have no entry. The newest $2 entries (all: NULL) begin at the
# number tail - $2 if no number is missing (the hot path: arithmetic), else at the $2-th newest.
_LIVE = "s.live AND (s.expires_at IS NULL OR s.expires_at > {s}._now($3))"
_START = (
    "CASE WHEN s.missing = 0 OR coalesce($2::bigint, 0) = 0 THEN greatest(s.head, s.tail - $2) "
    "ELSE coalesce((SELECT m.seq FROM {s}.messages m WHERE m.session_id = s.id "
    "ORDER BY m.seq DESC OFFSET $2 - 1 LIMIT 1), s.head) END"
)
_ENTRIES = (
    f"ARRAY(SELECT entry FROM {{s}}.messages WHERE session_id = s.id AND seq >= {_START} "
    "ORDER BY seq)"
)
_NUMBERS = (
    "CASE WHEN s.missing > 0 THEN ARRAY(SELECT seq FROM {s}.messages WHERE session_id = s.id "
    f"AND seq >= {_START} ORDER BY seq) END"
)
_PAGE = (
    "s.head, s.tail, s.missing, s.version, s.generation, CASE WHEN $4 THEN s.summary END, "
    f"{_ENTRIES}, {_NUMBERS}"
)
# With meta=True: the metadata entry and the times (NULL: not known, read as 0).
_META = "s.meta, coalesce(s.created_at, 0), coalesce(s.updated_at, 0)"
_READ = f"FROM {{s}}.sessions s WHERE s.id = $1 AND {_LIVE}"
_TOUCH = f"UPDATE {{s}}.sessions s SET expires_at = {{s}}._now($3) + $5 WHERE s.id = $1 AND {_LIVE}"
# The listing: the user's live members newest first, ties by the member in code point order
# (the index conversations_recent, read backwards), from a cursor with list_after.
_LIST = (
    "WITH gone AS (DELETE FROM {{s}}.conversations WHERE user_session = $1 "
    "AND deadline <= $2) SELECT conversation_id, last_active FROM {{s}}.conversations "
    "WHERE user_session = $1 AND (deadline IS NULL OR deadline > $2){after} "
    'ORDER BY last_active DESC, conversation_id COLLATE "C" DESC LIMIT $3 OFFSET $4'
)
# read_range: a session's numbers and entries after $2, or before $2 (NULL: all) newest first.
_RANGE = "s.head, s.tail, s.missing, s.version, s.generation, p.seqs, p.entries"
_AFTER = (
    "LEFT JOIN LATERAL (SELECT array_agg(seq ORDER BY seq) seqs, "
    "array_agg(entry ORDER BY seq) entries FROM (SELECT seq, entry FROM {s}.messages "
    "WHERE session_id = s.id AND seq > $2 ORDER BY seq LIMIT $4) t) p ON true"
)
_BEFORE = (
    "LEFT JOIN LATERAL (SELECT array_agg(seq ORDER BY seq) seqs, "
    "array_agg(entry ORDER BY seq) entries FROM (SELECT seq, entry FROM {s}.messages "
    "WHERE session_id = s.id AND seq < coalesce($2, s.tail) ORDER BY seq DESC LIMIT $4) t) p "
    "ON true"
)
_TOUCHED = (
    "WITH s AS (UPDATE {s}.sessions s SET expires_at = {s}._now($3) + $5 "
    f"WHERE s.id = $1 AND {_LIVE} RETURNING s.*) SELECT {_RANGE} FROM s "
)
QUERIES = {
    "load": f"SELECT {_ENTRIES} FROM {{s}}.sessions s WHERE s.id = $1 AND {_LIVE}",
    "read": f"SELECT {_PAGE} {_READ}",
    "touch": f"{_TOUCH} RETURNING {_PAGE}",
    "read_meta": f"SELECT {_PAGE}, {_META} {_READ}",
    "touch_meta": f"{_TOUCH} RETURNING {_PAGE}, {_META}",
    "range_after": f"SELECT {_RANGE} FROM {{s}}.sessions s {_AFTER} WHERE s.id = $1 AND {_LIVE}",
    "range_before": f"SELECT {_RANGE} FROM {{s}}.sessions s {_BEFORE} WHERE s.id = $1 AND {_LIVE}",
    "range_after_touch": _TOUCHED + _AFTER,
    "range_before_touch": _TOUCHED + _BEFORE,
    "snapshot": "SELECT ARRAY(SELECT entry FROM {s}.messages WHERE session_id = s.id "
    "AND seq >= s.head ORDER BY seq), s.summary, s.expires_at - {s}._now($2), "
    "ARRAY(SELECT seq FROM {s}.messages WHERE session_id = s.id AND seq >= s.head ORDER BY seq), "
    "s.meta "
    "FROM {s}.sessions s WHERE s.id = $1 AND s.live "
    "AND (s.expires_at IS NULL OR s.expires_at > {s}._now($2))",
    "time_left": "SELECT s.expires_at - {s}._now($2) FROM {s}.sessions s WHERE s.id = $1 "
    "AND s.live AND (s.expires_at IS NULL OR s.expires_at > {s}._now($2))",
    "append": "SELECT * FROM {s}.append($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    "append_many": "SELECT * FROM {s}.append_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    "replace": "SELECT * FROM {s}.replace($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    "write_meta": "SELECT * FROM {s}.write_meta($1, $2, $3, $4, $5)",
    "delete": "SELECT {s}.delete($1, $2, $3, $4, $5)",
    "compact": "SELECT {s}.compact($1, $2, $3, $4, $5, $6)",
    "pop": "SELECT * FROM {s}.pop($1, $2, $3, $4, $5, $6)",
    "edit": "SELECT * FROM {s}.edit($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    "sweep": "SELECT * FROM {s}.sweep($1, $2)",
    "acquire": "INSERT INTO {s}.leases AS l VALUES ($1, $2, {s}._now($4) + $3) "
    "ON CONFLICT (session_id) DO UPDATE SET token = excluded.token, "
    "expires_at = excluded.expires_at "
    "WHERE l.expires_at <= {s}._now($4) OR l.token = excluded.token RETURNING true",
    "renew": "UPDATE {s}.leases SET expires_at = {s}._now($4) + $3 "
    "WHERE session_id = $1 AND token = $2 AND expires_at > {s}._now($4) RETURNING true",
    "release": "DELETE FROM {s}.leases WHERE session_id = $1 AND token = $2 RETURNING true",
    "index": "INSERT INTO {s}.conversations VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (user_session, conversation_id) DO UPDATE SET "
    "last_active = excluded.last_active, deadline = excluded.deadline",
    "list": _LIST.format(after=""),
    "list_after": _LIST.format(after=' AND (last_active, conversation_id COLLATE "C") < ($5, $6)'),
    "drop": "DELETE FROM {s}.conversations WHERE user_session = $1 RETURNING conversation_id",
    "ids": "SELECT id FROM {s}.sessions WHERE id > $1 AND live "
    "AND (expires_at IS NULL OR expires_at > {s}._now($2)) ORDER BY id LIMIT $3",
    "census": "SELECT count(*), coalesce(sum(tail - head - missing), 0)::bigint, "
    "(SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $2 AND c.relkind = 'r') "
    "FROM {s}.sessions s WHERE s.live AND (s.expires_at IS NULL OR s.expires_at > {s}._now($1))",
}
