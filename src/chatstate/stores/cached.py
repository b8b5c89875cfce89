"""A near cache in front of a store: warm loads from process memory, writes through.

Most useful in front of Redis when a load balancer sends each session to the same instance
(session affinity): the turns of a session then load from this process's memory, with no round
trip, and another instance's write is still seen within a bound you choose.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chatstate._checks import check_count, check_limit
from chatstate.errors import ConfigurationError
from chatstate.messages import Message
from chatstate.metrics import StoreWrapper
from chatstate.stores.base import TTL, VersionedStore

__all__ = ["CachedStore"]


@dataclass(slots=True)
class _Entry:
    messages: list[Message]
    complete: bool
    """The whole history, not only its newest part."""
    version: int
    checked_at: float

    def covers(self, limit: int | None) -> bool:
        return self.complete or (limit is not None and len(self.messages) >= limit)


class CachedStore(StoreWrapper):
    """``CachedStore(store)`` serves warm loads from memory and writes through to ``store``, which
    must number its writes (:class:`~chatstate.stores.base.VersionedStore`: every built-in store
    does).

    - ``max_staleness`` (default 1 s): a cached history is served without asking the store for
      this long after it was last confirmed current; then one cheap version check (a small
      read, no history transferred) confirms it or a full load replaces it. So a write by
      another instance is seen at most ``max_staleness`` later. ``timedelta(0)`` is strict mode:
      every load checks the version, and never serves a history that is not current.
    - ``max_sessions`` (default 10,000): the sessions kept, least recently used first out.

    This instance's own writes keep the cache current: an append whose new version follows the
    cached one extends the cached history (trimmed alike); any other write drops it.
    ``hits``, ``misses`` and ``version_checks`` count what the cache did.
    """

    def __init__(
        self,
        store: Any,
        *,
        max_staleness: timedelta = timedelta(seconds=1),
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(store, VersionedStore) or not getattr(store, "versioned", True):
            raise ConfigurationError(
                f"CachedStore needs a store that numbers its writes "
                f"(a VersionedStore); {store!r} does not"
            )
        if not isinstance(max_staleness, timedelta) or max_staleness < timedelta(0):
            raise ConfigurationError(
                f"max_staleness must be a timedelta >= 0, got {max_staleness!r}"
            )
        super().__init__(store)
        self.max_staleness = max_staleness.total_seconds()
        self.max_sessions = check_count(max_sessions, name="max_sessions")
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.hits = 0
        """Loads served from memory."""
        self.misses = 0
        """Loads that read the history from the store."""
        self.version_checks = 0
        """Loads that asked the store whether the cached history is current."""

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        limit = check_limit(limit)
        entry = self._entries.get(session_id)
        if entry is not None and entry.covers(limit):
            now = self._clock()
            if now - entry.checked_at >= self.max_staleness:
                self.version_checks += 1
                if await self.store.version(session_id) == entry.version:
                    entry.checked_at = now
                else:
                    entry = None
            if entry is not None:
                self.hits += 1
                self._entries.move_to_end(session_id)
                messages = entry.messages
                return messages[-limit:] if limit else ([] if limit == 0 else messages[:])
        self.misses += 1
        checked_at = self._clock()
        loaded: tuple[list[Message], int] = await self.store.load_versioned(session_id, limit=limit)
        messages, version = loaded
        if version:
            complete = limit is None or len(messages) < limit
            self._keep(session_id, _Entry(messages[:], complete, version, checked_at))
        else:
            self._entries.pop(session_id, None)
        return messages

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        appended: tuple[int, int] = await self.store.append_versioned(
            session_id, messages, max_messages=max_messages, ttl=ttl
        )
        length, version = appended
        entry = self._entries.get(session_id)
        if entry is None:
            return length
        if version == entry.version + 1:
            # No other write came between ours and the copy: it is current, extended alike.
            entry.messages.extend(messages)
            if len(entry.messages) > length:
                del entry.messages[:-length]
            entry.version = version
            entry.checked_at = self._clock()
        elif version != entry.version:
            del self._entries[session_id]
        return length

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        try:
            await self.store.save(session_id, messages, ttl=ttl)
        finally:  # whether it went through or not, the copy may be old now
            self._entries.pop(session_id, None)

    async def delete(self, session_id: str) -> bool:
        try:
            existed: bool = await self.store.delete(session_id)
        finally:
            self._entries.pop(session_id, None)
        return existed

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if name not in _OTHER_WRITES:
            return attribute

        async def write(session_id: str, *args: Any, **options: Any) -> Any:
            try:
                return await attribute(session_id, *args, **options)
            finally:  # the copy may be old now
                self._entries.pop(session_id, None)

        return write

    def _keep(self, session_id: str, entry: _Entry) -> None:
        self._entries[session_id] = entry
        self._entries.move_to_end(session_id)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)


_OTHER_WRITES = frozenset({"append_versioned", "compact", "restore"})
"""Writes lent through from the store as they are: each drops the cached copy."""
