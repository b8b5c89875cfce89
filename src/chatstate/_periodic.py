"""A task that does something every ``interval`` while an ``async with`` block runs."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from chatstate._checks import check_ttl
from chatstate.errors import ConfigurationError
from chatstate.metrics import StateMetrics

logger = logging.getLogger("chatstate")


class Periodic:
    """Subclasses define :meth:`tick`; ``async with`` runs it now and every ``interval`` seconds
    in the background until the block ends (or :meth:`aclose`). A failing tick is logged and
    the next one runs on time."""

    interval: float
    _task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                logger.exception("%s failed", type(self).__name__)
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Self:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"chatstate-{type(self).__name__}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the background task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])


class MetricsPoller(Periodic):
    """Reads ``await store.metrics()`` now (:meth:`refresh`) and every ``interval`` inside
    ``async with``; keeps the latest reading for those who cannot await it."""

    def __init__(self, store: Any, interval: timedelta) -> None:
        if not callable(getattr(store, "metrics", None)):
            raise ConfigurationError(
                f"{type(store).__name__} has no metrics(): wrap it in InstrumentedStore"
            )
        self.store = store
        self.interval = check_ttl(interval, name="interval") or 0.0
        self.latest: StateMetrics | None = None

    async def refresh(self) -> StateMetrics:
        """Read the store's metrics now."""
        self.latest = await self.store.metrics()
        return self.latest

    async def tick(self) -> None:
        await self.refresh()
