"""The SQLite backend's pop: the newest entries removed and returned, in one transaction."""

from __future__ import annotations

import sqlite3

from chatstate.stores._backend import Popped
from chatstate.stores._writes import DELETED_IDS_TTL, seen
from chatstate.stores.sqlite._transactions import (
    _ENTRIES,
    Transactions,
    _as_written,
    _check_fence,
    _drop,
    _ids,
    _remember,
)

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
        ids, _ = _ids(db, session_id, now)
        if ids and seen(ids, write_id):
            done = _as_written(row)
            return Popped([], done.length, done.version, applied=False)
        if fence is not None:
            _check_fence(db, session_id, fence, now)
        if row is None:
            return Popped([], 0, 0)
        head, tail, _, version, _, _ = row
        start = max(head, tail - count)
        entries = [entry for (entry,) in db.execute(_ENTRIES, (session_id, start))]
        if start == head:  # emptied: deleted, its write ids kept as a delete keeps them
            _drop(db, session_id)
            _remember(db, session_id, ids, write_id, True, now + DELETED_IDS_TTL)
            return Popped(entries, 0, 0)
        db.execute(
            "DELETE FROM chatstate_messages WHERE session_id = ? AND seq >= ?", (session_id, start)
        )
        # A new generation: the numbers it freed are taken again by the next append.
        db.execute(
            "UPDATE chatstate_sessions SET tail = ?, version = version + 1, "
            "generation = generation + 1 WHERE id = ?",
            (start, session_id),
        )
        _remember(db, session_id, ids, write_id)
        return Popped(entries, start - head, version + 1)
