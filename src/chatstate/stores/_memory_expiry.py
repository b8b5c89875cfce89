"""The in-memory backend's sessions and their expiry: an expiry heap, swept a chunk at a time on
the writes (no task of its own), and on demand."""

from __future__ import annotations

import heapq
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import anyio

__all__ = ["Expiries"]

_SWEEP_CHUNK = 1000


class _Session:
    __slots__ = (
        "created",
        "entries",
        "expires_at",
        "generation",
        "head",
        "indexed_at",
        "meta",
        "seqs",
        "summary",
        "tail",
        "updated",
        "version",
        "writes",
    )

    def __init__(self, writes: str = "") -> None:
        self.entries: list[Any] = []
        self.head = 0  # the sequence number of entries[0]
        # With gaps in the numbers (a pop or an edit removed entries): the number of each entry,
        # and the next number to give. None while they run on from head (the common case).
        self.seqs: list[int] | None = None
        self.tail = 0
        self.summary: Any = None
        self.expires_at: float | None = None
        self.indexed_at: float | None = None  # the time of its live entry in the expiry heap
        # Random to start with, so a session deleted and written again never repeats a number.
        self.version = secrets.randbits(48) + 1
        self.generation = secrets.randbits(48) + 1
        self.writes = writes  # the last write ids (see chatstate.stores._writes)
        self.meta: Any = None  # the metadata entry
        self.created = self.updated = time.time()  # wall-clock seconds

    def numbers(self) -> Sequence[int]:
        """The number of each entry (a range while they have no gaps)."""
        seqs = self.seqs
        if seqs is not None:
            return seqs
        return range(self.head, self.head + len(self.entries))

    def next_number(self) -> int:
        """The number the next appended entry takes."""
        return self.head + len(self.entries) if self.seqs is None else self.tail

    def gapped(self) -> list[int]:
        """The numbers as a list of their own, for a write that leaves gaps."""
        if self.seqs is None:
            self.tail = self.head + len(self.entries)
            self.seqs = list(range(self.head, self.tail))
        return self.seqs

    def settle(self) -> None:
        """After entries were removed: the head, and no list of numbers once they run on
        without a gap again."""
        seqs = self.seqs
        if seqs is None:
            return
        if seqs:
            self.head = seqs[0]
            if seqs[-1] - seqs[0] + 1 == len(seqs) and self.tail == seqs[-1] + 1:
                self.seqs = None


class Expiries:
    """The expiry side of :class:`~chatstate.stores.MemoryBackend`: the sessions (least recently
    used first), the heap of their expiries, and the sweep."""

    _sessions: OrderedDict[str, _Session]
    # (time, session_id): one live entry per session with an expiry, at or before it (the
    # session's indexed_at). A write that moves the expiry later pushes nothing (a sweep that
    # pops the entry early pushes it again at the expiry); one that moves it earlier pushes a
    # new entry, and the old one is stale: skipped when popped, and the heap is rebuilt when
    # stale entries outnumber the live ones.
    _expiry_heap: list[tuple[float, str]]
    _next_sweep: float
    _sweep_interval: float | None
    _clock: Callable[[], float]
    expirations: int

    async def sweep(self) -> int:
        """Reclaim every expired session now and return how many; yields between chunks."""
        removed = 0
        while True:
            count, finished = self._sweep_chunk(self._clock())
            removed += count
            if finished:
                return removed
            await anyio.sleep(0)

    def _expire(self, session_id: str) -> None:
        del self._sessions[session_id]
        self.expirations += 1

    def _set_expiry(
        self, session_id: str, session: _Session, seconds: float | None, now: float | None = None
    ) -> None:
        if seconds is None:
            session.expires_at = None
            return
        if now is None:
            now = self._clock()
        expires_at = session.expires_at = now + seconds
        indexed_at = session.indexed_at
        if indexed_at is None or expires_at < indexed_at:
            heap = self._expiry_heap
            heapq.heappush(heap, (expires_at, session_id))
            session.indexed_at = expires_at
            if len(heap) > 2 * len(self._sessions) + 1024:
                self._rebuild_heap()
        # The sweep rides on the writes: at most one chunk per sweep_interval, no task of its own.
        if self._sweep_interval is not None and now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval
            self._sweep_chunk(now)

    def _rebuild_heap(self) -> None:
        heap = []
        for session_id, session in self._sessions.items():
            session.indexed_at = session.expires_at
            if session.expires_at is not None:
                heap.append((session.expires_at, session_id))
        heapq.heapify(heap)
        self._expiry_heap = heap

    def _sweep_chunk(self, now: float) -> tuple[int, bool]:
        heap, sessions = self._expiry_heap, self._sessions
        removed = 0
        for _ in range(_SWEEP_CHUNK):
            if not heap or heap[0][0] > now:
                return removed, True
            indexed_at, session_id = heapq.heappop(heap)
            session = sessions.get(session_id)
            # A stale entry: the session was deleted, re-created or given an earlier expiry since.
            if session is None or session.indexed_at != indexed_at:
                continue
            expires_at = session.indexed_at = session.expires_at
            if expires_at is None:
                continue  # it expires no more
            if expires_at <= now:
                self._expire(session_id)
                removed += 1
            else:  # refreshed since: its entry goes back, at its expiry
                heapq.heappush(heap, (expires_at, session_id))
        return removed, False
