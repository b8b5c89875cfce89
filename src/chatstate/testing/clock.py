"""A :class:`~chatstate.clock.Clock` that moves only when a test moves it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

__all__ = ["FakeClock"]


class FakeClock:
    """A clock for tests: time stands still until :meth:`advance` (or ``clock.now += s``).

    ``await clock.sleep(s)`` and ``with clock.fail_after(s):`` wait until the test has advanced
    the clock by ``s``; :meth:`sleeping` waits until some task waits on the clock (a poller
    between two ticks, a summary under its timeout), so a test advances it at the right moment
    without sleeping itself. Calling the clock returns :attr:`now`, for the APIs that take a
    ``Callable[[], float]``.
    """

    def __init__(self, start: float = 1_000.0, *, wall: float = 1_767_225_600.0) -> None:
        self._now = start
        self._wall_offset = wall - start  # time() starts at 2026-01-01 00:00 UTC by default
        self._timers: list[tuple[float, anyio.CancelScope]] = []
        self._changed: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, waiting={len(self._timers)})"

    @property
    def now(self) -> float:
        """The monotonic time now; setting it moves the clock (to the past too, waking none)."""
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = value
        due = [timer for timer in self._timers if timer[0] <= value]
        self._timers = [timer for timer in self._timers if timer[0] > value]
        for _, scope in due:
            scope.cancel()

    def __call__(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, waking the sleeps and deadlines that fall due."""
        self.now = self._now + seconds

    @property
    def waiting(self) -> int:
        """Tasks waiting on this clock now (in :meth:`sleep` or under :meth:`fail_after`)."""
        return len(self._timers)

    async def sleeping(self, count: int = 1) -> None:
        """Wait until at least ``count`` tasks wait on this clock."""
        while len(self._timers) < count:
            if self._changed is None or self._changed.is_set():
                self._changed = anyio.Event()
            await self._changed.wait()

    async def sleep(self, seconds: float) -> None:
        with self._timer(seconds):
            await anyio.sleep_forever()

    @contextmanager
    def fail_after(self, seconds: float) -> Iterator[anyio.CancelScope]:
        with self._timer(seconds) as scope:
            yield scope
        if scope.cancelled_caught:
            raise TimeoutError

    @contextmanager
    def _timer(self, seconds: float) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope() as scope:
            timer = (self._now + seconds, scope)
            if seconds <= 0:
                scope.cancel()
            else:
                self._timers.append(timer)
                if self._changed is not None:
                    self._changed.set()
            try:
                yield scope
            finally:
                if timer in self._timers:
                    self._timers.remove(timer)
