"""The SQLite backend, and the SQLite store: the store core over it."""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Literal

from chatstate._checks import check_ttl
from chatstate._compression import Compression
from chatstate.errors import ConfigurationError
from chatstate.stores._backend import (
    KEEP,
    BackendCensus,
    EditOutcome,
    ErrorKind,
    Keep,
    Page,
    Popped,
    RawSession,
    Written,
)
from chatstate.stores._codec import DEFAULT_COMPRESS_OVER, DEFAULT_MAX_MESSAGE_BYTES, EntryCodec
from chatstate.stores._core import BackendStore
from chatstate.stores._encryption import Encryption
from chatstate.stores._events import Hook
from chatstate.stores._near_cache import NearCache
from chatstate.stores.sqlite._conversations import (
    drop_conversations,
    index_conversation,
    list_conversations,
)
from chatstate.stores.sqlite._editing import edit, read_range
from chatstate.stores.sqlite._meta import write_meta
from chatstate.stores.sqlite._pop import pop
from chatstate.stores.sqlite._schema import SYNCHRONOUS, connect
from chatstate.stores.sqlite._thread import StoreThread
from chatstate.stores.sqlite._transactions import SWEEP_CHUNK, Transactions

__all__ = ["SQLiteBackend", "SQLiteStateStore"]

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

# The result codes of a write that certainly did not happen: the file was locked for longer than
# busy_timeout, or could not be opened.
_UNAVAILABLE = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN})


class SQLiteBackend:
    """Entries in a SQLite file (see :mod:`chatstate.stores.sqlite._schema` for its tables),
    every call one transaction on a thread of its own. See :class:`SQLiteStateStore`."""

    name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        synchronous: Synchronous = "NORMAL",
        sweep_interval: float | None = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ConfigurationError(f"path must be a str or a path, got {type(path).__name__}")
        self.path = os.fspath(path)
        if not isinstance(self.path, str) or not self.path:
            raise ConfigurationError(f"path must name a file, got {path!r}")
        timeout = check_ttl(busy_timeout, name="busy_timeout") or 0.0
        if synchronous not in SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS)}, got {synchronous!r}"
            )
        if sweep_interval is not None:
            sweep_interval = check_ttl(sweep_interval, name="sweep_interval")
        self._tx = Transactions(clock=clock, sweep_interval=sweep_interval)
        self._thread = StoreThread(
            functools.partial(connect, self.path, busy_timeout=timeout, synchronous=synchronous),
            name="chatstate-sqlite",
            closed=f"the SQLite store of {self.path!r} is closed",
        )

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.path!r})"

    @property
    def expirations(self) -> int:
        return self._tx.expirations

    async def read(
        self,
        session_id: str,
        *,
        limit: int | None,
        summary: bool,
        touch: float | None,
        numbers: bool = True,
        meta: bool = False,
    ) -> Page[bytes]:
        return await self._thread.run(self._tx.read, session_id, limit, summary, touch, meta)

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
        return await self._thread.run(
            self._tx.append, session_id, entries, max_entries, ttl, write_id, fence, meta
        )

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
        return await self._thread.run(
            self._tx.replace,
            session_id,
            entries,
            summary,
            ttl,
            overwrite,
            write_id,
            fence,
            numbers,
            meta,
        )

    async def delete(self, session_id: str, *, write_id: str, fence: str | None) -> bool:
        return await self._thread.run(self._tx.delete, session_id, write_id, fence)

    async def pop(
        self, session_id: str, count: int, *, write_id: str, fence: str | None
    ) -> Popped[bytes]:
        return await self._thread.run(
            functools.partial(pop, self._tx), session_id, count, write_id, fence
        )

    async def compact(
        self, session_id: str, *, generation: int, before_seq: int, summary: bytes, write_id: str
    ) -> bool:
        return await self._thread.run(
            self._tx.compact, session_id, generation, before_seq, summary, write_id
        )

    async def read_range(
        self,
        session_id: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        touch: float | None,
    ) -> Page[bytes]:
        return await self._thread.run(
            functools.partial(read_range, self._tx), session_id, before, after, limit, touch
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
        return await self._thread.run(
            functools.partial(edit, self._tx),
            session_id,
            seq,
            entry,
            truncate,
            version,
            write_id,
            fence,
        )

    async def write_meta(
        self, session_id: str, meta: bytes | None, *, write_id: str, fence: str | None
    ) -> Written | None:
        return await self._thread.run(
            functools.partial(write_meta, self._tx), session_id, meta, write_id, fence
        )

    async def snapshot(self, session_id: str) -> RawSession[bytes] | None:
        return await self._thread.run(self._tx.snapshot, session_id)

    async def time_left(self, session_id: str) -> float | Literal[False] | None:
        return await self._thread.run(self._tx.time_left, session_id)

    async def acquire_lease(self, session_id: str, token: str, ttl: float) -> bool:
        return await self._thread.run(self._tx.acquire_lease, session_id, token, ttl)

    async def renew_lease(self, session_id: str, token: str, ttl: float) -> bool:
        return await self._thread.run(self._tx.renew_lease, session_id, token, ttl)

    async def release_lease(self, session_id: str, token: str) -> bool:
        return await self._thread.run(self._tx.release_lease, session_id, token)

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        deadline = None if ttl is None else now + ttl
        await self._thread.run(
            functools.partial(index_conversation, self._tx),
            user_session,
            conversation_id,
            now,
            deadline,
        )

    async def list_conversations(
        self,
        user_session: str,
        *,
        now: float,
        offset: int,
        limit: int,
        after: tuple[float, str] | None = None,
    ) -> list[tuple[str, float]]:
        return await self._thread.run(
            functools.partial(list_conversations, self._tx), user_session, now, offset, limit, after
        )

    async def drop_conversations(self, user_session: str) -> list[str]:
        return await self._thread.run(functools.partial(drop_conversations, self._tx), user_session)

    async def session_ids(self) -> AsyncIterator[str]:
        """The live sessions' ids in id order, read a chunk (one transaction) at a time."""
        after = ""
        while True:
            ids = await self._thread.run(self._tx.ids_after, after)
            for session_id in ids:
                yield session_id
            if len(ids) < SWEEP_CHUNK:
                return
            after = ids[-1]

    async def census(self) -> BackendCensus:
        """Sessions and messages counted exactly, after a sweep; ``storage_bytes`` is the
        database's pages in use (the sessions' tables and indexes, and whatever else the file
        holds)."""
        await self.sweep()
        sessions, messages, used = await self._thread.run(self._tx.census)
        return BackendCensus(sessions, messages, used, expirations=self._tx.expirations)

    def error_kind(self, exc: Exception) -> ErrorKind | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        code = getattr(exc, "sqlite_errorcode", None)  # extended: the primary code in its low byte
        if code is not None and code & 0xFF in _UNAVAILABLE:
            return "unavailable"  # rolled back: nothing of the call was written
        return "other"

    async def aclose(self) -> None:
        """Close the file and end the thread, after the calls already queued. Idempotent."""
        await self._thread.aclose()

    async def sweep(self) -> int:
        """Delete every expired session now (and expired leases and index entries); returns
        how many sessions. Works in chunks, each its own short transaction."""
        removed = 0
        while True:
            count = await self._thread.run(self._tx.sweep)
            removed += count
            if count < SWEEP_CHUNK:
                return removed


class SQLiteStateStore(BackendStore[bytes]):
    """History in a SQLite database file: it survives restarts, needs no server, and may be shared
    by several processes on one machine. Every call is one transaction, on a thread of the store's
    own so that no file I/O blocks the event loop (asyncio or trio). How it works and what it keeps
    besides the messages: docs/stores/sqlite.md.

    :param path: the database file, created with its tables on first use; ``":memory:"``: a
        private database in memory.
    :param busy_timeout: seconds a write waits for another process's write before it fails with
        StateSaveError (nothing of it written).
    :param synchronous: SQLite's durability setting. ``"NORMAL"`` (WAL mode) loses no committed
        turn when the app crashes, at worst the last ones when the machine loses power;
        ``"FULL"`` syncs every commit to disk (slower).
    :param sweep_interval: expired sessions are never returned; a write deletes up to 500 of them,
        in its transaction, at most once per this many seconds (no background task; ``None``:
        never). :meth:`sweep` deletes every expired one now.
    :param clock: the wall clock in Unix seconds of expiry, leases and the sessions' times (shared
        across processes and restarts); tests give a fake one.
    :param on_corrupt: an entry that cannot be decoded is ``"skip"``-ped (logged, counted in
        ``corrupt_entries``) or ``"raise"``-s CorruptEntryError.
    :param compress_over: compress an entry whose JSON is longer than this many bytes, when that
        makes it smaller (``None``: never).
    :param compression: ``"auto"`` (zstd where the zstandard package is installed, else zlib),
        ``"zstd"`` or ``"zlib"``; entries record theirs (docs/stores/redis.md, Compression).
    :param max_message_bytes: refuse, with InvalidMessageError and nothing of the call stored, a
        message whose JSON is longer (default 1 MiB; ``None``: no limit).
    :param message_cache_bytes: bounds a cache of the messages of recent entries, so that a load
        decodes only the entries it has not seen (0: off).
    :param sliding_ttl: as for every store (:class:`~chatstate.stores.BackendStore`).
    :param encryption: seal every entry (:class:`~chatstate.Encryption`) before it reaches the
        file: nothing of the history is readable in it, its WAL or a backup.
    :param near_cache: as for every store (:class:`~chatstate.stores.BackendStore`).
    :param hooks: as for every store (:class:`~chatstate.stores.BackendStore`).
    """

    backend: SQLiteBackend

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        synchronous: Synchronous = "NORMAL",
        sweep_interval: float | None = 60.0,
        clock: Callable[[], float] = time.time,
        on_corrupt: Literal["skip", "raise"] = "skip",
        compress_over: int | None = DEFAULT_COMPRESS_OVER,
        compression: Compression = "auto",
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        message_cache_bytes: int = 8 << 20,
        sliding_ttl: float | None = None,
        encryption: Encryption | None = None,
        near_cache: NearCache | None = None,
        hooks: Sequence[Hook] = (),
    ) -> None:
        backend = SQLiteBackend(
            path,
            busy_timeout=busy_timeout,
            synchronous=synchronous,
            sweep_interval=sweep_interval,
            clock=clock,
        )
        codec = EntryCodec.for_store(
            compress_over=compress_over,
            compression=compression,
            message_cache_bytes=message_cache_bytes,
            max_message_bytes=max_message_bytes,
            encryption=encryption,
        )
        super().__init__(
            backend,
            codec=codec,
            on_corrupt=on_corrupt,
            sliding_ttl=sliding_ttl,
            near_cache=near_cache,
            hooks=hooks,
        )

    def __repr__(self) -> str:
        return f"SQLiteStateStore({self.path!r})"

    @property
    def path(self) -> str:
        """The database file (``":memory:"`` for a private in-memory database)."""
        return self.backend.path

    @property
    def expirations(self) -> int:
        """Expired sessions deleted (by a sweep, or by a write that found them expired)."""
        return self.backend.expirations

    async def sweep(self) -> int:
        """Delete every expired session now (and expired leases and index entries); returns
        how many sessions. Works in chunks, each its own short transaction."""
        return await self.backend.sweep()
