"""The SQLite store: history in one file that survives a restart, with no server to run."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from chatstate._checks import (
    check_limit,
    check_max_messages,
    check_on_corrupt,
    check_session_id,
    check_ttl,
)
from chatstate._compression import Compression
from chatstate._periodic import keep_sweeping
from chatstate.errors import (
    ConfigurationError,
    LeaseTimeoutError,
    StateLoadError,
    StateSaveError,
    StoreError,
    UnsupportedFormatError,
)
from chatstate.messages import Message, as_messages
from chatstate.metrics import Recorder, StateMetrics, clock
from chatstate.stores._codec import (
    DEFAULT_COMPRESS_OVER,
    DEFAULT_MAX_MESSAGE_BYTES,
    EntryCodec,
    decode_entry,
)
from chatstate.stores.base import TTL, Fold, SessionSnapshot, StateStore, check_snapshot, run_fold

__all__ = ["SQLiteStateStore"]

logger = logging.getLogger("chatstate.sqlite")

T = TypeVar("T")

SCHEMA_VERSION = 1
"""The layout of the tables; a file written by a newer layout is refused, never misread."""

# Sessions: messages seq head..tail-1 are kept; expires_at in Unix time (NULL: never); version
# changes with every write, generation with every save, fold and re-creation.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chatstate_meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chatstate_sessions (
    id TEXT PRIMARY KEY,
    head INTEGER NOT NULL,
    tail INTEGER NOT NULL,
    expires_at REAL,    
    version INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    summary BLOB
);
CREATE INDEX IF NOT EXISTS chatstate_sessions_expiry
    ON chatstate_sessions (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS chatstate_messages (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    entry BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chatstate_conversations (
    user_session TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    last_active REAL NOT NULL,
    deadline REAL,
    PRIMARY KEY (user_session, conversation_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chatstate_leases (
    session_id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""

_ROW = "SELECT head, tail, expires_at, version, generation, summary FROM chatstate_sessions "
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_SWEEP_CHUNK = 500
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

# A session's row: head, tail, expires_at, version, generation, summary.
_Row = tuple[int, int, float | None, int, int, bytes | None]


class SQLiteStateStore(StateStore):
    """History in a SQLite database file: it survives restarts, needs no server, and may be shared
    by several processes on one machine.

    ``SQLiteStateStore("chat.db")`` (or ``open_store("sqlite:///chat.db")``) creates the file
    and its tables on first use; ``":memory:"`` keeps a private database in memory. Every call
    is one transaction, run on a thread of the store's own so that no file I/O blocks the event
    loop: an append inserts the messages, trims the session to ``max_messages`` and sets its
    expiry in one transaction, so a crash or a concurrent writer never sees half of it. The
    database runs in WAL mode: readers do not wait for the writer.

    - ``busy_timeout`` (default 30 s): how long a write waits for another process's write
      before failing with StateSaveError.
    - ``synchronous`` (default ``"NORMAL"``): SQLite's durability setting. In WAL mode
      ``"NORMAL"`` loses no committed turn when the app crashes, only, at worst, the last turns
      when the machine loses power; ``"FULL"`` syncs every commit to disk (slower).
    - ``sweep_interval`` (default 60 s): seconds between background sweeps that delete expired
      sessions (expired sessions are never returned in any case). ``None`` turns it off;
      :meth:`sweep` runs one by hand.
    - ``clock``: the wall clock, Unix seconds (expiry is shared across processes and restarts),
      to be replaced in tests.
    - ``on_corrupt``, ``compress_over``, ``compression``, ``max_message_bytes`` and
      ``message_cache_bytes`` as for :class:`~chatstate.stores.redis.RedisStateStore`: entries
      are stored in the same format.

    Besides the :class:`~chatstate.StateStore` protocol it keeps summaries
    (:class:`~chatstate.stores.base.SessionSummaries`), numbers writes
    (:class:`~chatstate.stores.base.VersionedStore`), holds cross-process turn leases
    (:class:`~chatstate.stores.base.SessionLeases`), snapshots and restores whole sessions
    (:class:`~chatstate.stores.base.SessionTransfer`) and indexes a user's conversations.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL",
        sweep_interval: float | None = 60.0,
        clock: Callable[[], float] = time.time,
        on_corrupt: Literal["skip", "raise"] = "skip",
        compress_over: int | None = DEFAULT_COMPRESS_OVER,
        compression: Compression = "auto",
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        message_cache_bytes: int = 8 << 20,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ConfigurationError(f"path must be a str or a path, got {type(path).__name__}")
        self.path = os.fspath(path)
        if not isinstance(self.path, str) or not self.path:
            raise ConfigurationError(f"path must name a file, got {path!r}")
        self._busy_timeout = check_ttl(busy_timeout, name="busy_timeout") or 0.0
        if synchronous not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}"
            )
        self._synchronous = synchronous
        if sweep_interval is not None:
            check_ttl(sweep_interval, name="sweep_interval")
        self._sweep_interval = sweep_interval
        self._on_corrupt = check_on_corrupt(on_corrupt)
        self._codec = EntryCodec.for_store(
            compress_over=compress_over,
            compression=compression,
            message_cache_bytes=message_cache_bytes,
            max_message_bytes=max_message_bytes,
        )
        self._clock = clock
        # One thread owns the connection: every call is one job on it, a whole transaction.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="chatstate-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        self._sweeper: asyncio.Task[None] | None = None
        self._recorder = Recorder()
        self.expirations = 0
        """Expired sessions deleted (by a sweep, or by a write that found them expired)."""
        self.corrupt_entries = 0
        """Entries skipped because they could not be decoded."""

    def __repr__(self) -> str:
        return f"SQLiteStateStore({self.path!r})"

    # -- the protocol ----------------------------------------------------------------------------

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        return (await self.load_versioned(session_id, limit=limit))[0]

    async def load_versioned(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], int]:
        """:meth:`load`, and the session's version when it was read (0: no session)."""
        row, entries = await self._read(session_id, limit)
        self._recorder.loads += 1
        return self._decode(entries, session_id), row[3] if row is not None else 0

    async def load_with_summary(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], Message | None]:
        """:meth:`load`, and the session's summary (see
        :class:`~chatstate.stores.base.SessionSummaries`), in one transaction."""
        row, entries = await self._read(session_id, limit)
        self._recorder.loads += 1
        messages = self._decode(entries, session_id)
        return messages, self._summary(row, session_id) if messages else None

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        session_id = check_session_id(session_id)
        new = as_messages(messages)
        seconds = check_ttl(ttl)
        entries = self._codec.encode(new)
        await self._write(
            self._save_tx, session_id, entries, seconds, messages=new, action="saving"
        )
        self._recorder.saves += 1

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        return (
            await self.append_versioned(session_id, messages, max_messages=max_messages, ttl=ttl)
        )[0]

    async def append_versioned(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> tuple[int, int]:
        """:meth:`append`, and the session's version after it."""
        session_id = check_session_id(session_id)
        new = as_messages(messages)
        bound = check_max_messages(max_messages)
        seconds = check_ttl(ttl)
        entries = self._codec.encode(new)
        if not entries:
            row, _ = await self._read(session_id, 0)
            return (row[1] - row[0], row[3]) if row is not None else (0, 0)
        length, version, trimmed = await self._write(
            self._append_tx, session_id, entries, bound, seconds, messages=new, action="appending"
        )
        self._recorder.appends += 1
        self._recorder.trims += trimmed
        return length, version

    async def delete(self, session_id: str) -> bool:
        session_id = check_session_id(session_id)
        existed = await self._write(self._delete_tx, session_id, action="deleting")
        self._recorder.deletes += 1
        return existed

    async def version(self, session_id: str) -> int:
        """The session's version: a number that changes with every write (0: no session)."""
        row, _ = await self._read(session_id, 0)
        return row[3] if row is not None else 0

    async def exists(self, session_id: str) -> bool:
        """Whether the session holds history now."""
        row, _ = await self._read(session_id, 0)
        return row is not None

    async def compact(self, session_id: str, fold: Fold) -> bool:
        """Fold the oldest messages into the session's summary (see
        :class:`~chatstate.stores.base.SessionSummaries`): read in one transaction, committed in
        another only if no save, fold or delete came between."""
        row, entries = await self._read(session_id, None)
        if row is None or not entries:
            return False
        history = self._decode(entries, session_id)
        if len(history) != len(entries):
            return False  # corrupt entries skipped: the seqs no longer match the history
        result = await run_fold(fold, history, self._summary(row, session_id))
        if result is None:
            return False
        count, summary = result
        (entry,) = self._codec.encode([summary])
        return await self._write(
            self._compact_tx, session_id, row, count, entry, action="compacting"
        )

    async def snapshot(self, session_id: str) -> SessionSnapshot | None:
        """The whole session as it stands, read in one transaction (see
        :class:`~chatstate.stores.base.SessionTransfer`); None if there is none."""
        row, entries = await self._read(session_id, None)
        if row is None:
            return None
        ttl = None if row[2] is None else max(row[2] - self._clock(), 1e-3)
        # A damaged entry raises rather than being skipped: a copy must not lose it silently.
        messages, _ = self._codec.decode(entries, on_corrupt="raise", session_id=session_id)
        return SessionSnapshot(messages, self._summary(row, session_id, strict=True), ttl)

    async def restore(
        self, session_id: str, snapshot: SessionSnapshot, *, overwrite: bool = False
    ) -> bool:
        """Write a whole session in one transaction; an existing one only with ``overwrite``
        (see :class:`~chatstate.stores.base.SessionTransfer`)."""
        session_id = check_session_id(session_id)
        messages, summary, seconds = check_snapshot(snapshot)
        entries = self._codec.encode(messages)
        summary_entry = self._codec.encode([summary])[0] if summary is not None else None
        return await self._write(
            self._restore_tx,
            session_id,
            entries,
            summary_entry,
            seconds,
            bool(overwrite),
            messages=messages,
            action="restoring",
        )

    @contextlib.asynccontextmanager
    async def lease(self, session_id: str, *, ttl: float, timeout: float) -> AsyncIterator[None]:
        """Hold the session's turn lease across every process using this file (see
        :class:`~chatstate.stores.base.SessionLeases`): a row with a random token and an expiry,
        renewed every third of ``ttl`` while held (a failed renewal is logged and tried again),
        deleted on exit."""
        session_id = check_session_id(session_id)
        seconds = check_ttl(ttl, name="ttl")
        if seconds is None:
            raise ConfigurationError(
                "a lease needs a ttl: seconds, after which a dead holder's ends"
            )
        token = secrets.token_hex(16)
        deadline = time.monotonic() + max(0.0, timeout)
        pause = 0.002
        while not await self._write(
            self._take_lease_tx, session_id, token, seconds, action="lease"
        ):
            if time.monotonic() >= deadline:
                raise LeaseTimeoutError(
                    f"the lease of session {session_id!r} was held by another turn for more "
                    f"than {timeout:g} s",
                    session_id=session_id,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

        async def renew() -> None:
            while True:
                await asyncio.sleep(seconds / 3)
                try:
                    await self._write(
                        self._renew_lease_tx, session_id, token, seconds, action="lease"
                    )
                except StoreError:
                    logger.warning("renewing the lease of session %r failed", session_id)

        renewer = asyncio.create_task(renew(), name="chatstate-sqlite-lease")
        try:
            yield
        finally:
            renewer.cancel()
            await asyncio.wait([renewer])  # never swallows a cancellation of the caller's own
            try:
                await asyncio.shield(
                    self._write(self._release_lease_tx, session_id, token, action="lease")
                )
            except StoreError:
                logger.warning(
                    "releasing the lease of session %r failed; it ends in %g s", session_id, seconds
                )

    async def session_ids(self) -> AsyncIterator[str]:
        """The ids of the live sessions, in id order, read a chunk at a time."""
        after = ""
        while True:
            ids = await self._run(self._ids_tx, after, action="listing", error=StateLoadError)
            for session_id in ids:
                yield session_id
            if len(ids) < _SWEEP_CHUNK:
                return
            after = ids[-1]

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        """Record a conversation of a user (see :class:`~chatstate.sessions.Conversations`)."""
        await self._write(
            self._index_tx,
            check_session_id(user_session),
            conversation_id,
            now,
            None if ttl is None else now + ttl,
            action="indexing",
        )

    async def list_conversations(
        self, user_session: str, *, now: float, offset: int, limit: int
    ) -> list[tuple[str, float]]:
        """A user's live conversations, most recent first (see ``Conversations.list``)."""
        return await self._write(
            self._list_conversations_tx,
            check_session_id(user_session),
            now,
            offset,
            limit,
            action="listing",
        )

    async def drop_conversations(self, user_session: str) -> list[str]:
        """Forget a user's index; returns the conversation ids it held."""
        return await self._write(
            self._drop_conversations_tx, check_session_id(user_session), action="indexing"
        )

    async def metrics(self) -> StateMetrics:
        """This store's :class:`~chatstate.metrics.StateMetrics`: sessions and messages counted
        exactly (after a sweep); ``storage_used`` is the database's used pages (the sessions'
        tables and indexes, and whatever else the file holds); latencies of this instance's
        calls."""
        await self.sweep()
        sessions, messages, used = await self._run(
            self._census_tx, action="measuring", error=StateLoadError
        )
        return self._recorder.metrics(
            active_sessions=sessions,
            messages=messages,
            storage_used=used,
            expirations=self.expirations,
            evictions=0,
        )

    async def sweep(self) -> int:
        """Delete every expired session now (and expired entries of the conversation index);
        returns how many sessions. Works in chunks, each its own short transaction."""
        removed = 0
        while True:
            count: int = await self._run(
                self._transaction, self._sweep_tx, action="sweeping", error=StoreError
            )
            removed += count
            if count < _SWEEP_CHUNK:
                return removed

    async def aclose(self) -> None:
        """Stop the sweep and close the database. Idempotent; calls after it raise StoreError."""
        if self._closed:
            return
        self._closed = True
        task, self._sweeper = self._sweeper, None
        if task is not None and not task.done():
            task.cancel()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=False)

    # -- running on the store's thread -----------------------------------------------------------

    async def _run(
        self,
        job: Callable[..., T],
        *args: Any,
        action: str,
        error: type[StoreError],
        messages: Sequence[Message] = (),
        session_id: str | None = None,
    ) -> T:
        if self._closed:
            raise StoreError(f"{self!r} is closed", session_id=session_id)
        started = clock()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(self._job, job, *args)
            )
        except sqlite3.Error as exc:
            self._recorder.errors += 1
            text = f"SQLite failed {action} session {session_id!r} in {self.path!r}: {exc}"
            if error is StateSaveError:
                raise StateSaveError(text, session_id=session_id, messages=messages) from exc
            raise error(text, session_id=session_id) from exc
        window = (
            self._recorder.load_window if error is StateLoadError else self._recorder.save_window
        )
        window.append(clock() - started)
        return result

    async def _write(
        self,
        job: Callable[..., T],
        session_id: str,
        *args: Any,
        action: str,
        messages: Sequence[Message] = (),
    ) -> T:
        if not self._closed and self._sweep_interval is not None:
            self._sweeper = keep_sweeping(
                self._sweeper, self, self._sweep_interval, "chatstate-sqlite-sweep"
            )
        return await self._run(
            self._transaction,
            job,
            session_id,
            *args,
            action=action,
            error=StateSaveError,
            messages=messages,
            session_id=session_id,
        )

    async def _read(self, session_id: str, limit: int | None) -> tuple[_Row | None, list[bytes]]:
        """The session's row (None if it does not exist or has expired) and its newest ``limit``
        entries, read in one transaction."""
        session_id = check_session_id(session_id)
        limit = check_limit(limit)
        return await self._run(
            self._read_tx,
            session_id,
            limit,
            action="loading",
            error=StateLoadError,
            session_id=session_id,
        )

    def _job(self, job: Callable[..., T], *args: Any) -> T:
        connection = self._connection
        if connection is None:
            connection = self._connection = self._connect()
        return job(connection, *args)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._enable_wal(connection)
            connection.execute(f"PRAGMA synchronous={self._synchronous}")
            connection.execute("BEGIN IMMEDIATE")  # two processes creating the tables take turns
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(
                "INSERT OR IGNORE INTO chatstate_meta VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
            (schema,) = connection.execute(
                "SELECT value FROM chatstate_meta WHERE name = 'schema'"
            ).fetchone()
            connection.execute("COMMIT")
        except BaseException:
            connection.close()
            raise
        if schema > SCHEMA_VERSION:
            connection.close()
            raise UnsupportedFormatError(
                f"{self.path!r} was written by a newer chatstate (schema {schema}; this one "
                f"knows up to {SCHEMA_VERSION}): upgrade chatstate to use it"
            )
        return connection

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        """Switch the file to WAL (a no-op once it is). The switch needs a lock that another
        process opening or writing the file may hold, and SQLite answers "locked" at once there,
        without waiting out the busy timeout: so wait here, up to ``busy_timeout``."""
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.002
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)  # on the store's own thread, never the event loop's
            pause = min(pause * 2, 0.05)

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _transaction(self, connection: sqlite3.Connection, job: Callable[..., T], *args: Any) -> T:
        connection.execute("BEGIN IMMEDIATE")  # takes the write lock now: no upgrade deadlock
        try:
            result = job(connection, *args)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return result

    # -- the transactions (on the store's thread) ------------------------------------------------

    def _read_tx(
        self, connection: sqlite3.Connection, session_id: str, limit: int | None
    ) -> tuple[_Row | None, list[bytes]]:
        connection.execute("BEGIN")  # one snapshot for both reads
        try:
            row: _Row | None = connection.execute(
                _ROW + "WHERE id = ? AND " + _LIVE, (session_id, self._clock())
            ).fetchone()
            if row is None or limit == 0:
                return row, []
            head, tail = row[0], row[1]
            start = head if limit is None else max(head, tail - limit)
            entries = [
                entry
                for (entry,) in connection.execute(
                    "SELECT entry FROM chatstate_messages WHERE session_id = ? AND seq >= ? "
                    "ORDER BY seq",
                    (session_id, start),
                )
            ]
            return row, entries
        finally:
            connection.execute("COMMIT")

    def _live_row(self, connection: sqlite3.Connection, session_id: str) -> _Row | None:
        """The session's row inside a write; an expired session is deleted here."""
        row: _Row | None = connection.execute(_ROW + "WHERE id = ?", (session_id,)).fetchone()
        if row is not None and row[2] is not None and row[2] <= self._clock():
            self._drop(connection, session_id)
            self.expirations += 1
            return None
        return row

    @staticmethod
    def _drop(connection: sqlite3.Connection, session_id: str) -> None:
        connection.execute("DELETE FROM chatstate_messages WHERE session_id = ?", (session_id,))
        connection.execute("DELETE FROM chatstate_sessions WHERE id = ?", (session_id,))

    def _expiry(self, seconds: float | None) -> float | None:
        return None if seconds is None else self._clock() + seconds

    @staticmethod
    def _insert(
        connection: sqlite3.Connection, session_id: str, first: int, entries: Sequence[bytes]
    ) -> None:
        connection.executemany(
            "INSERT INTO chatstate_messages (session_id, seq, entry) VALUES (?, ?, ?)",
            [(session_id, first + index, entry) for index, entry in enumerate(entries)],
        )

    def _append_tx(
        self,
        connection: sqlite3.Connection,
        session_id: str,
        entries: list[bytes],
        bound: int | None,
        seconds: float | None,
    ) -> tuple[int, int, bool]:
        row = self._live_row(connection, session_id)
        count = len(entries)
        # Entries that the bound would trim at once are never written.
        kept = entries if bound is None or count <= bound else entries[count - bound :]
        if row is None:
            head = tail = 0
            version, generation = _seed(), _seed()
        else:
            head, tail, _, version, generation, _ = row
        self._insert(connection, session_id, tail + count - len(kept), kept)
        tail += count
        trimmed = bound is not None and tail - head > bound
        if trimmed:
            assert bound is not None
            head = tail - bound
            connection.execute(
                "DELETE FROM chatstate_messages WHERE session_id = ? AND seq < ?",
                (session_id, head),
            )
        version += 1
        if row is None:
            connection.execute(
                "INSERT INTO chatstate_sessions VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (session_id, head, tail, self._expiry(seconds), version, generation),
            )
        else:
            connection.execute(
                "UPDATE chatstate_sessions SET head = ?, tail = ?, expires_at = ?, version = ? "
                "WHERE id = ?",
                (head, tail, self._expiry(seconds), version, session_id),
            )
        return tail - head, version, trimmed

    def _put(
        self,
        connection: sqlite3.Connection,
        session_id: str,
        row: _Row | None,
        entries: list[bytes],
        summary: bytes | None,
        seconds: float | None,
    ) -> None:
        """Replace the whole session (what save and restore share)."""
        connection.execute("DELETE FROM chatstate_messages WHERE session_id = ?", (session_id,))
        if not entries:
            connection.execute("DELETE FROM chatstate_sessions WHERE id = ?", (session_id,))
            return
        self._insert(connection, session_id, 0, entries)
        version, generation = (row[3] + 1, row[4] + 1) if row is not None else (_seed(), _seed())
        connection.execute(
            "INSERT OR REPLACE INTO chatstate_sessions VALUES (?, 0, ?, ?, ?, ?, ?)",
            (session_id, len(entries), self._expiry(seconds), version, generation, summary),
        )

    def _save_tx(
        self,
        connection: sqlite3.Connection,
        session_id: str,
        entries: list[bytes],
        seconds: float | None,
    ) -> None:
        self._put(
            connection, session_id, self._live_row(connection, session_id), entries, None, seconds
        )

    def _restore_tx(
        self,
        connection: sqlite3.Connection,
        session_id: str,
        entries: list[bytes],
        summary: bytes | None,
        seconds: float | None,
        overwrite: bool,
    ) -> bool:
        row = self._live_row(connection, session_id)
        if row is not None and not overwrite:
            return False
        self._put(connection, session_id, row, entries, summary, seconds)
        return True

    def _delete_tx(self, connection: sqlite3.Connection, session_id: str) -> bool:
        row = self._live_row(connection, session_id)
        if row is not None:
            self._drop(connection, session_id)
        return row is not None

    def _compact_tx(
        self,
        connection: sqlite3.Connection,
        session_id: str,
        read: _Row,
        count: int,
        summary: bytes,
    ) -> bool:
        row = self._live_row(connection, session_id)
        if row is None or row[4] != read[4]:
            return False  # saved, folded, deleted or expired meanwhile
        head, read_head, read_tail = row[0], read[0], read[1]
        if head >= read_tail:
            return False  # turns trimmed everything that was read
        # Turns meanwhile appended (kept) and trimmed from the head (not removed twice).
        cut = max(head, read_head + count)
        connection.execute(
            "DELETE FROM chatstate_messages WHERE session_id = ? AND seq < ?", (session_id, cut)
        )
        connection.execute(
            "UPDATE chatstate_sessions SET head = ?, summary = ?, version = version + 1, "
            "generation = generation + 1 WHERE id = ?",
            (cut, summary, session_id),
        )
        return True

    def _take_lease_tx(
        self, connection: sqlite3.Connection, session_id: str, token: str, seconds: float
    ) -> bool:
        now = self._clock()
        held = connection.execute(
            "SELECT 1 FROM chatstate_leases WHERE session_id = ? AND expires_at > ?",
            (session_id, now),
        ).fetchone()
        if held is not None:
            return False
        connection.execute(
            "INSERT OR REPLACE INTO chatstate_leases VALUES (?, ?, ?)",
            (session_id, token, now + seconds),
        )
        return True

    def _renew_lease_tx(
        self, connection: sqlite3.Connection, session_id: str, token: str, seconds: float
    ) -> None:
        connection.execute(
            "UPDATE chatstate_leases SET expires_at = ? WHERE session_id = ? AND token = ?",
            (self._clock() + seconds, session_id, token),
        )

    @staticmethod
    def _release_lease_tx(connection: sqlite3.Connection, session_id: str, token: str) -> None:
        connection.execute(
            "DELETE FROM chatstate_leases WHERE session_id = ? AND token = ?", (session_id, token)
        )

    @staticmethod
    def _index_tx(
        connection: sqlite3.Connection,
        user_session: str,
        conversation_id: str,
        now: float,
        deadline: float | None,
    ) -> None:
        connection.execute(
            "INSERT OR REPLACE INTO chatstate_conversations VALUES (?, ?, ?, ?)",
            (user_session, conversation_id, now, deadline),
        )

    @staticmethod
    def _list_conversations_tx(
        connection: sqlite3.Connection, user_session: str, now: float, offset: int, limit: int
    ) -> list[tuple[str, float]]:
        connection.execute(
            "DELETE FROM chatstate_conversations WHERE user_session = ? AND deadline <= ?",
            (user_session, now),
        )
        return connection.execute(
            "SELECT conversation_id, last_active FROM chatstate_conversations "
            "WHERE user_session = ? ORDER BY last_active DESC, conversation_id LIMIT ? OFFSET ?",
            (user_session, limit, offset),
        ).fetchall()

    @staticmethod
    def _drop_conversations_tx(connection: sqlite3.Connection, user_session: str) -> list[str]:
        ids = [
            conversation_id
            for (conversation_id,) in connection.execute(
                "SELECT conversation_id FROM chatstate_conversations WHERE user_session = ?",
                (user_session,),
            )
        ]
        connection.execute(
            "DELETE FROM chatstate_conversations WHERE user_session = ?", (user_session,)
        )
        return ids

    def _sweep_tx(self, connection: sqlite3.Connection) -> int:
        now = self._clock()
        expired = [
            session_id
            for (session_id,) in connection.execute(
                "SELECT id FROM chatstate_sessions WHERE expires_at <= ? LIMIT ?",
                (now, _SWEEP_CHUNK),
            )
        ]
        for session_id in expired:
            self._drop(connection, session_id)
        connection.execute("DELETE FROM chatstate_conversations WHERE deadline <= ?", (now,))
        connection.execute("DELETE FROM chatstate_leases WHERE expires_at <= ?", (now,))
        self.expirations += len(expired)
        return len(expired)

    def _ids_tx(self, connection: sqlite3.Connection, after: str) -> list[str]:
        return [
            session_id
            for (session_id,) in connection.execute(
                "SELECT id FROM chatstate_sessions WHERE id > ? AND " + _LIVE + " ORDER BY id "
                "LIMIT ?",
                (after, self._clock(), _SWEEP_CHUNK),
            )
        ]

    def _census_tx(self, connection: sqlite3.Connection) -> tuple[int, int, int]:
        sessions, messages = connection.execute(
            "SELECT count(*), coalesce(sum(tail - head), 0) FROM chatstate_sessions WHERE " + _LIVE,
            (self._clock(),),
        ).fetchone()
        (pages,) = connection.execute("PRAGMA page_count").fetchone()
        (free,) = connection.execute("PRAGMA freelist_count").fetchone()
        (size,) = connection.execute("PRAGMA page_size").fetchone()
        return sessions, messages, (pages - free) * size

    # -- on the event loop -----------------------------------------------------------------------

    def _decode(self, entries: Sequence[bytes], session_id: str) -> list[Message]:
        messages, skipped = self._codec.decode(
            entries, on_corrupt=self._on_corrupt, session_id=session_id
        )
        if skipped:
            self.corrupt_entries += skipped
            logger.warning("skipped %d corrupt entries of session %r", skipped, session_id)
        return messages

    def _summary(
        self, row: _Row | None, session_id: str, *, strict: bool = False
    ) -> Message | None:
        if row is None or row[5] is None:
            return None
        try:
            return decode_entry(row[5])
        except StoreError as exc:
            if strict or self._on_corrupt == "raise":
                exc.session_id = session_id
                raise
            self.corrupt_entries += 1
            logger.warning("skipped the corrupt summary of session %r", session_id)
            return None


def _seed() -> int:
    """A random starting version: a session deleted and written again never repeats one."""
    return secrets.randbits(48)
