"""The store's tables and functions in a schema of their own, created and migrated by the store.

Everything lives in one PostgreSQL schema (``chatstate`` unless the store is given another name),
so two apps share a database by naming two schemas. ``schema.sql`` beside this module holds the
layout (see it for the tables and their functions; ``editing.sql`` holds the functions of the
history operations); ``<schema>.meta`` holds its version, and the revision of its functions. The
first store to open a database creates the layout under a transaction-scoped advisory lock (two
processes starting at once take turns); a layout of an older version is migrated in the same
transaction, and one written by a newer chatstate is refused, never misread.
"""

from __future__ import annotations

import re
from importlib import resources

from chatstate.errors import ConfigurationError, UnsupportedFormatError

__all__ = [
    "FUNCTIONS_REVISION",
    "MIGRATION_TIMEOUT",
    "SCHEMA_VERSION",
    "check_schema_name",
    "functions",
    "layout",
    "migrate",
]

SCHEMA_VERSION = 3
"""The layout of the tables and functions; a database written by a newer one is refused.
Version 2 counts the numbers a pop or an edit left unused (``sessions.missing``) and has the
functions ``pop`` and ``edit``; version 3 keeps each session's metadata and its created and
updated times (``sessions.meta``, ``created_at``, ``updated_at``), has the function
``write_meta``, and indexes the conversations by recency (``conversations_recent``)."""

FUNCTIONS_REVISION = 1
"""The revision of the functions within the layout (``meta`` row ``functions``; none: 0). A store
that finds an older one creates or replaces every function, so that a change of the functions
alone needs no new layout. Revision 1: ``replace`` takes the entries' numbers (``p_numbers``), its
eight-argument form dropped; that breaks a caller of revision 0, which only the unreleased layout 2
of the same day had. Within a released layout a revision keeps the calls of the one before (a new
layout replaces every function and may change their calls: layout 3's ``append``,
``append_many`` and ``replace`` take the metadata)."""

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")

MIGRATION_TIMEOUT = 120.0
"""Seconds the creation or migration of the layout may take (a pool's ``command_timeout`` and the
server's ``statement_timeout``, meant for calls, do not bound it)."""

_LOCK = "SELECT pg_advisory_xact_lock(hashtext('chatstate:' || $1))"
_META = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.meta (name text PRIMARY KEY, value integer NOT NULL);
"""


def check_schema_name(schema: object) -> str:
    """``schema`` if it is a plain lowercase identifier (it is written into SQL unquoted)."""
    if not isinstance(schema, str) or not _NAME.fullmatch(schema):
        raise ConfigurationError(
            "schema must be a lowercase identifier of 1 to 48 characters ([a-z_][a-z0-9_]*), "
            f"got {schema!r}"
        )
    return schema


_FUNCTIONS = "\n-- @functions@\n"
"""The line of ``schema.sql`` after which come its functions (all ``CREATE OR REPLACE``)."""


def layout(schema: str) -> str:
    """The SQL that creates version :data:`SCHEMA_VERSION` of the layout in ``schema``."""
    files = resources.files(__package__)
    text = "".join(
        files.joinpath(name).read_text(encoding="utf-8") for name in ("schema.sql", "editing.sql")
    )
    return text.replace("@schema@", schema)


def functions(schema: str) -> str:
    """The SQL that creates or replaces every function of the layout in ``schema``."""
    text = layout(schema)
    return text[text.index(_FUNCTIONS) :]


_MIGRATIONS = {
    # 1 -> 2: numbers are never given twice; the count of those without an entry.
    1: "ALTER TABLE {schema}.sessions ADD COLUMN missing bigint NOT NULL DEFAULT 0",
    # 2 -> 3: the metadata and the times (NULL, so no rewrite: not known for the sessions there
    # are), and the listing's order as an index.
    2: "ALTER TABLE {schema}.sessions ADD COLUMN meta bytea, ADD COLUMN created_at float8, "
    "ADD COLUMN updated_at float8; CREATE INDEX conversations_recent ON {schema}.conversations "
    '(user_session, last_active, conversation_id COLLATE "C")',
}
"""What takes the tables of a version to the next; every function is then replaced."""


async def migrate(connection: object, schema: str) -> int:
    """Create or migrate the layout in ``schema`` on an asyncpg connection (or, in a layout of
    this version, replace functions of an older revision); returns the version found before (0:
    none). UnsupportedFormatError for a newer one."""
    import asyncpg

    assert isinstance(connection, asyncpg.Connection)
    timeout = MIGRATION_TIMEOUT
    async with connection.transaction():
        await connection.execute("SET LOCAL statement_timeout = 0", timeout=timeout)
        await connection.execute(_LOCK, schema, timeout=timeout)
        await connection.execute(_META.format(schema=schema), timeout=timeout)
        meta = await connection.fetchrow(
            "SELECT max(value) FILTER (WHERE name = 'schema'), "
            f"coalesce(max(value) FILTER (WHERE name = 'functions'), 0) FROM {schema}.meta",
            timeout=timeout,
        )
        assert meta is not None  # an aggregate's one row
        found, revision = meta
        if found is not None and found > SCHEMA_VERSION:
            raise UnsupportedFormatError(
                f"the PostgreSQL schema {schema!r} was written by a newer chatstate (layout "
                f"{found}; this one knows up to {SCHEMA_VERSION}): upgrade chatstate to use it"
            )
        if found is None:
            await connection.execute(layout(schema), timeout=timeout)
            await connection.execute(
                f"INSERT INTO {schema}.meta VALUES ('schema', $1)", SCHEMA_VERSION, timeout=timeout
            )
        elif found < SCHEMA_VERSION:
            for version in range(found, SCHEMA_VERSION):  # step by step, from `found` up
                await connection.execute(
                    _MIGRATIONS[version].format(schema=schema), timeout=timeout
                )
            await connection.execute(functions(schema), timeout=timeout)
            await connection.execute(
                f"UPDATE {schema}.meta SET value = $1 WHERE name = 'schema'",
                SCHEMA_VERSION,
                timeout=timeout,
            )
        elif revision < FUNCTIONS_REVISION:  # this layout, older functions
            await connection.execute(functions(schema), timeout=timeout)
        else:
            return int(found)
        # Every function was just created or replaced: they are of this revision.
        await connection.execute(
            f"INSERT INTO {schema}.meta VALUES ('functions', $1) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            FUNCTIONS_REVISION,
            timeout=timeout,
        )
        return int(found or 0)
