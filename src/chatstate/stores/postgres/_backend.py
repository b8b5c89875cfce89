"""The PostgreSQL backend: every call one statement, one round trip, on a pooled connection.

A plain load is one ``SELECT`` (the newest entries of a live session as one array); every write
is one call of a function of the store's schema (``schema.sql``, ``editing.sql``; the other
statements are in ``_queries``), which runs its whole
transaction on the server: the write-id check, the lease's fence, the insert, the trim, the
expiry, the version, and, when one is due, a chunk of the expiry sweep. A write refused by its
fence raises SQLSTATE ``CSFEN`` there, so nothing of it commits.

A session's metadata entry and its created and updated times are columns of its row (layout 3):
a read with ``meta=True`` is the same one statement with three more columns, an append with
``meta`` the same one call of ``append`` with one more argument (NULL without it), and they
expire, are swept and are deleted with the row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

import asyncpg

from chatstate.stores._backend import (
    KEEP,
    BackendCensus,
    EditOutcome,
    ErrorKind,
    Fenced,
    Keep,
    Page,
    Popped,
    RawSession,
    Written,
)
from chatstate.stores._writes import DELETED_IDS_TTL
from chatstate.stores.postgres._batch import AppendBatcher, Item, Row
from chatstate.stores.postgres._errors import error_kind
from chatstate.stores.postgres._pool import SWEEP_CHUNK, PostgresCalls, no_reset

__all__ = ["SWEEP_CHUNK", "PostgresBackend", "no_reset"]


class PostgresBackend(PostgresCalls):
    """The :class:`~chatstate.stores.Backend` of
    :class:`~chatstate.stores.postgres.PostgresStateStore` (and its
    :class:`~chatstate.stores.Describing`): a pool (given, or made from ``dsn`` on first use), the
    tables and functions of ``schema`` (created or migrated on first use)."""

    name = "postgres"

    def __init__(
        self,
        pool: asyncpg.Pool | None,
        *,
        dsn: str | None = None,
        pool_options: dict[str, Any] | None = None,
        schema: str,
        clock: Callable[[], float] | None,
        sweep_interval: float | None,
        batch_appends: bool = True,
    ) -> None:
        super().__init__(
            pool,
            dsn=dsn,
            pool_options=pool_options,
            schema=schema,
            clock=clock,
            sweep_interval=sweep_interval,
        )
        self.expirations = 0
        """Expired sessions deleted by this instance's sweeps."""
        self.batcher = AppendBatcher(self._append_one, self._append_many) if batch_appends else None
        """What joins the appends of concurrent callers (None: every append alone)."""

    def __repr__(self) -> str:
        return f"PostgresBackend(schema={self.schema!r})"

    # -- sessions --------------------------------------------------------------------------------

    async def read(
        self,
        session_id: str,
        *,
        limit: int | None,
        summary: bool,
        touch: float | None,
        numbers: bool,
        meta: bool = False,
    ) -> Page[bytes]:
        if not (numbers or summary or touch or meta):
            entries = await self._value("load", session_id, limit, self._now())
            return Page([] if entries is None else entries, 0)
        name = ("read" if touch is None else "touch") + ("_meta" if meta else "")
        extra = () if touch is None else (touch,)
        row = await self._row(name, session_id, limit, self._now(), summary, *extra)
        if row is None:
            return Page([], 0)
        head, tail, missing, version, generation, kept, entries, seqs = row[:8]
        if seqs is not None:  # gaps: each entry's number
            first = seqs[0] if seqs else tail
            page = Page(entries, first, kept, version, generation, tail - head - missing, seqs)
        else:
            start = head if limit is None else max(head, tail - limit)
            page = Page(entries, start, kept, version, generation, tail - head)
        if meta:
            page.meta, page.created, page.updated = row[8:]
        return page

    async def append(
        self,
        session_id: str,
        entries: Sequence[bytes],
        *,
        max_entries: int | None,
        ttl: float | None,
        write_id: str,
        fence: str | None,
        meta: bytes | None = None,
    ) -> Written:
        item = (session_id, entries, max_entries, ttl, write_id, fence, meta)
        if self.batcher is None:
            length, version, trimmed, applied, fenced = await self._append_one(item)
        else:
            length, version, trimmed, applied, fenced = await self.batcher.append(item)
        if fenced:
            raise Fenced(f"the lease of session {session_id!r} is not held by this token")
        return Written(length, version, trimmed, applied)

    async def _append_one(self, item: Item) -> Row:
        *call, meta = item
        row = await self._row("append", *call, self._now(), self._sweep_chunk(), meta)
        return (*row, False)

    async def _append_many(self, items: list[Item]) -> list[Row]:
        rows = await self._rows(
            "append_many",
            [item[0] for item in items],
            [len(item[1]) for item in items],
            [entry for item in items for entry in item[1]],
            [item[2] for item in items],
            [item[3] for item in items],
            [item[4] for item in items],
            [item[5] for item in items],
            self._now(),
            self._sweep_chunk(),
            # None for a batch without metadata: one NULL, not an array of them.
            None if all(item[6] is None for item in items) else [item[6] for item in items],
        )
        return [tuple(row) for row in rows]

    async def replace(
        self,
        session_id: str,
        entries: Sequence[bytes],
        *,
        summary: bytes | None,
        ttl: float | None,
        overwrite: bool,
        write_id: str,
        fence: str | None,
        numbers: Sequence[int] | None = None,
        meta: bytes | Keep | None = KEEP,
    ) -> Written | None:
        keep = meta is KEEP
        row = await self._row(
            "replace",
            session_id,
            entries,
            summary,
            ttl,
            overwrite,
            write_id,
            fence,
            self._now(),
            None if numbers is None else list(numbers),
            None if isinstance(meta, Keep) else meta,
            keep,
        )
        if row is None:
            return None  # it exists, and no overwrite
        length, version, applied = row
        return Written(length, version, applied=applied)

    async def delete(self, session_id: str, *, write_id: str, fence: str | None) -> bool:
        existed: bool = await self._value(
            "delete", session_id, write_id, fence, self._now(), DELETED_IDS_TTL
        )
        return existed

    async def compact(
        self, session_id: str, *, generation: int, before_seq: int, summary: bytes, write_id: str
    ) -> bool:
        done: bool = await self._value(
            "compact", session_id, generation, before_seq, summary, write_id, self._now()
        )
        return done

    async def pop(
        self, session_id: str, count: int, *, write_id: str, fence: str | None
    ) -> Popped[bytes]:
        entries, length, version, applied = await self._row(
            "pop", session_id, count, write_id, fence, self._now(), DELETED_IDS_TTL
        )
        return Popped(entries, length, version, applied)

    async def read_range(
        self,
        session_id: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        touch: float | None,
    ) -> Page[bytes]:
        name = "range_after" if after is not None else "range_before"
        bound = after if after is not None else before
        if touch is None:
            row = await self._row(name, session_id, bound, self._now(), limit)
        else:
            row = await self._row(name + "_touch", session_id, bound, self._now(), limit, touch)
        if row is None:
            return Page([], 0)
        head, tail, missing, version, generation, numbers, entries = row
        if not numbers:
            return Page([], 0, None, version, generation, tail - head - missing)
        # Only where they do not run on from the first without a gap (see Page.numbers).
        gapped = numbers[-1] - numbers[0] >= len(numbers)
        return Page(
            entries,
            numbers[0],
            None,
            version,
            generation,
            tail - head - missing,
            numbers if gapped else None,
        )

    async def edit(
        self,
        session_id: str,
        seq: int,
        entry: bytes | None,
        *,
        truncate: bool,
        version: int | None,
        write_id: str,
        fence: str | None,
    ) -> Written | EditOutcome:
        outcome, length, now_version, applied = await self._row(
            "edit",
            session_id,
            seq,
            entry,
            truncate,
            version,
            write_id,
            fence,
            self._now(),
            DELETED_IDS_TTL,
        )
        if outcome == "missing":
            return "missing"
        if outcome == "stale":
            return "stale"
        return Written(length, now_version, applied=applied)

    async def snapshot(self, session_id: str) -> RawSession[bytes] | None:
        row = await self._row("snapshot", session_id, self._now())
        if row is None:
            return None
        entries, summary, left, numbers, meta = row
        ttl = None if left is None else max(left, 1e-3)
        return RawSession(entries, summary, ttl, numbers, meta)

    async def write_meta(
        self, session_id: str, meta: bytes | None, *, write_id: str, fence: str | None
    ) -> Written | None:
        length, version, applied = await self._row(
            "write_meta", session_id, meta, write_id, fence, self._now()
        )
        if length is None:
            return None  # no session: nothing written
        return Written(length, version, applied=applied)

    async def time_left(self, session_id: str) -> float | Literal[False] | None:
        row = await self._row("time_left", session_id, self._now())
        if row is None:
            return False
        left: float | None = row[0]
        return left

    # -- leases ----------------------------------------------------------------------------------

    async def acquire_lease(self, session_id: str, token: str, ttl: float) -> bool:
        return bool(await self._value("acquire", session_id, token, ttl, self._now()))

    async def renew_lease(self, session_id: str, token: str, ttl: float) -> bool:
        return bool(await self._value("renew", session_id, token, ttl, self._now()))

    async def release_lease(self, session_id: str, token: str) -> bool:
        return bool(await self._value("release", session_id, token))

    # -- the conversation index ------------------------------------------------------------------

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        deadline = None if ttl is None else now + ttl
        await self._value("index", user_session, conversation_id, now, deadline)

    async def list_conversations(
        self,
        user_session: str,
        *,
        now: float,
        offset: int,
        limit: int,
        after: tuple[float, str] | None = None,
    ) -> list[tuple[str, float]]:
        if after is None:
            rows = await self._rows("list", user_session, now, limit, offset)
        else:
            rows = await self._rows("list_after", user_session, now, limit, offset, *after)
        return [(conversation_id, last_active) for conversation_id, last_active in rows]

    async def drop_conversations(self, user_session: str) -> list[str]:
        return [conversation_id for (conversation_id,) in await self._rows("drop", user_session)]

    # -- the whole store -------------------------------------------------------------------------

    async def session_ids(self) -> AsyncIterator[str]:
        """The live sessions' ids in id order, read a chunk (one query) at a time."""
        after = ""
        while True:
            ids = [row[0] for row in await self._rows("ids", after, self._now(), SWEEP_CHUNK)]
            for session_id in ids:
                yield session_id
            if len(ids) < SWEEP_CHUNK:
                return
            after = ids[-1]

    async def census(self) -> BackendCensus:
        """Live sessions and their messages counted exactly; ``storage_bytes`` is the size of the
        schema's tables with their indexes and TOAST."""
        sessions, messages, used = await self._row("census", self._now(), self.schema)
        return BackendCensus(sessions, messages, used, expirations=self.expirations)

    async def sweep(self) -> int:
        """Delete every expired session now (and expired leases and index entries); returns how
        many live sessions expired. In chunks, each its own short transaction that skips rows
        another transaction holds."""
        removed = 0
        while True:
            rows, expired = await self._row("sweep", self._now(), SWEEP_CHUNK)
            removed += int(expired)
            self.expirations += expired
            if rows < SWEEP_CHUNK:
                return removed

    async def drop_schema(self) -> None:
        """Remove the schema, with every table and function in it: all of its history."""
        await self._run(lambda connection: connection.execute(f"DROP SCHEMA {self.schema} CASCADE"))
        self._ready = False

    def error_kind(self, exc: Exception) -> ErrorKind | None:
        return error_kind(exc)

    async def aclose(self) -> None:
        """Close the pool if the store made it (a pool given is the caller's). Idempotent."""
        pool, self._ready = self._pool, False
        if self._owns_pool and pool is not None:
            self._pool = None
            await pool.close()
