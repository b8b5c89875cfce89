"""The SQLite backend's conversation index: ``chatstate_conversations``, a row per (user,
conversation) with its last activity and deadline, each call one transaction."""

from __future__ import annotations

import sqlite3

from chatstate.stores.sqlite._transactions import Transactions

__all__ = ["drop_conversations", "index_conversation", "list_conversations"]

_LIST = "SELECT conversation_id, last_active FROM chatstate_conversations WHERE user_session = ? "
# Newest first, ties by the member, descending: a cursor (last_active, member) is then exact.
_ORDER = " ORDER BY last_active DESC, conversation_id DESC LIMIT ? OFFSET ?"


def index_conversation(
    tx: Transactions,
    db: sqlite3.Connection,
    user_session: str,
    conversation_id: str,
    now: float,
    deadline: float | None,
) -> None:
    with tx._transaction(db):
        db.execute(
            "INSERT OR REPLACE INTO chatstate_conversations VALUES (?, ?, ?, ?)",
            (user_session, conversation_id, now, deadline),
        )


def list_conversations(
    tx: Transactions,
    db: sqlite3.Connection,
    user_session: str,
    now: float,
    offset: int,
    limit: int,
    after: tuple[float, str] | None,
) -> list[tuple[str, float]]:
    """The live members, newest first, skipping ``offset``; with ``after``, those after that
    ``(last_active, member)`` in this order. Expired members are deleted first."""
    with tx._transaction(db):
        db.execute(
            "DELETE FROM chatstate_conversations WHERE user_session = ? AND deadline <= ?",
            (user_session, now),
        )
        if after is None:
            return db.execute(_LIST + _ORDER, (user_session, limit, offset)).fetchall()
        return db.execute(
            _LIST + "AND (last_active, conversation_id) < (?, ?)" + _ORDER,
            (user_session, after[0], after[1], limit, offset),
        ).fetchall()


def drop_conversations(tx: Transactions, db: sqlite3.Connection, user_session: str) -> list[str]:
    with tx._transaction(db):
        ids = [
            conversation_id
            for (conversation_id,) in db.execute(
                "SELECT conversation_id FROM chatstate_conversations WHERE user_session = ?",
                (user_session,),
            )
        ]
        db.execute("DELETE FROM chatstate_conversations WHERE user_session = ?", (user_session,))
        return ids
