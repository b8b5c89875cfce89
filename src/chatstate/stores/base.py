"""The :class:`StateStore` protocol that every store implements."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from types import TracebackType
from typing import Protocol, Self, TypeAlias, runtime_checkable

from chatstate.messages import Message

__all__ = ["TTL", "SessionLeases", "StateStore", "VersionedStore"]

TTL: TypeAlias = timedelta | float | None
"""A time to live: a timedelta, a number of seconds, or None for never."""


@runtime_checkable
class StateStore(Protocol):
    """Where conversation history lives, one ordered list of messages per session.

    A third-party store fits without subclassing: any class with these methods is a ``StateStore``
    (and can prove it against :class:`chatstate.testing.StateStoreConformance`). Every method is
    safe to call concurrently from many tasks of one event loop. Bad input (an invalid session id,
    something that is not a :class:`Message`, an out-of-range option) raises a subclass of
    :class:`~chatstate.errors.InvalidInputError` before anything is changed.
    """

    async def load(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        """Return the newest ``limit`` messages of the session (all if None), oldest first.

        An unknown or expired session has no messages: ``[]``. The list is the caller's own to
        change.
        """
        ...

    async def save(self, session_id: str, messages: Sequence[Message], *, ttl: TTL = None) -> None:
        """Replace the whole history of the session, atomically. An empty sequence deletes it."""
        ...

    async def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> int:
        """Append ``messages`` atomically, keep the newest ``max_messages`` (None or -1: all) and
        set the session to expire ``ttl`` from now (None: never). Returns the new length.

        Either every message is stored or, with an error, none is; a failed append raises
        :class:`~chatstate.errors.StateSaveError` carrying the messages.
        """
        ...

    async def delete(self, session_id: str) -> bool:
        """Forget the session now. Returns whether it existed."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources (connections, background tasks). Idempotent."""
        ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@runtime_checkable
class SessionLeases(Protocol):
    """A store that can serialise the turns of a session across processes (optional).

    ``async with store.lease(session_id, ttl=30, timeout=10):`` holds the session's lease: no other
    holder, in any process sharing the store, gets it until it is released or, if its holder died,
    until ``ttl`` seconds pass without renewal. It is renewed while held. Raises
    :class:`~chatstate.errors.LeaseTimeoutError` when not taken within ``timeout`` seconds.
    """

    def lease(
        self, session_id: str, *, ttl: float, timeout: float
    ) -> AbstractAsyncContextManager[None]: ...


@runtime_checkable
class VersionedStore(Protocol):
    """A store that numbers each session's writes (optional): what lets a near cache know,
    without reading the history, whether its copy is still current.

    A session's version changes with every append and save, and is 0 for a session that does not
    exist; a session deleted and written again does not repeat a version a reader saw.
    """

    async def version(self, session_id: str) -> int: ...

    async def load_versioned(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], int]: ...

    async def append_versioned(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> tuple[int, int]: ...
