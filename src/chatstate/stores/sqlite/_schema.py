"""The SQLite file: its tables, and opening one (WAL, durability, the layout's version).

The layout is that of 0.1.0 (schema 1) with three tables more: a file written by any release
opens as it is.

- ``chatstate_sessions``: one row a session. Its entries are numbered from ``head`` to ``tail - 1``
  (a trim or a compaction raises ``head``); a number is never given twice in a session's life (a pop
  or an edit leaves the numbers it freed unused, a save numbers on from ``tail``, a restore given
  numbers takes them, ``tail`` never going down); ``expires_at`` in Unix seconds (NULL: never);
  ``version`` changes with every write, ``generation`` with every write that is not an append;
  ``summary`` the summary's entry.
- ``chatstate_messages``: the entries, keyed by (session, number), so a load reads one range.
- ``chatstate_gaps``: for a session whose numbers from ``head`` to ``tail - 1`` are not all
  entries (after a pop, an edit, or a restore given numbers with gaps), how many are not
  (``missing``), as of its ``version`` (see :mod:`chatstate.stores.sqlite._rows`); a session
  without gaps has no row. Added in 0.2.
- ``chatstate_session_meta``: a session's metadata entry (NULL: none), ``created`` and
  ``updated`` (Unix seconds; 0.0: not known) and the session's ``generation`` when this release
  last wrote the row (see :mod:`chatstate.stores.sqlite._rows`). Every session this release
  creates has one; one that an earlier release made has none until this release writes its
  history or its metadata (it reads as no metadata, both times 0.0). Added in 0.2, after the
  other two: a file that a build without it wrote gains it when opened.
- ``chatstate_leases``: one row a held lease (token, expiry).
- ``chatstate_writes``: the last write ids of a session (see :mod:`chatstate.stores._writes`),
  dropped with it; after a delete, kept until ``expires_at``, with whether the delete found the
  session (``existed``). Added in 0.2.
- ``chatstate_conversations``: the conversation index, (user, conversation) with last activity
  and deadline.
- ``chatstate_meta``: ``schema``, the layout's version.

A file of 0.1.0 gains the three tables of 0.2 when opened, and 0.1.0 still reads and writes a
file that has them: it leaves them alone (no statement of its names them; the tables it knows
keep their columns, which it inserts by position). A session it writes has a new version, by
which 0.2 knows that the count of its gaps is stale and counts them again; one it makes again
(after a delete or an expiry) has a new generation, by which 0.2 knows that the metadata left
under its id is not its own. Its writes do not move ``updated``. A session without gaps is to
0.1.0 what it always was. One with gaps (it had a pop or an edit) 0.1.0 reads whole and in order,
but it counts the unused numbers as entries: its length is that much larger, a load of the
newest ``limit`` entries and a trim to ``max_messages`` reckon by number (so they give or keep
fewer entries), and its compaction, which folds a count of entries from the first number, may
leave entries it summarised in the history.
"""

from __future__ import annotations

import sqlite3
import time

from chatstate.errors import UnsupportedFormatError

__all__ = ["SCHEMA_VERSION", "SYNCHRONOUS", "connect"]

SCHEMA_VERSION = 1
"""The layout of the tables; a file written by a newer layout is refused, never misread."""

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chatstate_meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chatstate_sessions (
    id TEXT PRIMARY KEY,
    head INTEGER NOT NULL,
    tail INTEGER NOT NULL,
    expires_at REAL,
    version INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    summary BLOB
);
CREATE INDEX IF NOT EXISTS chatstate_sessions_expiry
    ON chatstate_sessions (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS chatstate_messages (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    entry BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chatstate_conversations (
    user_session TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    last_active REAL NOT NULL,
    deadline REAL,
    PRIMARY KEY (user_session, conversation_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chatstate_writes (
    session_id TEXT PRIMARY KEY,
    ids TEXT NOT NULL,
    existed INTEGER,
    expires_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chatstate_gaps (
    session_id TEXT PRIMARY KEY,
    missing INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chatstate_session_meta (
    session_id TEXT PRIMARY KEY,
    meta BLOB,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    generation INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chatstate_leases (
    session_id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""


def connect(path: str, *, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """Open ``path`` (creating the file and its tables if need be) in WAL mode, on the calling
    thread, which then owns the connection. UnsupportedFormatError for a newer layout."""
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        _enable_wal(connection, busy_timeout)
        connection.execute(f"PRAGMA synchronous={synchronous}")
        connection.execute("BEGIN IMMEDIATE")  # two processes creating the tables take turns
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(
                "INSERT OR IGNORE INTO chatstate_meta VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
            (schema,) = connection.execute(
                "SELECT value FROM chatstate_meta WHERE name = 'schema'"
            ).fetchone()
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        if schema > SCHEMA_VERSION:
            raise UnsupportedFormatError(
                f"{path!r} was written by a newer chatstate (schema {schema}; this one knows up "
                f"to {SCHEMA_VERSION}): upgrade chatstate to use it"
            )
    except BaseException:
        connection.close()
        raise
    return connection


def _enable_wal(connection: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch the file to WAL (a no-op once it is). The switch needs a lock that another process
    opening or writing the file may hold, and SQLite answers "locked" at once there, without
    waiting out the busy timeout: so wait here, up to ``busy_timeout``."""
    deadline = time.monotonic() + busy_timeout
    pause = 0.002
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # on the store's own thread, never the event loop's
        pause = min(pause * 2, 0.05)
