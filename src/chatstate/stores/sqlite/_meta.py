"""The SQLite backend's metadata write (:class:`~chatstate.stores.Describing`): a session's
metadata set or removed, its history, numbers, times and expiry kept, in one transaction."""

from __future__ import annotations

import sqlite3

from chatstate.stores._backend import Written
from chatstate.stores._writes import seen
from chatstate.stores.sqlite._rows import (
    as_written,
    check_fence,
    described,
    gaps,
    remember_write,
    write_ids,
)
from chatstate.stores.sqlite._transactions import Transactions

__all__ = ["write_meta"]


def write_meta(
    tx: Transactions,
    db: sqlite3.Connection,
    session_id: str,
    meta: bytes | None,
    write_id: str,
    fence: str | None,
) -> Written | None:
    """Make ``meta`` the session's metadata (None: none); None if there is no session (nothing
    written, the write id not remembered)."""
    with tx._transaction(db) as now:
        row = tx._live_row(db, session_id, now)
        ids, _ = write_ids(db, session_id, now)
        if ids and seen(ids, write_id):
            return as_written(db, session_id, row)
        if fence is not None:
            check_fence(db, session_id, fence, now)
        if row is None:
            return None
        # The version stays: a reader's kept page is still the session's history.
        described(db, session_id, row[4], meta, None)
        remember_write(db, session_id, ids, write_id)
        return Written(row[1] - row[0] - gaps(db, session_id, row), row[3])
