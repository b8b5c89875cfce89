"""The task group of an ``async with`` owner (a Pipeline, a metrics poller): open from the
owner's ``__aenter__`` to its ``__aexit__``, so nothing started in it outlives the block."""

from __future__ import annotations

import anyio
from anyio.abc import TaskGroup


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
