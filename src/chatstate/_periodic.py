"""Work done every ``interval`` while an ``async with`` block runs (:class:`Periodic`)."""

from __future__ import annotations

import logging
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from chatstate._background import Background
from chatstate._checks import check_ttl
from chatstate.clock import SYSTEM_CLOCK, Clock
from chatstate.errors import ConfigurationError
from chatstate.metrics import StateMetrics

logger = logging.getLogger("chatstate")


class Periodic:
    """Subclasses define :meth:`tick`; ``async with`` runs it now and then every ``interval``
    seconds of ``clock``, in a task group of its own, until the block ends (or :meth:`aclose`).
    A failing tick is logged and the next one runs on time."""

    interval: float
    clock: Clock = SYSTEM_CLOCK
    _background: Background | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                logger.exception("%s failed", type(self).__name__)
            await self.clock.sleep(self.interval)

    async def __aenter__(self) -> Self:
        if self._background is None:
            self._background = Background(type(self).__name__)
        group = await self._background.enter()
        group.start_soon(self._run, name=f"chatstate-{type(self).__name__}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._background is None:
            return False
        return await self._background.exit(exc, cancel=True)

    async def aclose(self) -> None:
        """Stop the background task (the end of ``async with`` does it), from the task that
        entered."""
        await self.__aexit__(None, None, None)


class MetricsPoller(Periodic):
    """Reads ``await store.metrics()`` now (:meth:`refresh`) and every ``interval`` of ``clock``
    inside ``async with``; keeps the latest reading for those who cannot await it."""

    def __init__(self, store: Any, interval: timedelta, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if not callable(getattr(store, "metrics", None)):
            raise ConfigurationError(
                f"{type(store).__name__} has no metrics(): build it as a backend of "
                "chatstate.stores.BackendStore"
            )
        self.store = store
        self.interval = check_ttl(interval, name="interval") or 0.0
        self.clock = clock
        self.latest: StateMetrics | None = None

    async def refresh(self) -> StateMetrics:
        """Read the store's metrics now."""
        self.latest = await self.store.metrics()
        return self.latest

    async def tick(self) -> None:
        await self.refresh()
