"""The near cache, an option of any store: warm loads from this process's memory, writes through.

Most useful in front of Redis (or Postgres) when a load balancer sends each session to the same
instance (session affinity): the turns of a session then load from memory with no round trip, and
another instance's write is still seen within a bound you choose.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from chatstate._checks import check_count
from chatstate.errors import ConfigurationError
from chatstate.messages import Message

__all__ = ["NearCache"]


@dataclass(slots=True)
class _Entry:
    messages: list[Message]
    complete: bool
    """The whole history, not only its newest part."""
    version: int
    checked_at: float

    def covers(self, limit: int | None) -> bool:
        return self.complete or (limit is not None and len(self.messages) >= limit)


class NearCache:
    """``BackendStore(..., near_cache=NearCache())`` (or the same option of a built-in store)
    keeps the histories this process loaded or wrote, and serves loads from them.

    - ``max_staleness`` (default 1 s): a kept history is served without asking the backend for
      this long after it was last confirmed current; then one cheap version check (no history
      transferred) confirms it or a full load replaces it. So a write by another instance is seen
      at most ``max_staleness`` later. ``timedelta(0)`` is strict: every load checks the version
      and never serves a history that is not current. With a ``sliding_ttl``, the check comes at
      least every half of it, and refreshes the expiry: a session that is being read never
      expires.
    - ``max_sessions`` (default 10,000): the sessions kept, least recently used first out.
    - ``clock``: a monotonic clock in seconds, to be replaced in tests.

    This process's own writes keep it current: an append that follows the kept version extends the
    kept history (trimmed alike); any other write drops it. A load that began before a write of
    this process ended never replaces what that write left. ``hits``, ``misses`` and
    ``version_checks`` count what it did. One ``NearCache`` serves one store.
    """

    def __init__(
        self,
        *,
        max_staleness: timedelta = timedelta(seconds=1),
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(max_staleness, timedelta) or max_staleness < timedelta(0):
            raise ConfigurationError(
                f"max_staleness must be a timedelta >= 0, got {max_staleness!r}"
            )
        self.max_staleness = max_staleness.total_seconds()
        self.max_sessions = check_count(max_sessions, name="max_sessions")
        self.clock = clock
        self._check_every = self.max_staleness
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # The last write of this process to each session, numbered; a load that began before it
        # (a smaller number) must not keep what it read. Marks forgotten past max_sessions raise
        # the floor, so a load that began before any of those never keeps what it read either.
        self._writes: OrderedDict[str, int] = OrderedDict()
        self._written = 0
        self._floor = 0
        self._owner: object = None
        self.hits = 0
        """Loads served from memory."""
        self.misses = 0
        """Loads that read the history from the backend."""
        self.version_checks = 0
        """Loads that asked the backend whether the kept history is current."""

    def __repr__(self) -> str:
        return (
            f"NearCache(max_staleness={self.max_staleness:g}s, sessions={len(self._entries)}, "
            f"hits={self.hits}, misses={self.misses})"
        )

    def bind(self, owner: object, sliding_ttl: float | None) -> NearCache:
        """Make this cache the one of ``owner`` (a store); ConfigurationError if it has one."""
        if self._owner is not None:
            raise ConfigurationError("a NearCache serves one store: give each store its own")
        self._owner = owner
        if sliding_ttl is not None:
            self._check_every = min(self.max_staleness, sliding_ttl / 2)
        return self

    def get(self, session_id: str, limit: int | None) -> _Entry | None:
        """The kept history of the session, if it covers ``limit``."""
        entry = self._entries.get(session_id)
        return entry if entry is not None and entry.covers(limit) else None

    def due(self, entry: _Entry, now: float) -> bool:
        """Whether ``entry`` must be confirmed before it is served."""
        return now - entry.checked_at >= self._check_every

    def served(self, session_id: str, entry: _Entry, limit: int | None) -> list[Message]:
        self.hits += 1
        self._entries.move_to_end(session_id)
        messages = entry.messages
        return messages[-limit:] if limit else ([] if limit == 0 else messages[:])

    def began(self) -> int:
        """A load from the backend begins: the mark to hand to :meth:`keep`."""
        self.misses += 1
        return self._written

    def keep(
        self,
        session_id: str,
        messages: list[Message],
        version: int,
        limit: int | None,
        began: int,
        checked_at: float,
    ) -> None:
        """Keep what a load read, unless a write of this process ended since it began."""
        if began < self._floor or self._writes.get(session_id, -1) > began:
            return
        if not version:
            self._entries.pop(session_id, None)
            return
        complete = limit is None or len(messages) < limit
        self._entries[session_id] = _Entry(messages[:], complete, version, checked_at)
        self._entries.move_to_end(session_id)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)

    def appended(self, session_id: str, messages: list[Message], length: int, version: int) -> None:
        """This process appended ``messages``, making ``version``: extend the kept history when
        no other write came between (a version is one more with every write), else drop it."""
        self._wrote(session_id)
        entry = self._entries.get(session_id)
        if entry is None:
            return
        if version == entry.version + 1:
            entry.messages.extend(messages)
            if len(entry.messages) > length:
                del entry.messages[:-length]
            entry.version = version
            entry.checked_at = self.clock()
        else:
            del self._entries[session_id]

    def dropped(self, session_id: str) -> None:
        """This process wrote the session otherwise (or a write's outcome is unknown)."""
        self._wrote(session_id)
        self._entries.pop(session_id, None)

    def _wrote(self, session_id: str) -> None:
        self._written += 1
        writes = self._writes
        writes[session_id] = self._written
        writes.move_to_end(session_id)
        while len(writes) > self.max_sessions:
            _, forgotten = writes.popitem(last=False)
            self._floor = max(self._floor, forgotten)
