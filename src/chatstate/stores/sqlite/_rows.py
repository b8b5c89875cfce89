"""What every SQLite transaction reads and writes beside its own work: a session's row with its
missing numbers, its metadata row, its write ids, the lease's fence, and the entries by number.

Missing numbers: a session's entries are numbered from ``head`` to ``tail - 1``, and a pop or an
edit leaves numbers in that range without an entry (the numbers are never given again), as does a
replace given numbers with gaps between them (a restore, an import or a fork). How many is kept in
``chatstate_gaps``, a row only for a session that has such numbers, so that a session without them
(every one that no pop, edit or replace with gaps touched) is read, appended to and trimmed as in
0.1.0, by arithmetic on ``head`` and ``tail``. The row holds the session's ``version`` at the time
it was written: a release that knows no gaps (0.1.0) writes the session without touching it, which
changes the version, and the count is then taken again from the entries themselves. (A session with
gaps that 0.1.0 deletes leaves its gaps row behind: a row of three numbers, stale by the version of
any session made again under that id, and removed by a later write to it here. No sweep looks for
such rows: that would read the whole table for what only a mixed deployment leaves.)

Metadata: ``chatstate_session_meta`` holds a session's metadata entry, its ``created`` and
``updated`` times and the session's ``generation`` when the row was last written. Every history
write (append, replace, edit, pop) writes the row in its transaction, in one statement (an
append: ``updated`` alone), and takes the session's generation; a compaction and a touch leave
it; a drop (delete, expiry, an emptying pop or edit) removes it. A release that knows no metadata
(0.1.0, and 0.2 builds before it) leaves the row alone: its appends keep the generation (the row
stays the session's, only ``updated`` misses them), its saves and compactions add one (as ours
do), but a session it deletes and makes again (or finds expired and makes again) starts from a
random generation. So the row is the session's while the session's generation is at most
:data:`DRIFT` ahead of the row's; else it reads as no metadata and unknown times, and the next
write here starts the row again from there (``created`` unknown). Such a release's delete leaves
the row behind, like a gaps row: replaced when a session is made under that id here.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence

from chatstate.stores._backend import Fenced, Keep, Written
from chatstate.stores._writes import remember

__all__ = [
    "DRIFT",
    "ENTRIES",
    "LIVE",
    "NUMBERED",
    "ROW",
    "Row",
    "as_written",
    "began",
    "check_fence",
    "describe",
    "described",
    "drop",
    "gaps",
    "insert",
    "newest",
    "remember_write",
    "seed",
    "set_gaps",
    "write_ids",
]

ROW = (
    "SELECT s.head, s.tail, s.expires_at, s.version, s.generation, s.summary, g.missing, "
    "g.version FROM chatstate_sessions s LEFT JOIN chatstate_gaps g ON g.session_id = s.id "
)
LIVE = "(s.expires_at IS NULL OR s.expires_at > ?)"
ENTRIES = "SELECT entry FROM chatstate_messages WHERE session_id = ? AND seq >= ? ORDER BY seq"
NUMBERED = (
    "SELECT seq, entry FROM chatstate_messages WHERE session_id = ? AND seq >= ? ORDER BY seq"
)

Row = tuple[int, int, float | None, int, int, bytes | None, int | None, int | None]
"""A session's row: head, tail, expires_at, version, generation, summary, and its gaps row's
missing count and version (None, None: it has none)."""


def gaps(db: sqlite3.Connection, session_id: str, row: Row) -> int:
    """How many numbers from head to tail - 1 have no entry."""
    head, tail, _, version, _, _, missing, counted_at = row
    if missing is None:
        return 0
    if counted_at == version:
        return missing
    # Written meanwhile by a release that keeps no count (0.1.0): count again.
    (count,) = db.execute(
        "SELECT count(*) FROM chatstate_messages WHERE session_id = ? AND seq >= ? AND seq < ?",
        (session_id, head, tail),
    ).fetchone()
    return int(tail - head - count)


def set_gaps(
    db: sqlite3.Connection, session_id: str, row: Row | None, missing: int, version: int
) -> None:
    """Record ``missing`` as of ``version`` (no row when there are none)."""
    if missing > 0:
        db.execute(
            "INSERT OR REPLACE INTO chatstate_gaps VALUES (?, ?, ?)",
            (session_id, missing, version),
        )
    elif row is not None and row[6] is not None:
        db.execute("DELETE FROM chatstate_gaps WHERE session_id = ?", (session_id,))


DRIFT = 1 << 20
"""How far the session's generation may be ahead of its metadata row's, the row still its own: one
for each save or compaction of a release that keeps no metadata since this one's last write. A
session made again takes a random generation below 2**48: one in 2**28 falls in that window."""

_META = "SELECT meta, created, updated, generation FROM chatstate_session_meta WHERE session_id = ?"

# A history write (?3: its time) or a metadata write (?3 NULL: the times stay) to a session that
# exists: one statement, whether the session has a row yet (one an earlier release made has none)
# and whether the row is still the session's (see DRIFT). ?5: keep the metadata (else ?2).
_DESCRIBE = """
INSERT INTO chatstate_session_meta AS m VALUES (?1, ?2, 0.0, coalesce(?3, 0.0), ?4)
ON CONFLICT (session_id) DO UPDATE SET
    meta = iif(?5, iif(?4 - m.generation BETWEEN 0 AND ?6, m.meta, NULL), ?2),
    created = iif(?4 - m.generation BETWEEN 0 AND ?6, m.created, 0.0),
    updated = coalesce(?3, iif(?4 - m.generation BETWEEN 0 AND ?6, m.updated, 0.0)),
    generation = ?4
"""


def describe(
    db: sqlite3.Connection, session_id: str, generation: int
) -> tuple[bytes | None, float, float]:
    """The session's metadata entry, created and updated (None, 0.0, 0.0: it has no row, or the
    row is not its own)."""
    found = db.execute(_META, (session_id,)).fetchone()
    if found is None or not 0 <= generation - found[3] <= DRIFT:
        return None, 0.0, 0.0
    return found[0], found[1], found[2]


def began(
    db: sqlite3.Connection, session_id: str, meta: bytes | None, now: float, generation: int
) -> None:
    """The row of a session made now (replacing any that an earlier release left under its id)."""
    db.execute(
        "INSERT OR REPLACE INTO chatstate_session_meta VALUES (?, ?, ?, ?, ?)",
        (session_id, meta, now, now, generation),
    )


def described(
    db: sqlite3.Connection,
    session_id: str,
    generation: int,
    meta: bytes | Keep | None,
    updated: float | None,
) -> None:
    """Write the row of a session that exists, with its generation now: ``meta`` (KEEP: the
    one it has), ``updated`` (None: a metadata write, the times stay)."""
    entry, keep = (None, True) if isinstance(meta, Keep) else (meta, False)
    db.execute(_DESCRIBE, (session_id, entry, updated, generation, keep, DRIFT))


def newest(db: sqlite3.Connection, session_id: str, count: int) -> list[tuple[int, bytes]]:
    """The newest ``count`` entries with their numbers, oldest first."""
    rows: list[tuple[int, bytes]] = db.execute(
        "SELECT seq, entry FROM chatstate_messages WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
        (session_id, count),
    ).fetchall()
    rows.reverse()
    return rows


def drop(db: sqlite3.Connection, session_id: str, *, writes: bool = False) -> None:
    """Remove a session; with ``writes``, its write ids too (it expired: they go with it)."""
    db.execute("DELETE FROM chatstate_messages WHERE session_id = ?", (session_id,))
    db.execute("DELETE FROM chatstate_sessions WHERE id = ?", (session_id,))
    db.execute("DELETE FROM chatstate_gaps WHERE session_id = ?", (session_id,))
    db.execute("DELETE FROM chatstate_session_meta WHERE session_id = ?", (session_id,))
    if writes:
        db.execute("DELETE FROM chatstate_writes WHERE session_id = ?", (session_id,))


def write_ids(db: sqlite3.Connection, session_id: str, now: float) -> tuple[str, int | None]:
    """The session's remembered write ids, and, if it was deleted, whether the delete found it
    (None: it was not deleted)."""
    found = db.execute(
        "SELECT ids, existed FROM chatstate_writes WHERE session_id = ? "
        "AND (expires_at IS NULL OR expires_at > ?)",
        (session_id, now),
    ).fetchone()
    return ("", None) if found is None else found


def remember_write(
    db: sqlite3.Connection,
    session_id: str,
    ids: str,
    write_id: str,
    existed: bool | None = None,
    until: float | None = None,
) -> None:
    db.execute(
        "INSERT OR REPLACE INTO chatstate_writes VALUES (?, ?, ?, ?)",
        (session_id, remember(ids, write_id), existed, until),
    )


def check_fence(db: sqlite3.Connection, session_id: str, fence: str, now: float) -> None:
    held = db.execute(
        "SELECT token FROM chatstate_leases WHERE session_id = ? AND expires_at > ?",
        (session_id, now),
    ).fetchone()
    if held is None or held[0] != fence:
        raise Fenced(f"the lease of session {session_id!r} is not held by this token")


def as_written(db: sqlite3.Connection, session_id: str, row: Row | None) -> Written:
    """What a write already applied returns: the session as it is now."""
    if row is None:
        return Written(0, 0, applied=False)
    return Written(row[1] - row[0] - gaps(db, session_id, row), row[3], applied=False)


def insert(db: sqlite3.Connection, session_id: str, first: int, entries: Sequence[bytes]) -> None:
    db.executemany(
        "INSERT INTO chatstate_messages (session_id, seq, entry) VALUES (?, ?, ?)",
        [(session_id, first + index, entry) for index, entry in enumerate(entries)],
    )


def seed() -> int:
    """A random starting number: a session deleted and written again never repeats one."""
    return secrets.randbits(48)
