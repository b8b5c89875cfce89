"""The SQLite backend's history operations (:class:`~chatstate.stores.Editing`): a page of
entries by number, and an edit of one entry by number, each one transaction."""

from __future__ import annotations

import sqlite3

from chatstate.stores._backend import KEEP, EditOutcome, Page, Written
from chatstate.stores._writes import DELETED_IDS_TTL, seen
from chatstate.stores.sqlite._rows import (
    LIVE,
    ROW,
    Row,
    as_written,
    check_fence,
    described,
    drop,
    gaps,
    remember_write,
    set_gaps,
    write_ids,
)
from chatstate.stores.sqlite._transactions import Transactions

__all__ = ["edit", "read_range"]

_NUMBERED = "SELECT seq, entry FROM chatstate_messages WHERE session_id = ? "


def read_range(
    tx: Transactions,
    db: sqlite3.Connection,
    session_id: str,
    before: int | None,
    after: int | None,
    limit: int,
    touch: float | None,
) -> Page[bytes]:
    """Up to ``limit`` entries with their numbers: the newest below ``before``, the oldest above
    ``after``, or the newest of all."""
    with tx._transaction(db, write=touch is not None) as now:
        row: Row | None = db.execute(
            ROW + "WHERE s.id = ? AND " + LIVE, (session_id, now)
        ).fetchone()
        if row is None:
            return Page([], 0)
        if touch is not None:
            db.execute(
                "UPDATE chatstate_sessions SET expires_at = ? WHERE id = ?",
                (now + touch, session_id),
            )
        if after is not None:
            numbered = db.execute(
                _NUMBERED + "AND seq > ? ORDER BY seq LIMIT ?", (session_id, after, limit)
            ).fetchall()
        else:
            numbered = db.execute(
                _NUMBERED + "AND seq < ? ORDER BY seq DESC LIMIT ?",
                (session_id, row[1] if before is None else before, limit),
            ).fetchall()
            numbered.reverse()
        numbers = [seq for seq, _ in numbered]
        length = row[1] - row[0] - gaps(db, session_id, row)
        return Page(
            [entry for _, entry in numbered],
            numbers[0] if numbers else 0,
            None,
            row[3],
            row[4],
            length,
            # Only where they do not run on from the first without a gap (see Page.numbers).
            numbers if numbers and numbers[-1] - numbers[0] >= len(numbers) else None,
        )


def edit(
    tx: Transactions,
    db: sqlite3.Connection,
    session_id: str,
    seq: int,
    entry: bytes | None,
    truncate: bool,
    version: int | None,
    write_id: str,
    fence: str | None,
) -> Written | EditOutcome:
    """Replace (``entry``) or remove (None) the entry numbered ``seq`` and, with ``truncate``,
    remove every later one; conditional on ``version`` if given."""
    with tx._transaction(db) as now:
        row = tx._live_row(db, session_id, now)
        ids, _ = write_ids(db, session_id, now)
        if ids and seen(ids, write_id):
            return as_written(db, session_id, row)
        if fence is not None:
            check_fence(db, session_id, fence, now)
        if row is None:
            return "missing"
        head, tail, _, current, _, _, _, _ = row
        if version is not None and version != current:
            return "stale"
        if (
            seq < head
            or seq >= tail
            or db.execute(
                "SELECT 1 FROM chatstate_messages WHERE session_id = ? AND seq = ?",
                (session_id, seq),
            ).fetchone()
            is None
        ):
            return "missing"
        missing = gaps(db, session_id, row)
        if entry is not None:
            db.execute(
                "UPDATE chatstate_messages SET entry = ? WHERE session_id = ? AND seq = ?",
                (entry, session_id, seq),
            )
        removed = (
            db.execute(
                "DELETE FROM chatstate_messages WHERE session_id = ? AND seq >= ?",
                (session_id, seq if entry is None else seq + 1),
            ).rowcount
            if truncate
            else db.execute(
                "DELETE FROM chatstate_messages WHERE session_id = ? AND seq = ?",
                (session_id, seq),
            ).rowcount
            if entry is None
            else 0
        )
        missing += removed
        if tail - head - missing == 0:  # emptied: deleted, its ids kept as a delete's
            drop(db, session_id)
            remember_write(db, session_id, ids, write_id, True, now + DELETED_IDS_TTL)
            return Written(0, 0)
        # The tail stays: the numbers it freed are never given again (they are gaps now).
        db.execute(
            "UPDATE chatstate_sessions SET version = version + 1, generation = generation + 1 "
            "WHERE id = ?",
            (session_id,),
        )
        set_gaps(db, session_id, row, missing, current + 1)
        described(db, session_id, row[4] + 1, KEEP, now)
        remember_write(db, session_id, ids, write_id)
        return Written(tail - head - missing, current + 1)
