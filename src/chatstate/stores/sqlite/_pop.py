"""The SQLite backend's pop: the newest entries removed and returned, in one transaction."""

from __future__ import annotations

import sqlite3

from chatstate.stores._backend import KEEP, Popped
from chatstate.stores._writes import DELETED_IDS_TTL, seen
from chatstate.stores.sqlite._rows import (
    as_written,
    check_fence,
    described,
    drop,
    gaps,
    newest,
    remember_write,
    set_gaps,
    write_ids,
)
from chatstate.stores.sqlite._transactions import Transactions

__all__ = ["pop"]


def pop(
    tx: Transactions,
    db: sqlite3.Connection,
    session_id: str,
    count: int,
    write_id: str,
    fence: str | None,
) -> Popped[bytes]:
    """Remove the session's newest ``count`` entries and return them (see
    :class:`~chatstate.stores.Backend`): a pop that empties the session deletes it."""
    with tx._transaction(db) as now:
        row = tx._live_row(db, session_id, now)
        ids, _ = write_ids(db, session_id, now)
        if ids and seen(ids, write_id):
            done = as_written(db, session_id, row)
            return Popped([], done.length, done.version, applied=False)
        if fence is not None:
            check_fence(db, session_id, fence, now)
        if row is None:
            return Popped([], 0, 0)
        head, tail, _, version, _, _, _, _ = row
        missing = gaps(db, session_id, row)
        numbered = newest(db, session_id, count)
        entries = [entry for _, entry in numbered]
        if len(numbered) >= tail - head - missing:  # emptied: deleted, its ids kept as a delete's
            drop(db, session_id)
            remember_write(db, session_id, ids, write_id, True, now + DELETED_IDS_TTL)
            return Popped(entries, 0, 0)
        db.execute(
            "DELETE FROM chatstate_messages WHERE session_id = ? AND seq >= ?",
            (session_id, numbered[0][0]),
        )
        # The tail stays: the numbers it freed are never given again (they are gaps now).
        db.execute(
            "UPDATE chatstate_sessions SET version = version + 1, generation = generation + 1 "
            "WHERE id = ?",
            (session_id,),
        )
        set_gaps(db, session_id, row, missing + len(numbered), version + 1)
        described(db, session_id, row[4] + 1, KEEP, now)
        remember_write(db, session_id, ids, write_id)
        return Popped(entries, tail - head - missing - len(numbered), version + 1)
