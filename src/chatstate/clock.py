"""Where chatstate reads the time and waits for it to pass: a :class:`Clock`.

Whatever measures time in the background (the timeout and ``retry_after`` of summaries, the
interval of metric pollers and alerts, the time an alert is stamped with) takes ``clock=``. The
default, :data:`SYSTEM_CLOCK`, is the real one; :class:`chatstate.testing.FakeClock` moves only
when a test moves it, so no test sleeps to let time pass.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Protocol

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """A source of time, and of waits measured in it."""

    def monotonic(self) -> float:
        """Seconds that never go back (for intervals and deadlines)."""
        ...

    def time(self) -> float:
        """The wall clock, in Unix seconds (for timestamps)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    def fail_after(self, seconds: float) -> AbstractContextManager[object]:
        """A ``with`` block that is cancelled, and raises :class:`TimeoutError`, once it has
        run ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time`, :func:`anyio.sleep` and
    :func:`anyio.fail_after` (whose deadlines are on the event loop's monotonic clock)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SystemClock()"

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def fail_after(self, seconds: float) -> AbstractContextManager[object]:
        return anyio.fail_after(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
"""The default clock of everything that takes ``clock=``."""
