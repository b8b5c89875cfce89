"""A third-party backend, as small as the interface allows: plain dicts of bytes entries.

It implements only :class:`chatstate.stores.Backend`, with its optional ``pop`` and the
:class:`chatstate.stores.Editing` protocol (no chatstate base class, no helper of the built-in
backends), and goes through :class:`chatstate.stores.BackendStore`, which gives it the codec, the
checks, leases, metrics, hooks and the history operations: the conformance suite runs over it as
over the built-in stores. Each entry's number is kept beside it (``seqs``), the plainest way to
keep numbers with gaps.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from chatstate.stores import (
    BackendCensus,
    EditOutcome,
    ErrorKind,
    Fenced,
    Page,
    Popped,
    RawSession,
    Written,
)


@dataclass
class _Row:
    entries: list[bytes] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # each entry's number
    tail: int = 0  # the next number to give
    summary: bytes | None = None
    expires_at: float | None = None
    version: int = 0
    generation: int = 0


class DictBackend:
    name = "dict"

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._rows: dict[str, _Row] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._index: dict[str, dict[str, tuple[float, float | None]]] = {}
        # Generations, and the first version of a session (x 1000): never repeated, whatever
        # sessions come and go; a version then goes up by one with every write.
        self._numbers = itertools.count(1_000)
        # The last write ids of each session id, kept across its deletes, with what a delete
        # returned (None for other writes).
        self._writes: dict[str, dict[str, bool | None]] = {}

    def _seen(self, session_id: str, write_id: str) -> bool:
        return write_id in self._writes.get(session_id, ())

    def _remember(self, session_id: str, write_id: str, result: bool | None = None) -> None:
        writes = self._writes.setdefault(session_id, {})
        writes[write_id] = result
        if len(writes) > 32:
            del writes[next(iter(writes))]

    def _fence(self, session_id: str, fence: str | None) -> None:
        if fence is None:
            return
        held = self._leases.get(session_id)
        if held is None or held[0] != fence or held[1] <= self._clock():
            raise Fenced(f"lease of {session_id!r} lost")

    def _already(self, session_id: str) -> Written:
        row = self._live(session_id)
        return Written(0 if row is None else len(row.entries), 0 if row is None else row.version,
                       applied=False)  # fmt: skip

    def _live(self, session_id: str) -> _Row | None:
        row = self._rows.get(session_id)
        if row is not None and row.expires_at is not None and row.expires_at <= self._clock():
            del self._rows[session_id]
            return None
        return row

    def _expire_in(self, row: _Row, ttl: float | None) -> None:
        row.expires_at = None if ttl is None else self._clock() + ttl

    async def read(
        self,
        session_id: str,
        *,
        limit: int | None,
        summary: bool,
        touch: float | None,
        numbers: bool,
    ) -> Page[bytes]:
        row = self._live(session_id)
        if row is None:
            return Page([], 0)
        if touch is not None:
            self._expire_in(row, touch)
        start = 0 if limit is None else max(0, len(row.entries) - limit)
        return self._page(row, start, len(row.entries), row.summary if summary else None)

    def _page(self, row: _Row, start: int, end: int, summary: bytes | None = None) -> Page[bytes]:
        seqs = row.seqs[start:end]
        first = seqs[0] if seqs else row.tail
        return Page(
            row.entries[start:end],
            first,
            summary,
            row.version,
            row.generation,
            len(row.entries),
            seqs,
        )

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
        if self._seen(session_id, write_id):
            return self._already(session_id)
        self._fence(session_id, fence)
        self._remember(session_id, write_id)
        row = self._live(session_id)
        if row is None:
            row = self._rows[session_id] = _Row(
                version=next(self._numbers) * 1000, generation=next(self._numbers)
            )
        row.entries.extend(entries)
        row.seqs.extend(range(row.tail, row.tail + len(entries)))
        row.tail += len(entries)
        trimmed = max_entries is not None and len(row.entries) > max_entries
        if max_entries is not None and trimmed:
            cut = len(row.entries) - max_entries
            del row.entries[:cut], row.seqs[:cut]
        row.version += 1
        self._expire_in(row, ttl)
        return Written(len(row.entries), row.version, trimmed)

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
        if self._seen(session_id, write_id):
            return self._already(session_id)
        old = self._live(session_id)
        if old is not None and not overwrite:
            return None
        self._fence(session_id, fence)
        self._remember(session_id, write_id)
        start = 0 if old is None else old.tail  # numbered on after every number given
        seqs = list(range(start, start + len(entries))) if numbers is None else list(numbers)
        tail = max(seqs[-1] + 1, start)
        row = self._rows[session_id] = _Row(list(entries), seqs, tail, summary)
        row.version = old.version + 1 if old is not None else next(self._numbers) * 1000
        row.generation = next(self._numbers)
        self._expire_in(row, ttl)
        return Written(len(row.entries), row.version)

    async def delete(self, session_id: str, *, write_id: str, fence: str | None) -> bool:
        if self._seen(session_id, write_id):
            return self._writes[session_id][write_id] is not False
        self._fence(session_id, fence)
        existed = self._live(session_id) is not None and self._rows.pop(session_id) is not None
        self._remember(session_id, write_id, existed)
        return existed

    async def compact(
        self, session_id: str, *, generation: int, before_seq: int, summary: bytes, write_id: str
    ) -> bool:
        if self._seen(session_id, write_id):
            return True
        row = self._live(session_id)
        if row is None or row.generation != generation:
            return False
        self._remember(session_id, write_id)
        folded = bisect_left(row.seqs, before_seq)
        del row.entries[:folded], row.seqs[:folded]
        row.summary = summary
        row.version += 1
        row.generation = next(self._numbers)
        return True

    async def pop(
        self, session_id: str, count: int, *, write_id: str, fence: str | None
    ) -> Popped[bytes]:
        if self._seen(session_id, write_id):
            done = self._already(session_id)
            return Popped([], done.length, done.version, applied=False)
        self._fence(session_id, fence)
        row = self._live(session_id)
        if row is None:
            return Popped([], 0, 0)
        popped = row.entries[-count:]
        if count >= len(row.entries):
            await self.delete(session_id, write_id=write_id, fence=fence)
            return Popped(popped, 0, 0)
        self._remember(session_id, write_id)
        del row.entries[-count:], row.seqs[-count:]  # the tail stays: the numbers are not reused
        row.version += 1
        row.generation = next(self._numbers)
        return Popped(popped, len(row.entries), row.version)

    async def read_range(
        self,
        session_id: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        touch: float | None,
    ) -> Page[bytes]:
        row = self._live(session_id)
        if row is None:
            return Page([], 0)
        if touch is not None:
            self._expire_in(row, touch)
        if after is not None:
            start = bisect_right(row.seqs, after)
            return self._page(row, start, min(len(row.seqs), start + limit))
        end = len(row.seqs) if before is None else bisect_left(row.seqs, before)
        return self._page(row, max(0, end - limit), end)

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
        if self._seen(session_id, write_id):
            return self._already(session_id)
        self._fence(session_id, fence)
        row = self._live(session_id)
        if row is None:
            return "missing"
        if version is not None and row.version != version:
            return "stale"
        at = bisect_left(row.seqs, seq)
        if at == len(row.seqs) or row.seqs[at] != seq:
            return "missing"
        end = len(row.entries) if truncate else at + 1
        if entry is None and at == 0 and end == len(row.entries):
            await self.delete(session_id, write_id=write_id, fence=fence)
            return Written(0, 0)
        self._remember(session_id, write_id)
        if entry is not None:
            row.entries[at] = entry
            at += 1
        del row.entries[at:end], row.seqs[at:end]
        row.version += 1
        row.generation = next(self._numbers)
        return Written(len(row.entries), row.version)

    async def snapshot(self, session_id: str) -> RawSession[bytes] | None:
        row = self._live(session_id)
        if row is None:
            return None
        ttl = None if row.expires_at is None else row.expires_at - self._clock()
        return RawSession(row.entries[:], row.summary, ttl, row.seqs[:])

    async def time_left(self, session_id: str) -> float | Literal[False] | None:
        row = self._live(session_id)
        if row is None:
            return False
        return None if row.expires_at is None else row.expires_at - self._clock()

    async def acquire_lease(self, session_id: str, token: str, ttl: float) -> bool:
        held = self._leases.get(session_id)
        if held is not None and held[1] > self._clock() and held[0] != token:
            return False
        self._leases[session_id] = (token, self._clock() + ttl)
        return True

    async def renew_lease(self, session_id: str, token: str, ttl: float) -> bool:
        held = self._leases.get(session_id)
        if held is None or held[0] != token:
            return False
        self._leases[session_id] = (token, self._clock() + ttl)
        return True

    async def release_lease(self, session_id: str, token: str) -> bool:
        if self._leases.get(session_id, ("", 0.0))[0] != token:
            return False
        del self._leases[session_id]
        return True

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        deadline = None if ttl is None else now + ttl
        self._index.setdefault(user_session, {})[conversation_id] = (now, deadline)

    async def list_conversations(
        self,
        user_session: str,
        *,
        now: float,
        offset: int,
        limit: int,
        after: tuple[float, str] | None = None,
    ) -> list[tuple[str, float]]:
        live = sorted(
            (
                (at, member)
                for member, (at, deadline) in self._index.get(user_session, {}).items()
                if (deadline is None or deadline > now) and (after is None or (at, member) < after)
            ),
            reverse=True,
        )
        return [(member, at) for at, member in live[offset : offset + limit]]

    async def drop_conversations(self, user_session: str) -> list[str]:
        return list(self._index.pop(user_session, {}))

    async def session_ids(self) -> AsyncIterator[str]:
        for session_id in list(self._rows):
            if self._live(session_id) is not None:
                yield session_id

    async def census(self) -> BackendCensus:
        rows = [row for session_id in list(self._rows) if (row := self._live(session_id))]
        return BackendCensus(
            sessions=len(rows),
            messages=sum(len(row.entries) for row in rows),
            storage_bytes=sum(len(entry) for row in rows for entry in row.entries),
        )

    def error_kind(self, exc: Exception) -> ErrorKind | None:
        return None

    async def aclose(self) -> None:
        pass
