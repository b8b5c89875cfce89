"""The in-memory store: fast, per process, for development, tests, demos and single instances."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from chatstate._checks import check_count
from chatstate.clock import SYSTEM_CLOCK
from chatstate.stores._codec import Codec, EntryCodec, ObjectCodec
from chatstate.stores._core import BackendStore
from chatstate.stores._encryption import Encryption
from chatstate.stores._events import Hook
from chatstate.stores._memory_backend import MemoryBackend

__all__ = ["InMemoryStateStore", "MemoryBackend"]


class InMemoryStateStore(BackendStore[Any]):
    """History kept in this process's memory: a load is a dict lookup and a list slice (the
    immutable messages are shared; the returned list is the caller's). Safe for any number of
    tasks on one event loop; not for several threads.

    :param max_sessions: at most this many sessions; one more evicts the least recently used
        (loaded or written). ``None``: no cap.
    :param sweep_interval: expired sessions are never returned, and a write reclaims up to 1,000
        of them at most once per this many seconds (no background task; ``None``: never).
        :meth:`sweep` reclaims every expired one now.
    :param clock: a monotonic clock in seconds; a :class:`chatstate.clock.Clock` (such as
        :class:`chatstate.testing.FakeClock`) also times the leases, so a test moves both.
    :param max_message_bytes: refuse, with InvalidMessageError and nothing of the call stored, a
        message whose JSON is longer (default: no limit, and no cost).
    :param encryption: keep the messages sealed (:class:`~chatstate.Encryption`), opened on every
        load (a 16 MiB cache keeps recently opened ones).
    :param sliding_ttl: as for every store (:class:`~chatstate.stores.BackendStore`).
    :param hooks: as for every store (:class:`~chatstate.stores.BackendStore`).
    """

    backend: MemoryBackend
    _timing_mask = 15

    def __init__(
        self,
        *,
        max_sessions: int | None = 100_000,
        sweep_interval: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_message_bytes: int | None = None,
        encryption: Encryption | None = None,
        sliding_ttl: float | None = None,
        hooks: Sequence[Hook] = (),
    ) -> None:
        max_bytes = (
            None
            if max_message_bytes is None
            else check_count(max_message_bytes, name="max_message_bytes")
        )
        codec: Codec[Any]
        if encryption is None:
            codec = ObjectCodec(max_bytes=max_bytes)
        else:  # the messages are kept sealed, as bytes
            codec = EntryCodec.for_store(
                compress_over=None,
                compression="auto",
                message_cache_bytes=16 << 20,
                max_message_bytes=max_bytes,
                encryption=encryption,
            )
        super().__init__(
            MemoryBackend(max_sessions=max_sessions, sweep_interval=sweep_interval, clock=clock),
            codec=codec,
            sliding_ttl=sliding_ttl,
            hooks=hooks,
            # A chatstate Clock (a FakeClock in tests) also times the leases.
            clock=clock if callable(getattr(clock, "sleep", None)) else SYSTEM_CLOCK,  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        backend = self.backend
        return (
            f"InMemoryStateStore(sessions={backend.sessions_in_memory}, "
            f"max_sessions={backend._max_sessions})"
        )

    @property
    def sessions_in_memory(self) -> int:
        """Sessions held in memory now, expired ones not yet reclaimed included."""
        return self.backend.sessions_in_memory

    @property
    def evictions(self) -> int:
        """Sessions evicted because ``max_sessions`` was reached."""
        return self.backend.evictions

    @property
    def expirations(self) -> int:
        """Expired sessions reclaimed (by access or by a sweep)."""
        return self.backend.expirations

    async def sweep(self) -> int:
        """Reclaim every expired session now and return how many; yields between chunks."""
        return await self.backend.sweep()
