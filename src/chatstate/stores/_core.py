"""The store core: every public method of a store, written once over a :class:`Backend`.

Each call runs the same steps in the same order: check the input, encode through the codec, call
the backend inside one error mapper, decode, and report the operation (to the store's counters
and latency windows, and to every hook as a :class:`~chatstate.stores.StoreEvent`). A backend
only stores entries; a store built here on any backend has every capability of the built-in
ones: bounds, expiry, summaries, versions, snapshots, leases, the conversation index, metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any, Generic, Literal, NoReturn, Self, TypeVar

from chatstate._checks import (
    check_limit,
    check_max_messages,
    check_on_corrupt,
    check_session_id,
    check_ttl,
)
from chatstate._locks import KeyedLock
from chatstate.errors import (
    ChatStateError,
    StateLoadError,
    StateSaveError,
    StoreError,
    WrongTypeError,
)
from chatstate.messages import Message, as_messages
from chatstate.metrics import Recorder, StateMetrics
from chatstate.stores._backend import Backend, Page, Written
from chatstate.stores._codec import Codec, EntryCodec, ObjectCodec
from chatstate.stores._events import Hook, Operation, StoreEvent, emit
from chatstate.stores._lease import Lease
from chatstate.stores.base import TTL, Fold, SessionSnapshot, check_snapshot, run_fold

__all__ = ["BackendStore"]

E = TypeVar("E")

logger = logging.getLogger("chatstate")

_clock = time.perf_counter

_READS: frozenset[Operation] = frozenset({"load", "snapshot", "version"})


class BackendStore(Generic[E]):
    """A :class:`~chatstate.StateStore` over any :class:`~chatstate.stores.Backend`, with every
    optional capability: summaries, versions, snapshots, leases, the conversation index, metrics
    and hooks. The built-in stores are this core over their own backends.

    - ``codec``: how messages become the backend's entries (default: the
      :class:`~chatstate.stores._codec.EntryCodec` of the serialising stores: JSON, compressed
      over 1 KiB, at most 1 MiB a message).
    - ``on_corrupt``: an entry that cannot be decoded is ``"skip"``-ped (logged and counted in
      ``corrupt_entries``) or ``"raise"``-s CorruptEntryError. Folds and snapshots always raise:
      they never summarise, copy or delete what they could not read.
    - ``sliding_ttl``: every load sets the session to expire this long from now, in the load's
      own step.
    - ``hooks``: subscribers to the store's events (see :meth:`add_hook`).
    """

    _timing_mask = 0
    """Loads and appends whose count has none of these bits set are timed for the latency
    percentiles: all of them (0), or one in sixteen (15) where a call costs about a microsecond
    and timing it would cost a tenth of that."""

    def __init__(
        self,
        backend: Backend[E],
        *,
        codec: Codec[E] | None = None,
        on_corrupt: Literal["skip", "raise"] = "skip",
        sliding_ttl: TTL = None,
        hooks: Sequence[Hook] = (),
    ) -> None:
        self.backend = backend
        self._codec: Codec[E] = codec if codec is not None else EntryCodec()  # type: ignore[assignment]
        self._on_corrupt = check_on_corrupt(on_corrupt)
        self._touch = check_ttl(sliding_ttl, name="sliding_ttl")
        # A codec that keeps the messages themselves: a load hands out the page's new list.
        self._keeps_messages = isinstance(self._codec, ObjectCodec)
        self._hooks: list[Hook] = list(hooks)
        self._recorder = Recorder()
        self._local_leases = KeyedLock()
        self._closed = False
        self.corrupt_entries = 0
        """Entries skipped because they could not be decoded."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r})"

    # -- hooks -----------------------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> None:
        """Call ``hook(event)`` when each operation ends (see :mod:`chatstate.stores._events`)."""
        self._hooks.append(hook)

    def remove_hook(self, hook: Hook) -> None:
        """Stop calling ``hook``; ValueError if it was not added."""
        self._hooks.remove(hook)

    # -- reads -----------------------------------------------------------------------------------

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        """The newest ``limit`` messages of the session (all if None), oldest first."""
        # The hottest path of all: written out, one await deep, nothing done twice.
        session_id = check_session_id(session_id)  # bad input is no load: checked first
        if limit is not None and (type(limit) is not int or limit < 0):
            check_limit(limit)
        recorder = self._recorder
        timed = not recorder.loads & self._timing_mask or self._hooks  # the first, and so on
        recorder.loads += 1
        started = _clock() if timed else 0.0
        try:
            page = await self.backend.read(
                session_id, limit=limit, summary=False, touch=self._touch, numbers=False
            )
        except Exception as exc:
            recorder.loads -= 1
            self._fail(exc, "load", session_id, started, StateLoadError, "loading")
        if self._keeps_messages:
            messages: list[Message] = page.entries  # type: ignore[assignment]  # the messages
            skipped = 0
        else:
            messages, skipped = self._codec.decode(
                page.entries, on_corrupt=self._on_corrupt, session_id=session_id
            )
            if skipped:
                self._skipped(skipped, session_id)
        if timed:
            self._timed_load(session_id, started, len(messages), skipped)
        return messages

    async def load_with_summary(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], Message | None]:
        """:meth:`load`, and the session's summary (None if it has none), in one step."""
        started = _clock()
        page = await self._read(session_id, limit, True, started)
        messages = self._decoded(page, session_id, started)
        if page.summary is None or not messages:
            return messages, None
        return messages, self._decode_one(page.summary, session_id, self._on_corrupt)

    async def load_versioned(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], int]:
        """:meth:`load`, and the session's version when it was read, in one step."""
        started = _clock()
        page = await self._read(session_id, limit, False, started)
        return self._decoded(page, session_id, started), page.version

    async def version(self, session_id: str) -> int:
        """A number that changes with every write of the session; 0 if it does not exist."""
        started = _clock()
        page = await self._read(session_id, 0, False, started, touch=False)
        self._report("version", session_id, started)
        return page.version

    async def exists(self, session_id: str) -> bool:
        """Whether the session holds history now."""
        return await self.version(session_id) != 0

    async def ttl(self, session_id: str) -> timedelta | None:
        """The time the session has left; None if it never expires or does not exist."""
        session_id = check_session_id(session_id)
        started = _clock()
        try:
            left = await self.backend.time_left(session_id)
        except Exception as exc:
            self._fail(exc, "version", session_id, started, StateLoadError, "reading the TTL of")
        self._report("version", session_id, started)
        return None if left is None or left is False else timedelta(seconds=left)

    async def _read(
        self, session_id: str, limit: int | None, summary: bool, started: float, touch: bool = True
    ) -> Page[E]:
        session_id = check_session_id(session_id)
        if limit is not None and (type(limit) is not int or limit < 0):
            check_limit(limit)
        try:
            return await self.backend.read(
                session_id,
                limit=limit,
                summary=summary,
                touch=self._touch if touch else None,
                numbers=True,
            )
        except Exception as exc:
            self._fail(exc, "load", session_id, started, StateLoadError, "loading")

    def _decoded(self, page: Page[E], session_id: str, started: float) -> list[Message]:
        messages, skipped = self._codec.decode(
            page.entries, on_corrupt=self._on_corrupt, session_id=session_id
        )
        if skipped:
            self._skipped(skipped, session_id)
        self._recorder.loads += 1
        self._timed_load(session_id, started, len(messages), skipped)
        return messages

    def _skipped(self, skipped: int, session_id: str) -> None:
        self.corrupt_entries += skipped
        logger.warning("skipped %d corrupt entries of session %r", skipped, session_id)

    def _timed_load(self, session_id: str, started: float, messages: int, skipped: int) -> None:
        ended = _clock()
        self._recorder.load_window.append(ended - started)
        if self._hooks:
            event = StoreEvent("load", session_id, started, ended - started, messages)
            event.skipped = skipped
            emit(self._hooks, event)

    # -- writes ----------------------------------------------------------------------------------

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        """Append ``messages`` atomically, keep the newest ``max_messages`` (None or -1: all) and
        set the session to expire ``ttl`` from now (None: never). Returns the new length."""
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
            started = _clock()
            page = await self._read(session_id, 0, False, started, touch=False)
            return page.length, page.version
        started = _clock()
        try:
            written = await self.backend.append(session_id, entries, max_entries=bound, ttl=seconds)
        except Exception as exc:
            self._fail(exc, "append", session_id, started, StateSaveError, "appending to", new)
        recorder = self._recorder
        if not recorder.appends & self._timing_mask:
            recorder.save_window.append(_clock() - started)
        recorder.appends += 1
        if written.trimmed:
            recorder.trims += 1
        if self._hooks:
            event = StoreEvent("append", session_id, started, _clock() - started, len(new))
            event.trimmed = written.trimmed
            emit(self._hooks, event)
        return written.length, written.version

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        """Replace the whole history of the session, atomically. An empty sequence deletes it."""
        session_id = check_session_id(session_id)
        new = as_messages(messages)
        seconds = check_ttl(ttl)
        entries = self._codec.encode(new)
        started = _clock()
        try:
            if entries:
                await self.backend.replace(
                    session_id, entries, summary=None, ttl=seconds, overwrite=True
                )
            else:
                await self.backend.delete(session_id)
        except Exception as exc:
            self._fail(exc, "save", session_id, started, StateSaveError, "saving", new)
        self._report("save", session_id, started, len(new))

    async def delete(self, session_id: str) -> bool:
        """Forget the session now. Returns whether it existed."""
        session_id = check_session_id(session_id)
        started = _clock()
        try:
            existed = await self.backend.delete(session_id)
        except Exception as exc:
            self._fail(exc, "delete", session_id, started, StoreError, "deleting")
        self._report("delete", session_id, started)
        return existed

    # -- summaries -------------------------------------------------------------------------------

    async def compact(self, session_id: str, fold: Fold) -> bool:
        """Fold the oldest messages of the session into its summary (see
        :class:`~chatstate.stores.SessionSummaries`): read the history and the summary in one
        step, await ``fold``, and commit only if no save, fold or delete came between. What turns
        appended meanwhile stays; what their trims removed is not removed twice (the fold names
        what it covers by sequence number)."""
        session_id = check_session_id(session_id)
        started = _clock()
        try:
            page = await self.backend.read(
                session_id, limit=None, summary=True, touch=None, numbers=True
            )
        except Exception as exc:
            self._fail(exc, "compact", session_id, started, StoreError, "compacting")
        if not page.entries:
            return False
        # A damaged entry raises rather than being skipped: the fold must cover exactly the
        # entries it is given, and nothing unreadable is ever summarised away.
        history, _ = self._codec.decode(page.entries, on_corrupt="raise", session_id=session_id)
        summary = self._decode_one(page.summary, session_id, "raise")
        result = await run_fold(fold, history, summary)
        if result is None:
            return False
        count, new_summary = result
        (entry,) = self._codec.encode([new_summary])
        started = _clock()
        try:
            done = await self.backend.compact(
                session_id,
                generation=page.generation,
                before_seq=page.first_seq + count,
                summary=entry,
            )
        except Exception as exc:
            self._fail(exc, "compact", session_id, started, StoreError, "compacting")
        self._report("compact", session_id, started, count)
        return done

    # -- whole sessions --------------------------------------------------------------------------

    async def snapshot(self, session_id: str) -> SessionSnapshot | None:
        """The whole session as it stands, in one read (see
        :class:`~chatstate.stores.SessionTransfer`); None if there is none. A damaged entry
        raises: a copy never loses one silently."""
        session_id = check_session_id(session_id)
        started = _clock()
        try:
            raw = await self.backend.snapshot(session_id)
        except Exception as exc:
            self._fail(exc, "snapshot", session_id, started, StateLoadError, "reading")
        if raw is None:
            self._report("snapshot", session_id, started)
            return None
        messages, _ = self._codec.decode(raw.entries, on_corrupt="raise", session_id=session_id)
        summary = self._decode_one(raw.summary, session_id, "raise")
        self._report("snapshot", session_id, started, len(messages))
        return SessionSnapshot(messages, summary, raw.ttl)

    async def restore(
        self, session_id: str, snapshot: SessionSnapshot, *, overwrite: bool = False
    ) -> bool:
        """Write ``snapshot`` as the whole session in one step; an existing session only with
        ``overwrite`` (see :class:`~chatstate.stores.SessionTransfer`)."""
        session_id = check_session_id(session_id)
        messages, summary, seconds = check_snapshot(snapshot)
        entries = self._codec.encode(messages)
        summary_entry = self._codec.encode([summary])[0] if summary is not None else None
        started = _clock()
        try:
            written: Written | None = await self.backend.replace(
                session_id, entries, summary=summary_entry, ttl=seconds, overwrite=bool(overwrite)
            )
        except Exception as exc:
            self._fail(exc, "restore", session_id, started, StateSaveError, "restoring", messages)
        self._report("restore", session_id, started, len(messages))
        return written is not None

    # -- leases ----------------------------------------------------------------------------------

    def lease(self, session_id: str, *, ttl: float, timeout: float) -> Lease:
        """Hold the session's turn lease across every instance sharing the backend (see
        :class:`~chatstate.stores.SessionLeases`): ``async with store.lease(id, ttl=30,
        timeout=10):``."""
        return Lease(self, check_session_id(session_id), ttl=ttl, timeout=timeout)

    # -- the conversation index ------------------------------------------------------------------

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        """Record a conversation of a user (see :class:`~chatstate.sessions.Conversations`)."""
        user_session = check_session_id(user_session)
        await self._index(
            user_session,
            self.backend.index_conversation(user_session, conversation_id, now=now, ttl=ttl),
        )

    async def list_conversations(
        self, user_session: str, *, now: float, offset: int, limit: int
    ) -> list[tuple[str, float]]:
        """A user's live conversations, most recent first (see ``Conversations.list``)."""
        user_session = check_session_id(user_session)
        listed: list[tuple[str, float]] = await self._index(
            user_session,
            self.backend.list_conversations(user_session, now=now, offset=offset, limit=limit),
        )
        return listed

    async def drop_conversations(self, user_session: str) -> list[str]:
        """Forget a user's index; returns the conversation ids it held."""
        user_session = check_session_id(user_session)
        dropped: list[str] = await self._index(
            user_session, self.backend.drop_conversations(user_session)
        )
        return dropped

    async def _index(self, user_session: str, call: Any) -> Any:
        started = _clock()
        try:
            result = await call
        except Exception as exc:
            self._fail(
                exc, "index", user_session, started, StoreError, "indexing the conversations of"
            )
        self._report("index", user_session, started)
        return result

    async def session_ids(self) -> AsyncIterator[str]:
        """The ids of every live session, in no particular order."""
        try:
            async for session_id in self.backend.session_ids():
                yield session_id
        except Exception as exc:
            if self.backend.error_kind(exc) is None:
                raise
            raise StoreError(f"listing the sessions failed: {type(exc).__name__}: {exc}") from exc

    # -- metrics and lifetime --------------------------------------------------------------------

    async def metrics(self) -> StateMetrics:
        """This store's :class:`~chatstate.metrics.StateMetrics`: calls, errors, trims and
        latencies of this instance (every operation, whatever its method), and the backend's
        census of what it holds (see the backend's docs for which figures are estimates)."""
        try:
            census = await self.backend.census()
        except Exception as exc:
            if self.backend.error_kind(exc) is None:
                raise
            raise StoreError(f"reading the metrics failed: {type(exc).__name__}: {exc}") from exc
        return self._recorder.metrics(
            active_sessions=census.sessions,
            messages=census.messages,
            storage_used=census.storage_bytes,
            expirations=census.expirations,
            evictions=census.evictions,
        )

    async def aclose(self) -> None:
        """Release the backend's resources (connections, threads). Idempotent."""
        if not self._closed:
            self._closed = True
            await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- internals -------------------------------------------------------------------------------

    def _decode_one(
        self, entry: E | None, session_id: str, on_corrupt: Literal["skip", "raise"]
    ) -> Message | None:
        """A summary's entry decoded (None for none, or a corrupt one skipped and counted)."""
        if entry is None:
            return None
        decoded, skipped = self._codec.decode([entry], on_corrupt=on_corrupt, session_id=session_id)
        self.corrupt_entries += skipped
        return decoded[0] if decoded else None

    def _started(self) -> float:
        return _clock()

    async def _lease_call(self, action: str, session_id: str, token: str, ttl: float) -> bool:
        """The backend's ``acquire``/``renew``/``release`` of a lease, its errors mapped."""
        backend = self.backend
        call = (
            backend.acquire_lease(session_id, token, ttl)
            if action == "acquire"
            else backend.renew_lease(session_id, token, ttl)
            if action == "renew"
            else backend.release_lease(session_id, token)
        )
        started = _clock()
        try:
            return await call
        except Exception as exc:
            self._fail(exc, "lease", session_id, started, StoreError, f"{action} the lease of")

    def _report(
        self, operation: Operation, session_id: str, started: float, messages: int = 0
    ) -> None:
        ended = _clock()
        recorder = self._recorder
        if operation in _READS:
            if operation != "version":
                recorder.loads += 1
                recorder.load_window.append(ended - started)
        elif operation == "delete":
            recorder.deletes += 1
        elif operation in ("save", "restore"):
            recorder.saves += 1
            recorder.save_window.append(ended - started)
        if self._hooks:
            emit(self._hooks, StoreEvent(operation, session_id, started, ended - started, messages))

    def _fail(
        self,
        exc: Exception,
        operation: Operation,
        session_id: str,
        started: float,
        kind: type[StoreError],
        doing: str,
        messages: Sequence[Message] = (),
    ) -> NoReturn:
        """Raise ``exc`` as chatstate's error of ``kind`` (reported as a failed operation)."""
        self._recorder.errors += 1
        if self._hooks:
            ended = _clock()
            emit(
                self._hooks, StoreEvent(operation, session_id, started, ended - started, error=exc)
            )
        if isinstance(exc, ChatStateError):
            raise exc
        error_kind = self.backend.error_kind(exc)
        if error_kind is None:
            raise exc
        if error_kind == "wrong_type":
            raise WrongTypeError(
                f"the storage of session {session_id!r} holds data that is not a chatstate "
                f"history; it was left unchanged",
                session_id=session_id,
            ) from exc
        text = f"{doing} session {session_id!r} failed: {type(exc).__name__}: {exc}"
        if kind is StateSaveError:
            raise StateSaveError(text, session_id=session_id, messages=messages) from exc
        raise kind(text, session_id=session_id) from exc
