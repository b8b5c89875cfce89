"""Every operation of the SQLite backend as one transaction, run on the store's thread.

A write begins with ``BEGIN IMMEDIATE`` (the write lock at once: two writers never both hold a
read snapshot they then cannot upgrade); a read with ``BEGIN``, so that its statements see one
snapshot. Anything that fails rolls the whole transaction back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from chatstate.stores._backend import KEEP, Keep, Page, RawSession, Written
from chatstate.stores._writes import DELETED_IDS_TTL, seen
from chatstate.stores.sqlite._rows import (
    ENTRIES,
    LIVE,
    NUMBERED,
    ROW,
    Row,
    as_written,
    began,
    check_fence,
    describe,
    described,
    drop,
    gaps,
    insert,
    newest,
    remember_write,
    seed,
    set_gaps,
    write_ids,
)

__all__ = ["SWEEP_CHUNK", "Transactions"]

SWEEP_CHUNK = 500
"""Sessions deleted by one chunk of a sweep, and ids read by one step of a listing."""


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
        meta: bool = False,
    ) -> Page[bytes]:
        # A sliding expiry writes: take the write lock at once rather than upgrade to it.
        with self._transaction(db, write=touch is not None) as now:
            row: Row | None = db.execute(
                ROW + "WHERE s.id = ? AND " + LIVE, (session_id, now)
            ).fetchone()
            if row is None:
                return Page([], 0)
            head, tail, _, version, generation, kept, _, _ = row
            if touch is not None:
                db.execute(
                    "UPDATE chatstate_sessions SET expires_at = ? WHERE id = ?",
                    (now + touch, session_id),
                )
            missing = gaps(db, session_id, row)
            if missing:  # the newest by count, each with its number
                numbered = (
                    db.execute(NUMBERED, (session_id, head)).fetchall()
                    if limit is None
                    else newest(db, session_id, limit)
                    if limit
                    else []
                )
                numbers = [seq for seq, _ in numbered]
                page = Page(
                    [entry for _, entry in numbered],
                    numbers[0] if numbers else tail,
                    kept if summary else None,
                    version,
                    generation,
                    tail - head - missing,
                    numbers,
                )
            else:
                start = head if limit is None else max(head, tail - limit)
                entries = (
                    [entry for (entry,) in db.execute(ENTRIES, (session_id, start))]
                    if start < tail
                    else []
                )
                page = Page(
                    entries, start, kept if summary else None, version, generation, tail - head
                )
            if meta:
                page.meta, page.created, page.updated = describe(db, session_id, generation)
            return page

    def append(
        self,
        db: sqlite3.Connection,
        session_id: str,
        entries: Sequence[bytes],
        max_entries: int | None,
        ttl: float | None,
        write_id: str,
        fence: str | None,
        meta: bytes | None = None,
    ) -> Written:
        with self._transaction(db) as now:
            row = self._live_row(db, session_id, now)
            ids, _ = write_ids(db, session_id, now)
            if ids and seen(ids, write_id):
                return as_written(db, session_id, row)
            if fence is not None:
                check_fence(db, session_id, fence, now)
            count = len(entries)
            # Entries that the bound would trim at once are never written.
            kept = entries[-max_entries:] if max_entries is not None else entries
            if row is None:
                head = tail = missing = 0
                version, generation = seed(), seed()
            else:
                head, tail, _, version, generation, _, _, _ = row
                missing = gaps(db, session_id, row)
            insert(db, session_id, tail + count - len(kept), kept)
            tail += count
            trimmed = False
            if max_entries is not None and tail - head - missing > max_entries:
                trimmed, head = True, tail - max_entries
                if missing and len(kept) < max_entries:  # by count: the max_entries-th newest
                    (head,) = db.execute(
                        "SELECT seq FROM chatstate_messages WHERE session_id = ? "
                        "ORDER BY seq DESC LIMIT 1 OFFSET ?",
                        (session_id, max_entries - 1),
                    ).fetchone()
                missing = tail - head - max_entries
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
                began(db, session_id, meta, now, generation)
            else:
                db.execute(
                    "UPDATE chatstate_sessions SET head = ?, tail = ?, expires_at = ?, "
                    "version = ? WHERE id = ?",
                    (head, tail, expires_at, version, session_id),
                )
                if row[6] is not None:
                    set_gaps(db, session_id, row, missing, version)
                described(db, session_id, generation, KEEP if meta is None else meta, now)
            remember_write(db, session_id, ids, write_id)
            self._sweep_if_due(db, now)
            return Written(tail - head - missing, version, trimmed)

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
        numbers: Sequence[int] | None = None,
        meta: bytes | Keep | None = KEEP,
    ) -> Written | None:
        with self._transaction(db) as now:
            row = self._live_row(db, session_id, now)
            ids, _ = write_ids(db, session_id, now)
            if ids and seen(ids, write_id):
                return as_written(db, session_id, row)
            if row is not None and not overwrite:
                return None
            if fence is not None:
                check_fence(db, session_id, fence, now)
            db.execute("DELETE FROM chatstate_messages WHERE session_id = ?", (session_id,))
            had = 0 if row is None else row[1]
            # Numbered on after every number the session gave (a new session: from 0), or by
            # the numbers given: those between them, and from the last to a higher tail the
            # session had, are gaps (a number is still never given twice).
            seqs = range(had, had + len(entries)) if numbers is None else numbers
            head, tail = seqs[0], max(seqs[-1] + 1, had)
            db.executemany(
                "INSERT INTO chatstate_messages (session_id, seq, entry) VALUES (?, ?, ?)",
                [(session_id, seq, entry) for seq, entry in zip(seqs, entries, strict=True)],
            )
            version, generation = (row[3] + 1, row[4] + 1) if row else (seed(), seed())
            db.execute(
                "INSERT OR REPLACE INTO chatstate_sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    head,
                    tail,
                    None if ttl is None else now + ttl,
                    version,
                    generation,
                    summary,
                ),
            )
            set_gaps(db, session_id, row, tail - head - len(entries), version)
            if row is None:
                began(db, session_id, None if meta is KEEP else meta, now, generation)
            else:
                described(db, session_id, generation, meta, now)
            remember_write(db, session_id, ids, write_id)
            self._sweep_if_due(db, now)
            return Written(len(entries), version)

    def delete(
        self, db: sqlite3.Connection, session_id: str, write_id: str, fence: str | None
    ) -> bool:
        with self._transaction(db) as now:
            row = self._live_row(db, session_id, now)
            ids, existed = write_ids(db, session_id, now)
            if ids and seen(ids, write_id):
                return row is not None or existed is None or bool(existed)
            if fence is not None:
                check_fence(db, session_id, fence, now)
            if row is not None:
                drop(db, session_id)
            # The ids outlive the session a while, so that a retry is still recognised.
            remember_write(db, session_id, ids, write_id, row is not None, now + DELETED_IDS_TTL)
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
            ids, _ = write_ids(db, session_id, now)
            if ids and seen(ids, write_id):
                return True  # its first run committed
            if row is None or row[4] != generation:
                return False  # saved, compacted, deleted or expired meanwhile
            head, tail = row[0], row[1]
            missing = gaps(db, session_id, row)
            # Entries appended meanwhile stay; those trimmed meanwhile are not removed twice.
            cut = max(head, min(before_seq, tail))
            if cut > head:
                removed = db.execute(
                    "DELETE FROM chatstate_messages WHERE session_id = ? AND seq < ?",
                    (session_id, cut),
                ).rowcount
                missing -= cut - head - removed  # the missing numbers below the cut are gone
            db.execute(
                "UPDATE chatstate_sessions SET head = ?, summary = ?, version = version + 1, "
                "generation = generation + 1 WHERE id = ?",
                (cut, summary, session_id),
            )
            set_gaps(db, session_id, row, missing, row[3] + 1)
            remember_write(db, session_id, ids, write_id)
            return True

    def snapshot(self, db: sqlite3.Connection, session_id: str) -> RawSession[bytes] | None:
        with self._transaction(db, write=False) as now:
            row: Row | None = db.execute(
                ROW + "WHERE s.id = ? AND " + LIVE, (session_id, now)
            ).fetchone()
            if row is None:
                return None
            numbered = db.execute(NUMBERED, (session_id, row[0])).fetchall()
            ttl = None if row[2] is None else max(row[2] - now, 1e-3)
            return RawSession(
                [entry for _, entry in numbered],
                row[5],
                ttl,
                [seq for seq, _ in numbered],
                describe(db, session_id, row[4])[0],
            )

    def time_left(self, db: sqlite3.Connection, session_id: str) -> float | Literal[False] | None:
        with self._transaction(db, write=False) as now:
            found = db.execute(
                "SELECT expires_at FROM chatstate_sessions s WHERE id = ? AND " + LIVE,
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
                    "SELECT id FROM chatstate_sessions s WHERE id > ? AND " + LIVE + " ORDER BY id "
                    "LIMIT ?",
                    (after, now, SWEEP_CHUNK),
                )
            ]

    def census(self, db: sqlite3.Connection) -> tuple[int, int, int]:
        """Live sessions, their messages, and the bytes of the file's pages in use."""
        with self._transaction(db, write=False) as now:
            # A gaps row that a release without them made stale is left out: an estimate.
            sessions, messages = db.execute(
                "SELECT count(*), coalesce(sum(s.tail - s.head - coalesce(g.missing, 0)), 0) "
                "FROM chatstate_sessions s LEFT JOIN chatstate_gaps g "
                "ON g.session_id = s.id AND g.version = s.version WHERE " + LIVE,
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

    def _live_row(self, db: sqlite3.Connection, session_id: str, now: float) -> Row | None:
        """The session's row inside a write; an expired session is deleted here."""
        row: Row | None = db.execute(ROW + "WHERE s.id = ?", (session_id,)).fetchone()
        if row is not None and row[2] is not None and row[2] <= now:
            drop(db, session_id, writes=True)
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
            drop(db, session_id, writes=True)
        db.execute("DELETE FROM chatstate_writes WHERE expires_at <= ?", (now,))
        db.execute("DELETE FROM chatstate_conversations WHERE deadline <= ?", (now,))
        db.execute("DELETE FROM chatstate_leases WHERE expires_at <= ?", (now,))
        self.expirations += len(expired)
        return len(expired)
