"""A task that does something every ``interval`` while an ``async with`` block runs."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

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
