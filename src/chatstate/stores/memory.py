"""The in-memory store: fast, per process, for development, tests, demos and single instances."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence

from chatstate._checks import (
    check_count,
    check_limit,
    check_max_messages,
    check_session_id,
    check_ttl,
)
from chatstate._locks import KeyedLock
from chatstate._periodic import keep_sweeping
from chatstate.errors import ConfigurationError, LeaseTimeoutError
from chatstate.messages import Message, as_messages
from chatstate.metrics import Recorder, StateMetrics, clock
from chatstate.stores._codec import check_sizes
from chatstate.stores.base import (
    TTL,
    Fold,
    SessionSnapshot,
    StateStore,
    check_snapshot,
    run_fold,
)

__all__ = ["InMemoryStateStore"]

_SWEEP_CHUNK = 1000


class _Session:
    __slots__ = ("expires_at", "messages", "summary", "version")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.summary: Message | None = None
        self.expires_at: float | None = None
        # Random to start with, so a session deleted and written again never repeats a number.
        self.version = secrets.randbits(48)


class InMemoryStateStore(StateStore):
    """History kept in this process's memory.

    Messages are stored as the immutable :class:`Message` objects they are, so a load costs a dict
    lookup and a list slice; returned lists are new lists the caller may change freely.

    - ``max_sessions``: at most this many sessions are kept; adding one more evicts the least
      recently used (loaded or written). ``None`` for no cap.
    - ``sweep_interval``: seconds between background sweeps that reclaim expired sessions (they are
      never returned in any case: every access checks expiry). The sweep runs as a task of the event
      loop that first writes a session with a TTL, works in chunks so it never blocks the loop, and
      stops with :meth:`aclose`. ``None`` turns it off; :meth:`sweep` runs one by hand.
    - ``clock``: a monotonic clock in seconds, to be replaced in tests.
    - ``max_message_bytes``: refuse, with InvalidMessageError and before anything of the call is
      stored, a message whose JSON is longer (default None: no limit, and no cost).

    Safe for any number of tasks on one event loop; not for use from several threads at once.
    """

    def __init__(
        self,
        *,
        max_sessions: int | None = 100_000,
        sweep_interval: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_message_bytes: int | None = None,
    ) -> None:
        if max_sessions is not None and (type(max_sessions) is not int or max_sessions < 1):
            raise ConfigurationError(
                f"max_sessions must be a positive int or None, got {max_sessions!r}"
            )
        if sweep_interval is not None:
            check_ttl(sweep_interval, name="sweep_interval")
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        # (expires_at, session_id) for every expiry ever set; entries that a later write made stale
        # are skipped when popped, and the heap is rebuilt when they outnumber the live ones.
        self._expiry_heap: list[tuple[float, str]] = []
        self._max_sessions = max_sessions
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._max_message_bytes = (
            None
            if max_message_bytes is None
            else check_count(max_message_bytes, name="max_message_bytes")
        )
        self._sweeper: asyncio.Task[None] | None = None
        self._leases = KeyedLock()
        self._closed = False
        self._recorder = Recorder()
        # user session -> conversation id -> (last active, deadline): wall-clock seconds
        self._conversations: dict[str, dict[str, tuple[float, float | None]]] = {}
        self.evictions = 0
        """Sessions evicted because ``max_sessions`` was reached."""
        self.expirations = 0
        """Expired sessions reclaimed (by access or by a sweep)."""

    def __repr__(self) -> str:
        return (
            f"InMemoryStateStore(sessions={len(self._sessions)}, max_sessions={self._max_sessions})"
        )

    @property
    def sessions_in_memory(self) -> int:
        """Sessions held in memory now, expired ones not yet reclaimed included."""
        return len(self._sessions)

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        recorder = self._recorder
        recorder.loads += 1
        if recorder.loads & _TIME_ONE_IN != 1:  # calls of a microsecond: time one in sixteen
            return self._load(session_id, limit)
        started = clock()
        messages = self._load(session_id, limit)
        recorder.load_window.append(clock() - started)
        return messages

    def _load(self, session_id: str, limit: int | None) -> list[Message]:
        session = self._sessions.get(session_id)
        if session is None:
            check_session_id(session_id)
            check_limit(limit)
            return []
        # Only valid ids are ever stored, so a hit needs no id check: this is the hot path.
        expires_at = session.expires_at
        if expires_at is not None and expires_at <= self._clock():
            self._expire(session_id)
            check_limit(limit)
            return []
        self._sessions.move_to_end(session_id)
        if limit is None:
            return session.messages[:]
        if type(limit) is not int or limit < 0:
            check_limit(limit)
        return session.messages[-limit:] if limit else []

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        session_id = check_session_id(session_id)
        new = as_messages(messages)
        check_sizes(new, self._max_message_bytes)
        seconds = check_ttl(ttl)
        started = clock()
        if not new:
            self._sessions.pop(session_id, None)
        else:
            session = self._session_for_write(session_id)
            session.messages = new
            session.summary = None
            session.version += 1
            self._set_expiry(session_id, session, seconds)
        recorder = self._recorder
        recorder.saves += 1
        recorder.save_window.append(clock() - started)

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        if session_id not in self._sessions:  # stored ids were checked when first written
            session_id = check_session_id(session_id)
        new = as_messages(messages)
        check_sizes(new, self._max_message_bytes)
        bound = check_max_messages(max_messages)
        seconds = check_ttl(ttl)
        if not new:
            live = self._live(session_id)
            return len(live.messages) if live is not None else 0
        recorder = self._recorder
        recorder.appends += 1
        timed = recorder.appends & _TIME_ONE_IN == 1
        started = clock() if timed else 0.0
        session = self._session_for_write(session_id)
        session.version += 1
        stored = session.messages
        stored.extend(new)
        if bound is not None and len(stored) > bound:
            del stored[:-bound]
            recorder.trims += 1
        self._set_expiry(session_id, session, seconds)
        if timed:
            recorder.save_window.append(clock() - started)
        return len(stored)

    async def delete(self, session_id: str) -> bool:
        session_id = check_session_id(session_id)
        self._recorder.deletes += 1
        if self._live(session_id) is None:
            return False
        del self._sessions[session_id]
        return True

    async def load_with_summary(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], Message | None]:
        """:meth:`load`, and the session's summary (see
        :class:`~chatstate.stores.base.SessionSummaries`)."""
        messages = await self.load(session_id, limit=limit)
        session = self._sessions.get(session_id) if messages else None
        return messages, session.summary if session is not None else None

    async def compact(self, session_id: str, fold: Fold) -> bool:
        """Fold the oldest messages into the session's summary (see
        :class:`~chatstate.stores.base.SessionSummaries`)."""
        session = self._live(check_session_id(session_id))
        if session is None or not session.messages:
            return False
        history, summary = session.messages[:], session.summary
        result = await run_fold(fold, history, summary)
        if result is None:
            return False
        count, new_summary = result
        check_sizes((new_summary,), self._max_message_bytes)
        if self._live(session_id) is not session or session.summary is not summary:
            return False  # compacted, rewritten or gone meanwhile
        stored = session.messages
        # What turns did meanwhile: trimmed some of the history read from its head, appended.
        for trimmed in range(len(history)):
            kept = len(history) - trimmed
            if len(stored) >= kept and all(
                now is then for now, then in zip(stored, history[trimmed:], strict=False)
            ):
                del stored[: max(0, count - trimmed)]
                session.summary = new_summary
                session.version += 1
                return True
        return False  # rewritten meanwhile

    async def snapshot(self, session_id: str) -> SessionSnapshot | None:
        """The whole session as it stands (see :class:`~chatstate.stores.base.SessionTransfer`);
        None if there is none."""
        session = self._live(check_session_id(session_id))
        if session is None:
            return None
        expires_at = session.expires_at
        ttl = None if expires_at is None else max(expires_at - self._clock(), 1e-3)
        return SessionSnapshot(session.messages[:], session.summary, ttl)

    async def restore(
        self, session_id: str, snapshot: SessionSnapshot, *, overwrite: bool = False
    ) -> bool:
        """Write a whole session at once; an existing one only with ``overwrite`` (see
        :class:`~chatstate.stores.base.SessionTransfer`)."""
        session_id = check_session_id(session_id)
        messages, summary, seconds = check_snapshot(snapshot)
        check_sizes(messages if summary is None else [*messages, summary], self._max_message_bytes)
        if not overwrite and self._live(session_id) is not None:
            return False
        session = self._session_for_write(session_id)
        session.messages, session.summary = messages, summary
        session.version += 1
        self._set_expiry(session_id, session, seconds)
        return True

    @contextlib.asynccontextmanager
    async def lease(self, session_id: str, *, ttl: float, timeout: float) -> AsyncIterator[None]:
        """Hold the session's turn lease (see :class:`~chatstate.stores.base.SessionLeases`). In
        one process a lock is all it takes, so ``ttl`` is not needed: a holder that dies (its task
        ends) releases it."""
        session_id = check_session_id(session_id)
        check_ttl(ttl, name="ttl")
        try:
            await asyncio.wait_for(self._leases.acquire(session_id), timeout=max(0.0, timeout))
        except TimeoutError:
            raise LeaseTimeoutError(
                f"the lease of session {session_id!r} was held by another turn for more than "
                f"{timeout:g} s",
                session_id=session_id,
            ) from None
        try:
            yield
        finally:
            self._leases.release(session_id)

    async def session_ids(self) -> AsyncIterator[str]:
        """The ids of the live sessions, least recently used first."""
        now = self._clock()
        for session_id, session in list(self._sessions.items()):
            if session.expires_at is None or session.expires_at > now:
                yield session_id

    async def version(self, session_id: str) -> int:
        """The session's version: a number that changes with every write (0: no session)."""
        session = self._live(check_session_id(session_id))
        return session.version if session is not None else 0

    async def load_versioned(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], int]:
        """:meth:`load`, and the session's version when it was read."""
        messages = await self.load(session_id, limit=limit)
        return messages, await self.version(session_id)

    async def append_versioned(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> tuple[int, int]:
        """:meth:`append`, and the session's version after it."""
        length = await self.append(session_id, messages, max_messages=max_messages, ttl=ttl)
        return length, await self.version(session_id)

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        """Record a conversation of a user (see :class:`~chatstate.sessions.Conversations`)."""
        entries = self._conversations.setdefault(check_session_id(user_session), {})
        entries[conversation_id] = (now, None if ttl is None else now + ttl)

    async def list_conversations(
        self, user_session: str, *, now: float, offset: int, limit: int
    ) -> list[tuple[str, float]]:
        """A user's live conversations, most recent first (see ``Conversations.list``)."""
        entries = self._conversations.get(check_session_id(user_session))
        if not entries:
            return []
        for conversation_id, (_, deadline) in list(entries.items()):
            if deadline is not None and deadline <= now:
                del entries[conversation_id]  # no entry outlives its conversation
        if not entries:
            del self._conversations[user_session]
            return []
        ordered = sorted(entries.items(), key=lambda item: item[1][0], reverse=True)
        return [(conversation_id, at) for conversation_id, (at, _) in ordered][
            offset : offset + limit
        ]

    async def drop_conversations(self, user_session: str) -> list[str]:
        """Forget a user's index; returns the conversation ids it held."""
        return list(self._conversations.pop(check_session_id(user_session), {}))

    async def metrics(self) -> StateMetrics:
        """This store's :class:`~chatstate.metrics.StateMetrics`, exact after a sweep of the expired
        sessions, but for two estimates: ``storage_used`` (about 900 bytes a message plus its
        text, measured for short text messages, over one session in sixteen) and the latencies
        (of one call in sixteen: timing every call of a microsecond would cost a third of it).
        Sweeps and walks the sessions in chunks, yielding between them."""
        await self.sweep()
        messages = sampled_messages = sampled_bytes = 0
        sessions = list(self._sessions.values())
        chunk = _SWEEP_CHUNK * 10
        for start in range(0, len(sessions), chunk):
            for index, session in enumerate(sessions[start : start + chunk], start):
                messages += len(session.messages)
                if not index & _TIME_ONE_IN:
                    sampled_messages += len(session.messages)
                    sampled_bytes += _size(session.messages)
            await asyncio.sleep(0)
        per_message = sampled_bytes / sampled_messages if sampled_messages else 0.0
        return self._recorder.metrics(
            active_sessions=len(sessions),
            messages=messages,
            storage_used=round(messages * per_message),
            expirations=self.expirations,
            evictions=self.evictions,
        )

    async def sweep(self) -> int:
        """Reclaim every expired session now and return how many; yields between chunks."""
        removed = 0
        while True:
            count, finished = self._sweep_chunk(self._clock())
            removed += count
            if finished:
                return removed
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        """Stop the background sweep. The data stays readable; expiry is still checked on access."""
        self._closed = True
        task, self._sweeper = self._sweeper, None
        if task is not None and not task.done():
            task.cancel()

    # -- internals -----------------------------------------------------------------------------

    def _live(self, session_id: str) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at is not None and session.expires_at <= self._clock():
            self._expire(session_id)
            return None
        return session

    def _expire(self, session_id: str) -> None:
        del self._sessions[session_id]
        self.expirations += 1

    def _session_for_write(self, session_id: str) -> _Session:
        session = self._live(session_id)
        if session is not None:
            self._sessions.move_to_end(session_id)
            return session
        if self._max_sessions is not None:
            while len(self._sessions) >= self._max_sessions:
                self._sessions.popitem(last=False)
                self.evictions += 1
        session = self._sessions[session_id] = _Session()
        return session

    def _set_expiry(self, session_id: str, session: _Session, seconds: float | None) -> None:
        if seconds is None:
            session.expires_at = None
            return
        expires_at = session.expires_at = self._clock() + seconds
        heap = self._expiry_heap
        heapq.heappush(heap, (expires_at, session_id))
        if len(heap) > 2 * len(self._sessions) + 1024:
            self._rebuild_heap()
        if not self._closed and self._sweep_interval is not None:
            self._sweeper = keep_sweeping(
                self._sweeper, self, self._sweep_interval, "chatstate-memory-sweep"
            )

    def _rebuild_heap(self) -> None:
        self._expiry_heap = [
            (session.expires_at, session_id)
            for session_id, session in self._sessions.items()
            if session.expires_at is not None
        ]
        heapq.heapify(self._expiry_heap)

    def _sweep_chunk(self, now: float) -> tuple[int, bool]:
        heap, sessions = self._expiry_heap, self._sessions
        removed = 0
        for _ in range(_SWEEP_CHUNK):
            if not heap or heap[0][0] > now:
                return removed, True
            expires_at, session_id = heapq.heappop(heap)
            session = sessions.get(session_id)
            # A stale entry: the session was rewritten, deleted or re-created since this was pushed.
            if session is not None and session.expires_at == expires_at:
                self._expire(session_id)
                removed += 1
        return removed, False


_TIME_ONE_IN = 15
"""A mask: the calls numbered 1, 17, 33, ... (one in sixteen, the first included) are timed, and
one session in sixteen is measured for ``storage_used``."""

_MESSAGE_OVERHEAD = 900
"""Heap bytes of a short text message besides its text (measured with tracemalloc: the model,
its dict, its fields set, the str header)."""


def _size(messages: Sequence[Message]) -> int:
    """Estimated heap bytes of ``messages``."""
    return sum(
        _MESSAGE_OVERHEAD + (len(content) if type(content := m.content) is str else len(m.text))
        for m in messages
    )
