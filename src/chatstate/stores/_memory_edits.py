"""The in-memory backend's history operations (:class:`~chatstate.stores.Editing`): a page of
entries before or after a number, and an edit or removal by number; and its metadata writes
(:class:`~chatstate.stores.Describing`)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatstate.stores._backend import EditOutcome, Page, Written
from chatstate.stores._memory_expiry import _Session
from chatstate.stores._writes import remember, seen

__all__ = ["Edits"]


class Edits:
    """:meth:`read_range`, :meth:`edit` and :meth:`write_meta` of
    :class:`~chatstate.stores.MemoryBackend`."""

    _sessions: OrderedDict[str, _Session]
    _clock: Callable[[], float]

    if TYPE_CHECKING:  # given by MemoryBackend

        def _live(self, session_id: str) -> _Session | None: ...
        def _deleted_ids(self, session_id: str) -> str: ...
        def _as_written(self, session: _Session | None) -> Written: ...
        def _check_fence(self, session_id: str, fence: str) -> None: ...
        def _set_expiry(
            self,
            session_id: str,
            session: _Session,
            seconds: float | None,
            now: float | None = None,
        ) -> None: ...
        def _to_write(
            self,
            session_id: str,
            session: _Session | None,
            ids: str,
            write_id: str,
            fence: str | None,
        ) -> _Session: ...
        async def delete(self, session_id: str, *, write_id: str, fence: str | None) -> bool: ...

    async def read_range(
        self,
        session_id: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        touch: float | None,
    ) -> Page[Any]:
        session = self._live(session_id)
        if session is None:
            return Page([], 0)
        self._sessions.move_to_end(session_id)
        if touch is not None:
            self._set_expiry(session_id, session, touch)
        numbers = session.numbers()
        if before is not None:
            end = bisect_left(numbers, before)
            start = max(0, end - limit)
        elif after is not None:
            start = bisect_right(numbers, after)
            end = min(len(numbers), start + limit)
        else:
            end = len(numbers)
            start = max(0, end - limit)
        seqs = list(numbers[start:end])
        return Page(
            session.entries[start:end],
            seqs[0] if seqs else session.next_number(),
            None,
            session.version,
            session.generation,
            len(numbers),
            seqs,
        )

    async def edit(
        self,
        session_id: str,
        seq: int,
        entry: Any,
        *,
        truncate: bool,
        version: int | None,
        write_id: str,
        fence: str | None,
    ) -> Written | EditOutcome:
        session, ids, repeated = self._checked(session_id, write_id, fence)
        if repeated is not None:
            return repeated
        if session is None:
            return "missing"
        if version is not None and session.version != version:
            return "stale"
        numbers = session.numbers()
        at = bisect_left(numbers, seq)
        if at == len(numbers) or numbers[at] != seq:
            return "missing"
        stored = session.entries
        end = len(stored) if truncate else at + 1
        if entry is None and at == 0 and end == len(stored):  # nothing left: deleted
            await self.delete(session_id, write_id=write_id, fence=fence)
            return Written(0, 0)
        session = self._to_write(session_id, session, ids, write_id, fence)
        if entry is not None:
            stored[at] = entry
            at += 1
        if at < end:  # removed: their numbers stay unused
            seqs = session.gapped()
            del stored[at:end], seqs[at:end]
            session.settle()
        session.version += 1
        session.generation += 1
        return Written(len(stored), session.version)

    def _checked(
        self, session_id: str, write_id: str, fence: str | None
    ) -> tuple[_Session | None, str, Written | None]:
        """The live session, its write ids, and what a write whose id it remembers returns
        (None: not such a write); the fence checked after the write id (raises Fenced)."""
        session = self._live(session_id)
        ids = session.writes if session is not None else self._deleted_ids(session_id)
        if ids and seen(ids, write_id):
            return session, ids, self._as_written(session)
        if fence is not None:
            self._check_fence(session_id, fence)
        return session, ids, None

    async def write_meta(
        self, session_id: str, meta: Any, *, write_id: str, fence: str | None
    ) -> Written | None:
        session, ids, repeated = self._checked(session_id, write_id, fence)
        if repeated is not None:
            return repeated
        if session is None:
            return None
        session.meta = meta
        session.writes = remember(ids, write_id)
        return Written(len(session.entries), session.version)
