"""The task group of an ``async with`` owner (a Pipeline, a metrics poller): open from the
owner's ``__aenter__`` to its ``__aexit__``, so nothing started in it outlives the block."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

T = TypeVar("T")


async def concurrently(
    function: Callable[[T], Coroutine[Any, Any, object]], items: Iterable[T]
) -> None:
    """``await function(item)`` for every item at once, in a task group. The first error cancels
    the others and is raised as it is, not in an ExceptionGroup (as ``asyncio.gather`` did)."""
    try:
        async with anyio.create_task_group() as group:
            for item in items:
                group.start_soon(function, item)
    except BaseExceptionGroup as errors:
        failures, others = errors.split(Exception)
        if failures is None or others is not None:
            raise
        first: BaseException = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


class Background:
    """Holds one task group for its owner. Enter and leave it in the same task (anyio's rule for
    task groups and cancel scopes)."""

    __slots__ = ("_owner", "group")

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self.group: TaskGroup | None = None
        """The open task group; None outside the owner's ``async with``."""

    async def enter(self) -> TaskGroup:
        if self.group is not None:
            raise RuntimeError(f"{self._owner} is already running: enter it once at a time")
        group = anyio.create_task_group()
        await group.__aenter__()
        self.group = group
        return group

    async def exit(self, exc: BaseException | None, *, cancel: bool) -> bool:
        """Wait for the tasks of the group (cancelled first with ``cancel``, or when the owner's
        block raised). Returns what ``__aexit__`` returns. The block's own exception leaves it
        as it was raised: anyio's task groups would wrap it in an ExceptionGroup, which the
        caller of a pipeline or a poller has no reason to expect."""
        group = self.group
        if group is None:
            return False
        if cancel or exc is not None:
            group.cancel_scope.cancel()
        try:
            if exc is None:
                return bool(await group.__aexit__(None, None, None))
            return bool(await group.__aexit__(type(exc), exc, exc.__traceback__))
        except BaseExceptionGroup as errors:
            if exc is not None and errors.exceptions == (exc,):
                return False  # re-raised by the `async with` statement, unwrapped
            raise
        finally:
            self.group = None
