"""The in-memory backend: sessions in a dict of this process, least recently used first."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

from chatstate._checks import check_ttl
from chatstate.errors import ConfigurationError
from chatstate.stores._backend import (
    KEEP,
    BackendCensus,
    ErrorKind,
    Fenced,
    Page,
    Popped,
    RawSession,
    Written,
)
from chatstate.stores._memory_census import count
from chatstate.stores._memory_edits import Edits
from chatstate.stores._memory_expiry import Expiries, _Session
from chatstate.stores._memory_index import ConversationIndex
from chatstate.stores._writes import DELETED_IDS_TTL, remember, seen

__all__ = ["MemoryBackend"]


class MemoryBackend(ConversationIndex, Expiries, Edits):
    """Sessions in a dict of this process, least recently used first; entries kept as given (the
    messages themselves, or whatever the store's codec made). See :class:`InMemoryStateStore`."""

    name = "memory"

    def __init__(
        self,
        *,
        max_sessions: int | None = 100_000,
        sweep_interval: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions is not None and (type(max_sessions) is not int or max_sessions < 1):
            raise ConfigurationError(
                f"max_sessions must be a positive int or None, got {max_sessions!r}"
            )
        self._sweep_interval = (
            None if sweep_interval is None else check_ttl(sweep_interval, name="sweep_interval")
        )
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._expiry_heap = []  # see Expiries
        self._next_sweep = 0.0
        self._max_sessions = max_sessions
        self._clock = clock
        self._leases: dict[str, tuple[str, float]] = {}
        # Deleted sessions' write ids: id -> (ids, whether the delete found it, kept until).
        self._deleted: OrderedDict[str, tuple[str, bool, float]] = OrderedDict()
        # user session -> conversation id -> (last active, deadline): wall-clock seconds
        self._conversations: dict[str, dict[str, tuple[float, float | None]]] = {}
        self.evictions = 0
        self.expirations = 0

    def __repr__(self) -> str:
        return f"MemoryBackend(sessions={len(self._sessions)}, max_sessions={self._max_sessions})"

    async def read(
        self,
        session_id: str,
        *,
        limit: int | None,
        summary: bool,
        touch: float | None,
        numbers: bool = True,
        meta: bool = False,
    ) -> Page[Any]:
        session = self._sessions.get(session_id)
        if session is None:
            return Page([], 0)
        expires_at = session.expires_at
        if expires_at is not None and expires_at <= self._clock():
            self._expire(session_id)
            return Page([], 0)
        self._sessions.move_to_end(session_id)
        if touch is not None:
            self._set_expiry(session_id, session, touch)
        stored = session.entries
        entries = stored[:] if limit is None else stored[-limit:] if limit else []
        seqs = session.seqs
        if seqs is None:
            first, each = session.head + len(stored) - len(entries), None
        else:
            each = seqs[len(stored) - len(entries) :]
            first = each[0] if each else session.tail
        page = Page(
            entries,
            first,
            session.summary if summary else None,
            session.version,
            session.generation,
            len(stored),
            each,
        )
        if meta:
            page.meta, page.created, page.updated = session.meta, session.created, session.updated
        return page

    def entries_now(self, session_id: str, limit: int | None) -> list[Any]:
        """The newest ``limit`` entries (all if None), as :meth:`read` would give them: what the
        store core's plain load calls, without an await, for a backend in process memory."""
        session = self._sessions.get(session_id)
        if session is None:
            return []
        expires_at = session.expires_at
        if expires_at is not None and expires_at <= self._clock():
            self._expire(session_id)
            return []
        self._sessions.move_to_end(session_id)
        stored = session.entries
        return stored[:] if limit is None else stored[-limit:] if limit else []

    async def append(
        self,
        session_id: str,
        entries: Sequence[Any],
        *,
        max_entries: int | None,
        ttl: float | None,
        write_id: str,
        fence: str | None,
        meta: Any = None,
    ) -> Written:
        length, version, trimmed, applied = self.append_now(
            session_id, entries, max_entries, ttl, write_id, fence
        )
        if meta is not None and applied:
            self._sessions[session_id].meta = meta  # in the same step: no await between
        return Written(length, version, trimmed, applied)

    def append_now(
        self,
        session_id: str,
        entries: Sequence[Any],
        max_entries: int | None,
        ttl: float | None,
        write_id: str,
        fence: str | None,
    ) -> tuple[int, int, bool, bool]:
        """:meth:`append` as a plain call, its :class:`Written` as a tuple: what the store core's
        append calls, without an await, for a backend in process memory (as :meth:`entries_now`
        for the plain load)."""
        now = self._clock()
        session = self._sessions.get(session_id)
        if session is not None and session.expires_at is not None and session.expires_at <= now:
            self._expire(session_id)
            session = None
        ids = session.writes if session is not None else self._deleted_ids(session_id)
        if ids and seen(ids, write_id):
            return self._as_applied(session)
        session = self._to_write(session_id, session, ids, write_id, fence)
        session.version += 1
        stored = session.entries
        stored.extend(entries)
        seqs = session.seqs
        if seqs is not None:  # gaps in the numbers: number these on after the highest
            tail = session.tail
            session.tail = tail + len(entries)
            seqs.extend(range(tail, session.tail))
        trimmed = max_entries is not None and len(stored) > max_entries
        if trimmed:
            cut = len(stored) - max_entries  # type: ignore[operator]
            del stored[:cut]
            if seqs is None:
                session.head += cut
            else:
                del seqs[:cut]
                session.settle()
        self._set_expiry(session_id, session, ttl, now)
        return len(stored), session.version, trimmed, True

    async def replace(
        self,
        session_id: str,
        entries: Sequence[Any],
        *,
        summary: Any,
        ttl: float | None,
        overwrite: bool,
        write_id: str,
        fence: str | None,
        numbers: Sequence[int] | None = None,
        meta: Any = KEEP,
    ) -> Written | None:
        session = self._live(session_id)
        ids = session.writes if session is not None else self._deleted_ids(session_id)
        if ids and seen(ids, write_id):
            return self._as_written(session)
        if not overwrite and session is not None:
            return None
        start = 0 if session is None else session.next_number()
        session = self._to_write(session_id, session, ids, write_id, fence)
        session.entries, session.summary = list(entries), summary
        if meta is not KEEP:
            session.meta = meta
        if numbers is None:
            session.head, session.seqs = start, None  # numbered on after every number given
        else:  # as given; the next number after them and after every one given before
            session.seqs, session.tail = list(numbers), max(numbers[-1] + 1, start)
            session.settle()
        session.version += 1
        session.generation += 1
        self._set_expiry(session_id, session, ttl)
        return Written(len(session.entries), session.version)

    async def delete(self, session_id: str, *, write_id: str, fence: str | None) -> bool:
        session = self._live(session_id)
        deleted = self._deleted.get(session_id)
        ids = session.writes if session is not None else self._deleted_ids(session_id)
        if ids and seen(ids, write_id):
            return True if session is not None or deleted is None else deleted[1]
        if fence is not None:
            self._check_fence(session_id, fence)
        if session is not None:
            del self._sessions[session_id]
        self._forget_deleted(self._clock())
        self._deleted[session_id] = (
            remember(ids, write_id),
            session is not None,
            self._clock() + DELETED_IDS_TTL,
        )
        self._deleted.move_to_end(session_id)
        return session is not None

    async def pop(
        self, session_id: str, count: int, *, write_id: str, fence: str | None
    ) -> Popped[Any]:
        session = self._live(session_id)
        ids = session.writes if session is not None else self._deleted_ids(session_id)
        if ids and seen(ids, write_id):
            done = self._as_written(session)
            return Popped([], done.length, done.version, applied=False)
        if session is None:
            return Popped([], 0, 0)
        stored = session.entries
        if count >= len(stored):  # emptied: deleted, its write ids kept as a delete keeps them
            await self.delete(session_id, write_id=write_id, fence=fence)
            return Popped(stored, 0, 0)
        session = self._to_write(session_id, session, ids, write_id, fence)
        seqs = session.gapped()
        popped = stored[-count:]
        del stored[-count:], seqs[-count:]  # the numbers it freed stay unused
        session.settle()
        session.version += 1
        session.generation += 1
        return Popped(popped, len(stored), session.version)

    async def compact(
        self, session_id: str, *, generation: int, before_seq: int, summary: Any, write_id: str
    ) -> bool:
        session = self._live(session_id)
        if session is None:
            return seen(self._deleted_ids(session_id), write_id)
        if seen(session.writes, write_id):
            return True
        if session.generation != generation:
            return False  # rewritten, compacted or gone meanwhile
        folded = bisect_left(session.numbers(), before_seq)  # those a trim meanwhile left
        if folded > 0:
            del session.entries[:folded]
            if session.seqs is None:
                session.head += folded
            else:
                del session.seqs[:folded]
                session.settle()
        session.summary = summary
        session.writes = remember(session.writes, write_id)
        session.version += 1
        session.generation += 1
        return True

    async def snapshot(self, session_id: str) -> RawSession[Any] | None:
        session = self._live(session_id)
        if session is None:
            return None
        expires_at = session.expires_at
        ttl = None if expires_at is None else max(expires_at - self._clock(), 1e-3)
        return RawSession(
            session.entries[:], session.summary, ttl, list(session.numbers()), session.meta
        )

    async def time_left(self, session_id: str) -> float | Literal[False] | None:
        session = self._live(session_id)
        if session is None:
            return False
        return None if session.expires_at is None else session.expires_at - self._clock()

    # In one process the store's local lock serialises the turns; this only keeps the token.
    async def acquire_lease(self, session_id: str, token: str, ttl: float) -> bool:
        held = self._leases.get(session_id)
        now = self._clock()
        if held is not None and held[1] > now:
            return held[0] == token
        self._leases[session_id] = (token, now + ttl)
        return True

    async def renew_lease(self, session_id: str, token: str, ttl: float) -> bool:
        held = self._leases.get(session_id)
        if held is None or held[0] != token or held[1] <= self._clock():
            return False
        self._leases[session_id] = (token, self._clock() + ttl)
        return True

    async def release_lease(self, session_id: str, token: str) -> bool:
        held = self._leases.get(session_id)
        if held is None or held[0] != token:
            return False
        del self._leases[session_id]
        return True

    async def session_ids(self) -> AsyncIterator[str]:
        now = self._clock()
        for session_id, session in list(self._sessions.items()):
            if session.expires_at is None or session.expires_at > now:
                yield session_id

    async def census(self) -> BackendCensus:
        """Exact counts after a sweep of the expired sessions; the bytes an estimate (about 900
        a message plus its text, measured for short text messages, over one session in
        sixteen). Walks the sessions in chunks, yielding between them."""
        await self.sweep()
        sessions = [session.entries for session in self._sessions.values()]
        messages, storage_bytes = await count(sessions)
        return BackendCensus(
            sessions=len(sessions),
            messages=messages,
            storage_bytes=storage_bytes,
            expirations=self.expirations,
            evictions=self.evictions,
        )

    def error_kind(self, exc: Exception) -> ErrorKind | None:
        return None  # it raises nothing of its own

    async def aclose(self) -> None:
        pass  # the data stays readable

    @property
    def sessions_in_memory(self) -> int:
        return len(self._sessions)

    # -- internals -------------------------------------------------------------------------------

    def _live(self, session_id: str) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at is not None and session.expires_at <= self._clock():
            self._expire(session_id)
            return None
        return session

    def _to_write(
        self, session_id: str, session: _Session | None, ids: str, write_id: str, fence: str | None
    ) -> _Session:
        """The session a write (not a repeated one) goes to, its id remembered: the fence
        checked, the session created if need be (with the ids a delete left)."""
        if fence is not None:
            self._check_fence(session_id, fence)
        if session is None:
            session = self._create(session_id, ids)
        else:
            self._sessions.move_to_end(session_id)
            session.updated = time.time()
        session.writes = remember(ids, write_id)
        return session

    def _create(self, session_id: str, writes: str) -> _Session:
        """A new session, with the write ids its id was left with by a delete."""
        if self._max_sessions is not None:
            while len(self._sessions) >= self._max_sessions:
                self._sessions.popitem(last=False)
                self.evictions += 1
        self._deleted.pop(session_id, None)
        session = self._sessions[session_id] = _Session(writes)
        return session

    def _as_written(self, session: _Session | None) -> Written:
        """What a write already applied returns: the session as it is now."""
        return Written(*self._as_applied(session))

    def _as_applied(self, session: _Session | None) -> tuple[int, int, bool, bool]:
        """:meth:`_as_written` as a tuple."""
        if session is None:
            return 0, 0, False, False
        return len(session.entries), session.version, False, False

    def _deleted_ids(self, session_id: str) -> str:
        deleted = self._deleted.get(session_id)
        if deleted is None:
            return ""
        if deleted[2] <= self._clock():
            del self._deleted[session_id]
            return ""
        return deleted[0]

    def _forget_deleted(self, now: float) -> None:
        """Drop the write ids of sessions deleted long enough ago (and the oldest beyond
        max_sessions)."""
        deleted = self._deleted
        limit = self._max_sessions
        while deleted:
            session_id, (_, _, until) = next(iter(deleted.items()))
            if until > now and (limit is None or len(deleted) < limit):
                return
            del deleted[session_id]

    def _check_fence(self, session_id: str, fence: str) -> None:
        held = self._leases.get(session_id)
        if held is None or held[0] != fence or held[1] <= self._clock():
            raise Fenced(f"the lease of session {session_id!r} is not held by this token")
