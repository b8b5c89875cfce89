"""Every operation of the SQLite backend as one transaction, run on the store's thread.

A write begins with ``BEGIN IMMEDIATE`` (the write lock at once: two writers never both hold a
read snapshot they then cannot upgrade); a read with ``BEGIN``, so that its statements see one
snapshot. Anything that fails rolls the whole transaction back.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from chatstate.stores._backend import Fenced, Page, RawSession, Written
from chatstate.stores._writes import DELETED_IDS_TTL, remember, seen

__all__ = ["SWEEP_CHUNK", "Transactions"]

SWEEP_CHUNK = 500
"""Sessions deleted by one chunk of a sweep, and ids read by one step of a listing."""

_ROW = "SELECT head, tail, expires_at, version, generation, summary FROM chatstate_sessions "
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_ENTRIES = "SELECT entry FROM chatstate_messages WHERE session_id = ? AND seq >= ? ORDER BY seq"

# A session's row: head, tail, expires_at, version, generation, summary.
_Row = tuple[int, int, float | None, int, int, bytes | None]


class Transactions:
    """The transactions, over a connection given to each; ``clock`` is the wall clock (expiry
    is shared by processes and outlives them). Not thread-safe: one thread runs them all."""

    def __init__(self, *, clock: Callable[[], float], sweep_interval: float | None) -> None:
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._next_sweep = 0.0
        self.expirations = 0
        """Expired sessions deleted (by a sweep, or by a write that found them expired)."""

    # -- sessions --------------------------------------------------------------------------------

    def read(
        self,
        db: sqlite3.Connection,
        session_id: str,
        limit: int | None,
        summary: bool,
        touch: float | None,
    ) -> Page[bytes]:
        # A sliding expiry writes: take the write lock at once rather than upgrade to it.
        with self._transaction(db, write=touch is not None) as now:
            row: _Row | None = db.execute(
                _ROW + "WHERE id = ? AND " + _LIVE, (session_id, now)
            ).fetchone()
            if row is None:
                return Page([], 0)
            head, tail, _, version, generation, kept = row
            start = head if limit is None else max(head, tail - limit)
            entries = (
                [entry for (entry,) in db.execute(_ENTRIES, (session_id, start))]
                if start < tail
                else []
            )
            if touch is not None:
                db.execute(
                    "UPDATE chatstate_sessions SET expires_at = ? WHERE id = ?",
                    (now + touch, session_id),
                )
            return Page(entries, start, kept if summary else None, version, generation, tail - head)

    def append(
        self,
        db: sqlite3.Connection,
        session_id: str,
        entries: Sequence[bytes],
        max_entries: int | None,
        ttl: float | None,
        write_id: str,
        fence: str | None,
    ) -> Written:
        with self._transaction(db) as now:
            row = self._live_row(db, session_id, now)
            ids, _ = _ids(db, session_id, now)
            if ids and seen(ids, write_id):
                return _as_written(row)
            if fence is not None:
                _check_fence(db, session_id, fence, now)
            count = len(entries)
            # Entries that the bound would trim at once are never written.
            kept = entries[-max_entries:] if max_entries is not None else entries
            if row is None:
                head = tail = 0
                version, generation = _seed(), _seed()
            else:
                head, tail, _, version, generation, _ = row
            _insert(db, session_id, tail + count - len(kept), kept)
            tail += count
            trimmed = False
            if max_entries is not None and tail - head > max_entries:
                trimmed, head = True, tail - max_entries
                db.execute(
                    "DELETE FROM chatstate_messages WHERE session_id = ? AND seq < ?",
                    (session_id, head),
                )
            version += 1
            expires_at = None if ttl is None else now + ttl
            if row is None:
                db.execute(
                    "INSERT INTO chatstate_sessions VALUES (?, ?, ?, ?, ?, ?, NULL)",
                    (session_id, head, tail, expires_at, version, generation),
                )
            else:
                db.execute(
                    "UPDATE chatstate_sessions SET head = ?, tail = ?, expires_at = ?, "
                    "version = ? WHERE id = ?",
                    (head, tail, expires_at, version, session_id),
                )
            _remember(db, session_id, ids, write_id)
            self._sweep_if_due(db, now)
            return Written(tail - head, version, trimmed)

    def replace(
        self,
        db: sqlite3.Connection,
        session_id: str,
        entries: Sequence[bytes],
        summary: bytes | None,
        ttl: float | None,
        overwrite: bool,
        write_id: str,
        fence: str | None,
    ) -> Written | None:
        with self._transaction(db) as now:
            row = self._live_row(db, session_id, now)
            ids, _ = _ids(db, session_id, now)
            if ids and seen(ids, write_id):
                return _as_written(row)
            if row is not None and not overwrite:
                return None
            if fence is not None:
                _check_fence(db, session_id, fence, now)
            db.execute("DELETE FROM chatstate_messages WHERE session_id = ?", (session_id,))
            _insert(db, session_id, 0, entries)
            version, generation = (row[3] + 1, row[4] + 1) if row else (_seed(), _seed())
            db.execute(
                "INSERT OR REPLACE INTO chatstate_sessions VALUES (?, 0, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    len(entries),
                    None if ttl is None else now + ttl,
                    version,
                    generation,
                    summary,
                ),
            )
            _remember(db, session_id, ids, write_id)
            self._sweep_if_due(db, now)
            return Written(len(entries), version)

    def delete(
        self, db: sqlite3.Connection, session_id: str, write_id: str, fence: str | None
    ) -> bool:
        with self._transaction(db) as now:
            row = self._live_row(db, session_id, now)
            ids, existed = _ids(db, session_id, now)
            if ids and seen(ids, write_id):
                return row is not None or existed is None or bool(existed)
            if fence is not None:
                _check_fence(db, session_id, fence, now)
            if row is not None:
                _drop(db, session_id)
            # The ids outlive the session a while, so that a retry is still recognised.
            _remember(db, session_id, ids, write_id, row is not None, now + DELETED_IDS_TTL)
            return row is not None

    def compact(
        self,
        db: sqlite3.Connection,
        session_id: str,
        generation: int,
        before_seq: int,
        summary: bytes,
        write_id: str,
    ) -> bool:
        with self._transaction(db) as now:
            row = self._live_row(db, session_id, now)
            ids, _ = _ids(db, session_id, now)
            if ids and seen(ids, write_id):
                return True  # its first run committed
            if row is None or row[4] != generation:
                return False  # saved, compacted, deleted or expired meanwhile
            head, tail = row[0], row[1]
            # Entries appended meanwhile stay; those trimmed meanwhile are not removed twice.
            cut = max(head, min(before_seq, tail))
            if cut > head:
                db.execute(
                    "DELETE FROM chatstate_messages WHERE session_id = ? AND seq < ?",
                    (session_id, cut),
                )
            db.execute(
                "UPDATE chatstate_sessions SET head = ?, summary = ?, version = version + 1, "
                "generation = generation + 1 WHERE id = ?",
                (cut, summary, session_id),
            )
            _remember(db, session_id, ids, write_id)
            return True

    def snapshot(self, db: sqlite3.Connection, session_id: str) -> RawSession[bytes] | None:
        with self._transaction(db, write=False) as now:
            row: _Row | None = db.execute(
                _ROW + "WHERE id = ? AND " + _LIVE, (session_id, now)
            ).fetchone()
            if row is None:
                return None
            entries = [entry for (entry,) in db.execute(_ENTRIES, (session_id, row[0]))]
            ttl = None if row[2] is None else max(row[2] - now, 1e-3)
            return RawSession(entries, row[5], ttl)

    def time_left(self, db: sqlite3.Connection, session_id: str) -> float | Literal[False] | None:
        with self._transaction(db, write=False) as now:
            found = db.execute(
                "SELECT expires_at FROM chatstate_sessions WHERE id = ? AND " + _LIVE,
                (session_id, now),
            ).fetchone()
            if found is None:
                return False
            return None if found[0] is None else found[0] - now

    # -- leases ----------------------------------------------------------------------------------

    def acquire_lease(
        self, db: sqlite3.Connection, session_id: str, token: str, ttl: float
    ) -> bool:
        with self._transaction(db) as now:
            held = db.execute(
                "SELECT token FROM chatstate_leases WHERE session_id = ? AND expires_at > ?",
                (session_id, now),
            ).fetchone()
            if held is not None and held[0] != token:
                return False
            db.execute(
                "INSERT OR REPLACE INTO chatstate_leases VALUES (?, ?, ?)",
                (session_id, token, now + ttl),
            )
            return True

    def renew_lease(self, db: sqlite3.Connection, session_id: str, token: str, ttl: float) -> bool:
        with self._transaction(db) as now:
            # Only a lease still ours: one that ran out may have been taken, even if it was not.
            renewed = db.execute(
                "UPDATE chatstate_leases SET expires_at = ? "
                "WHERE session_id = ? AND token = ? AND expires_at > ?",
                (now + ttl, session_id, token, now),
            )
            return renewed.rowcount == 1

    def release_lease(self, db: sqlite3.Connection, session_id: str, token: str) -> bool:
        with self._transaction(db):
            released = db.execute(
                "DELETE FROM chatstate_leases WHERE session_id = ? AND token = ?",
                (session_id, token),
            )
            return released.rowcount == 1

    # -- the conversation index ------------------------------------------------------------------

    def index_conversation(
        self,
        db: sqlite3.Connection,
        user_session: str,
        conversation_id: str,
        now: float,
        deadline: float | None,
    ) -> None:
        with self._transaction(db):
            db.execute(
                "INSERT OR REPLACE INTO chatstate_conversations VALUES (?, ?, ?, ?)",
                (user_session, conversation_id, now, deadline),
            )

    def list_conversations(
        self, db: sqlite3.Connection, user_session: str, now: float, offset: int, limit: int
    ) -> list[tuple[str, float]]:
        with self._transaction(db):
            db.execute(
                "DELETE FROM chatstate_conversations WHERE user_session = ? AND deadline <= ?",
                (user_session, now),
            )
            return db.execute(
                "SELECT conversation_id, last_active FROM chatstate_conversations "
                "WHERE user_session = ? ORDER BY last_active DESC, conversation_id "
                "LIMIT ? OFFSET ?",
                (user_session, limit, offset),
            ).fetchall()

    def drop_conversations(self, db: sqlite3.Connection, user_session: str) -> list[str]:
        with self._transaction(db):
            ids = [
                conversation_id
                for (conversation_id,) in db.execute(
                    "SELECT conversation_id FROM chatstate_conversations WHERE user_session = ?",
                    (user_session,),
                )
            ]
            db.execute(
                "DELETE FROM chatstate_conversations WHERE user_session = ?", (user_session,)
            )
            return ids

    # -- the whole file --------------------------------------------------------------------------

    def sweep(self, db: sqlite3.Connection) -> int:
        """One chunk: up to :data:`SWEEP_CHUNK` expired sessions deleted (and the expired
        leases and index entries); how many sessions."""
        with self._transaction(db) as now:
            return self._sweep(db, now)

    def ids_after(self, db: sqlite3.Connection, after: str) -> list[str]:
        """Up to :data:`SWEEP_CHUNK` live sessions' ids after ``after``, in order."""
        with self._transaction(db, write=False) as now:
            return [
                session_id
                for (session_id,) in db.execute(
                    "SELECT id FROM chatstate_sessions WHERE id > ? AND " + _LIVE + " ORDER BY id "
                    "LIMIT ?",
                    (after, now, SWEEP_CHUNK),
                )
            ]

    def census(self, db: sqlite3.Connection) -> tuple[int, int, int]:
        """Live sessions, their messages, and the bytes of the file's pages in use."""
        with self._transaction(db, write=False) as now:
            sessions, messages = db.execute(
                "SELECT count(*), coalesce(sum(tail - head), 0) FROM chatstate_sessions WHERE "
                + _LIVE,
                (now,),
            ).fetchone()
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            (free,) = db.execute("PRAGMA freelist_count").fetchone()
            (size,) = db.execute("PRAGMA page_size").fetchone()
            return sessions, messages, (pages - free) * size

    # -- internals -------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, db: sqlite3.Connection, *, write: bool = True) -> Iterator[float]:
        """One transaction; yields the time it runs at."""
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield self._clock()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _live_row(self, db: sqlite3.Connection, session_id: str, now: float) -> _Row | None:
        """The session's row inside a write; an expired session is deleted here."""
        row: _Row | None = db.execute(_ROW + "WHERE id = ?", (session_id,)).fetchone()
        if row is not None and row[2] is not None and row[2] <= now:
            _drop(db, session_id, writes=True)
            self.expirations += 1
            return None
        return row

    def _sweep_if_due(self, db: sqlite3.Connection, now: float) -> None:
        # The sweep rides on the writes: one chunk at most per sweep_interval, no task of its own.
        if self._sweep_interval is not None and now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval
            self._sweep(db, now)

    def _sweep(self, db: sqlite3.Connection, now: float) -> int:
        expired = [
            session_id
            for (session_id,) in db.execute(
                "SELECT id FROM chatstate_sessions WHERE expires_at <= ? LIMIT ?",
                (now, SWEEP_CHUNK),
            )
        ]
        for session_id in expired:
            _drop(db, session_id, writes=True)
        db.execute("DELETE FROM chatstate_writes WHERE expires_at <= ?", (now,))
        db.execute("DELETE FROM chatstate_conversations WHERE deadline <= ?", (now,))
        db.execute("DELETE FROM chatstate_leases WHERE expires_at <= ?", (now,))
        self.expirations += len(expired)
        return len(expired)


def _drop(db: sqlite3.Connection, session_id: str, *, writes: bool = False) -> None:
    """Remove a session; with ``writes``, its write ids too (it expired: they go with it)."""
    db.execute("DELETE FROM chatstate_messages WHERE session_id = ?", (session_id,))
    db.execute("DELETE FROM chatstate_sessions WHERE id = ?", (session_id,))
    if writes:
        db.execute("DELETE FROM chatstate_writes WHERE session_id = ?", (session_id,))


def _ids(db: sqlite3.Connection, session_id: str, now: float) -> tuple[str, int | None]:
    """The session's remembered write ids, and, if it was deleted, whether the delete found it
    (None: it was not deleted)."""
    found = db.execute(
        "SELECT ids, existed FROM chatstate_writes WHERE session_id = ? "
        "AND (expires_at IS NULL OR expires_at > ?)",
        (session_id, now),
    ).fetchone()
    return ("", None) if found is None else found


def _remember(
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


def _check_fence(db: sqlite3.Connection, session_id: str, fence: str, now: float) -> None:
    held = db.execute(
        "SELECT token FROM chatstate_leases WHERE session_id = ? AND expires_at > ?",
        (session_id, now),
    ).fetchone()
    if held is None or held[0] != fence:
        raise Fenced(f"the lease of session {session_id!r} is not held by this token")


def _as_written(row: _Row | None) -> Written:
    """What a write already applied returns: the session as it is now."""
    if row is None:
        return Written(0, 0, applied=False)
    return Written(row[1] - row[0], row[3], applied=False)


def _insert(db: sqlite3.Connection, session_id: str, first: int, entries: Sequence[bytes]) -> None:
    db.executemany(
        "INSERT INTO chatstate_messages (session_id, seq, entry) VALUES (?, ?, ?)",
        [(session_id, first + index, entry) for index, entry in enumerate(entries)],
    )


def _seed() -> int:
    """A random starting number: a session deleted and written again never repeats one."""
    return secrets.randbits(48)
