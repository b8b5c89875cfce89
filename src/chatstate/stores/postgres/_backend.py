"""The PostgreSQL backend: every call one statement, one round trip, on a pooled connection.

A plain load is one ``SELECT`` (the newest entries of a live session as one array); every write
is one call of a function of the store's schema (``schema.sql``, ``editing.sql``; the other
statements are in ``_queries``), which runs its whole
transaction on the server: the write-id check, the lease's fence, the insert, the trim, the
expiry, the version, and, when one is due, a chunk of the expiry sweep. A write refused by its
fence raises SQLSTATE ``CSFEN`` there, so nothing of it commits.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import anyio
import asyncpg

from chatstate.errors import ChatStateError
from chatstate.stores._backend import (
    BackendCensus,
    EditOutcome,
    ErrorKind,
    Fenced,
    Page,
    Popped,
    RawSession,
    Written,
)
from chatstate.stores._writes import DELETED_IDS_TTL
from chatstate.stores.postgres._batch import AppendBatcher, Item, Row
from chatstate.stores.postgres._errors import FENCED, NotSent, error_kind
from chatstate.stores.postgres._queries import QUERIES
from chatstate.stores.postgres._schema import migrate

__all__ = ["SWEEP_CHUNK", "PostgresBackend", "no_reset"]

SWEEP_CHUNK = 500
"""Sessions deleted by one chunk of a sweep, and ids read by one step of a listing."""

_T = TypeVar("_T")


async def no_reset(connection: object) -> None:
    """Give ``asyncpg.create_pool(reset=no_reset)``: no reset of a connection given back to the
    pool (the store leaves no session state on it), which saves asyncpg's reset query, a round
    trip, on every release."""


class PostgresBackend:
    """The :class:`~chatstate.stores.Backend` of
    :class:`~chatstate.stores.postgres.PostgresStateStore`: a pool (given, or made from ``dsn``
    on first use), the tables and functions of ``schema`` (created or migrated on first use)."""

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
        self.schema = schema
        self.dsn = dsn
        self._pool = pool
        self._pool_options = pool_options or {}
        self._owns_pool = pool is None
        self._ready = False
        self._starting = anyio.Lock()
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._next_sweep = 0.0
        self._sql = {name: query.format(s=schema) for name, query in QUERIES.items()}
        self.expirations = 0
        """Expired sessions deleted by this instance's sweeps."""
        self.batcher = AppendBatcher(self._append_one, self._append_many) if batch_appends else None
        """What joins the appends of concurrent callers (None: every append alone)."""

    def __repr__(self) -> str:
        return f"PostgresBackend(schema={self.schema!r})"

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The connection pool (None until an owned one is made)."""
        return self._pool

    def _now(self) -> float | None:
        """The time a call runs at: the store's clock, or None for the server's."""
        return None if self._clock is None else self._clock()

    async def _start(self) -> asyncpg.Pool:
        """The pool, made if the store owns it, and the layout, created or migrated."""
        async with self._starting:
            if self._pool is None:
                options = {"min_size": 1, "max_size": 10, "reset": no_reset}
                try:
                    self._pool = await asyncpg.create_pool(
                        self.dsn, **{**options, **self._pool_options}
                    )
                except Exception as exc:
                    raise NotSent(f"could not connect to PostgreSQL: {exc}") from exc
            if not self._ready:
                connection = await self._acquire(self._pool)
                try:
                    await migrate(connection, self.schema)
                except ChatStateError:  # a layout of a newer chatstate
                    raise
                except BaseException as exc:
                    connection.terminate()
                    if not isinstance(exc, Exception):
                        raise
                    # The call itself was never sent: nothing of it was applied.
                    raise NotSent(f"the store's schema could not be set up: {exc!r}") from exc
                finally:
                    await self._pool.release(connection)
                self._ready = True
            return self._pool

    async def _acquire(self, pool: asyncpg.Pool) -> Any:
        try:
            return await pool.acquire()
        except Exception as exc:
            raise NotSent(f"no PostgreSQL connection could be had: {exc}") from exc

    async def _run(self, call: Callable[[Any], Awaitable[_T]]) -> _T:
        """``call`` on a connection of the pool, given back at the end."""
        pool = self._pool if self._ready else await self._start()
        assert pool is not None
        connection = await self._acquire(pool)
        try:
            return await call(connection)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == FENCED:
                raise Fenced(str(exc)) from exc
            if exc.severity_en != "ERROR":  # FATAL, PANIC: the server is ending the connection
                connection.terminate()
            raise
        except BaseException:
            # Lost, timed out, cancelled, or in a state asyncpg cannot go on from: never given to
            # the next caller as it is (the pool makes a new connection in its place).
            connection.terminate()
            raise
        finally:
            await pool.release(connection)

    async def _row(self, name: str, *args: object) -> Any:
        query = self._sql[name]
        return await self._run(lambda connection: connection.fetchrow(query, *args))

    async def _value(self, name: str, *args: object) -> Any:
        query = self._sql[name]
        return await self._run(lambda connection: connection.fetchval(query, *args))

    async def _rows(self, name: str, *args: object) -> list[Any]:
        query = self._sql[name]
        return await self._run(lambda connection: connection.fetch(query, *args))

    def _sweep_chunk(self) -> int:
        """A chunk of the sweep to run in this write, when one is due (once per interval)."""
        if self._sweep_interval is None:
            return 0
        now = time.time() if self._clock is None else self._clock()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + self._sweep_interval
        return SWEEP_CHUNK

    # -- sessions --------------------------------------------------------------------------------

    async def read(
        self,
        session_id: str,
        *,
        limit: int | None,
        summary: bool,
        touch: float | None,
        numbers: bool,
    ) -> Page[bytes]:
        if not (numbers or summary or touch):
            entries = await self._value("load", session_id, limit, self._now())
            return Page([] if entries is None else entries, 0)
        if touch is None:
            row = await self._row("read", session_id, limit, self._now(), summary)
        else:
            row = await self._row("touch", session_id, limit, self._now(), summary, touch)
        if row is None:
            return Page([], 0)
        head, tail, missing, version, generation, kept, entries, seqs = row
        if seqs is not None:  # gaps: each entry's number
            first = seqs[0] if seqs else tail
            return Page(entries, first, kept, version, generation, tail - head - missing, seqs)
        start = head if limit is None else max(head, tail - limit)
        return Page(entries, start, kept, version, generation, tail - head)

    async def append(
        self,
        session_id: str,
        entries: Sequence[bytes],
        *,
        max_entries: int | None,
        ttl: float | None,
        write_id: str,
        fence: str | None,
    ) -> Written:
        item = (session_id, entries, max_entries, ttl, write_id, fence)
        if self.batcher is None:
            length, version, trimmed, applied, fenced = await self._append_one(item)
        else:
            length, version, trimmed, applied, fenced = await self.batcher.append(item)
        if fenced:
            raise Fenced(f"the lease of session {session_id!r} is not held by this token")
        return Written(length, version, trimmed, applied)

    async def _append_one(self, item: Item) -> Row:
        row = await self._row("append", *item, self._now(), self._sweep_chunk())
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
    ) -> Written | None:
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
        entries, summary, left, numbers = row
        return RawSession(entries, summary, None if left is None else max(left, 1e-3), numbers)

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
        self, user_session: str, *, now: float, offset: int, limit: int
    ) -> list[tuple[str, float]]:
        rows = await self._rows("list", user_session, now, limit, offset)
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
