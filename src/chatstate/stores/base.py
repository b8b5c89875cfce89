"""The :class:`StateStore` protocol that every store implements."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias, runtime_checkable

from chatstate._checks import check_ttl
from chatstate.errors import InvalidInputError, InvalidMessageError
from chatstate.messages import Message, as_messages

if TYPE_CHECKING:
    from chatstate.stores._history import HistoryPage
    from chatstate.stores._metadata import SessionInfo

__all__ = [
    "TTL",
    "Fold",
    "SessionHistory",
    "SessionLeases",
    "SessionMetadata",
    "SessionSnapshot",
    "SessionSummaries",
    "SessionTransfer",
    "StateStore",
    "VersionedStore",
]

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


Fold: TypeAlias = Callable[[list[Message], Message | None], Awaitable[tuple[int, Message] | None]]
"""Given a session's whole history and its summary, returns how many of the oldest messages a new
summary takes the place of, and that summary; or None to leave the session as it is."""


@runtime_checkable
class SessionHistory(Protocol):
    """A store whose messages have ids, with the history operations of chat products (optional;
    every store built on :class:`~chatstate.stores.BackendStore` over a backend with
    :class:`~chatstate.stores.Editing` has them): pages of history by id, pop, undo, and edits
    and removals by id (see :mod:`chatstate.stores._history` for each)."""

    async def history(
        self,
        session_id: str,
        *,
        limit: int = 50,
        before: str | None = None,
        after: str | None = None,
    ) -> HistoryPage:
        """A page of the session's messages with their ids, oldest first."""
        ...

    async def pop(
        self, session_id: str, count: int = 1, *, write_id: str | None = None
    ) -> list[Message]:
        """Remove the newest ``count`` messages, atomically, and return them."""
        ...

    async def undo(self, session_id: str, *, write_id: str | None = None) -> list[Message]:
        """Remove the last whole turn (the newest user message and what follows it)."""
        ...

    async def edit_message(
        self,
        session_id: str,
        message_id: str,
        message: Message,
        *,
        truncate_after: bool = False,
        if_version: int | None = None,
        write_id: str | None = None,
    ) -> int:
        """Replace one message by id (optionally removing those after it); the new version."""
        ...

    async def delete_message(
        self,
        session_id: str,
        message_id: str,
        *,
        if_version: int | None = None,
        write_id: str | None = None,
    ) -> int:
        """Remove one message by id; the new version (0: the session is gone)."""
        ...


@runtime_checkable
class SessionSummaries(Protocol):
    """A store that keeps a summary with each session (optional): a message standing for the
    history that was folded into it, loaded with the history, expiring and deleted with it.

    ``save`` replaces the summary too (it is dropped: it summarised another history).
    """

    async def load_with_summary(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], Message | None]:
        """:meth:`StateStore.load`, and the session's summary (None if it has none), in one
        round trip."""
        ...

    async def compact(self, session_id: str, fold: Fold) -> bool:
        """Fold the oldest messages of the session into its summary.

        Reads the whole history and the summary, and awaits ``fold(history, summary)`` (a
        session with no history is left alone). When it returns ``(count, summary)``, with
        ``0 < count < len(history)``, ``summary`` is stored and the first ``count`` messages
        removed, in one atomic step, with the session's expiry. No lock is held while ``fold``
        runs: turns go on meanwhile. What they appended is kept, and what their trims removed
        from the head is not removed twice; but if the session was otherwise changed (another
        fold, a save, a delete), nothing is. Returns whether it changed the session.
        """
        ...


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """A whole session as it stood at one instant: its history, oldest first, its summary (None
    if it has none), the seconds it had left to live (None: no expiry), and the messages' ids
    (one per message, as :meth:`~chatstate.stores.SessionHistory.history` gives them; None: a
    restore numbers them afresh), and its metadata (None: none; see
    :meth:`~chatstate.stores.BackendStore.set_metadata`). Two snapshots are equal when their
    contents are: the ids take no part in it."""

    messages: list[Message] = field(default_factory=list)
    summary: Message | None = None
    ttl: float | None = None
    ids: list[str] | None = field(default=None, compare=False)
    metadata: dict[str, Any] | None = None


@runtime_checkable
class SessionMetadata(Protocol):
    """A store that keeps a small JSON document per session (optional; the built-in stores do):
    a title, tags, anything of the application's, with the times the store keeps. See
    :class:`~chatstate.stores.SessionInfo`."""

    async def metadata(self, session_id: str) -> SessionInfo | None:
        """The session's metadata and times; None if there is no session."""
        ...

    async def set_metadata(
        self, session_id: str, metadata: Mapping[str, Any] | None, *, write_id: str | None = None
    ) -> bool:
        """Replace the session's metadata (None: remove it); False if there is no session."""
        ...

    async def load_with_metadata(
        self, session_id: str, *, limit: int | None = None
    ) -> tuple[list[Message], SessionInfo | None]:
        """The history and the metadata, in one step."""
        ...


@runtime_checkable
class SessionTransfer(Protocol):
    """A store that can read and write a whole session at once (optional): what exports, imports
    and forks are made of.

    ``snapshot`` reads the history, the summary and the time left in one atomic read; ``restore``
    writes them as the whole session in one atomic write, and never replaces a session that
    exists unless ``overwrite`` is given. Between the two, no lock is held: a fork copies the
    session as it was when it was read.
    """

    async def snapshot(self, session_id: str) -> SessionSnapshot | None:
        """The session as it stands, or None if it does not exist (or has expired)."""
        ...

    async def restore(
        self, session_id: str, snapshot: SessionSnapshot, *, overwrite: bool = False
    ) -> bool:
        """Write ``snapshot`` as the whole session (its ``ttl`` from now) in one atomic step and
        return True; or, if the session exists and ``overwrite`` is false, write nothing and
        return False. A snapshot without messages raises InvalidInputError."""
        ...


async def run_fold(
    fold: Fold, history: list[Message], summary: Message | None
) -> tuple[int, Message] | None:
    """Await ``fold`` and check what it returned (stores share this)."""
    result = await fold(history, summary)
    if result is None:
        return None
    if not (isinstance(result, tuple) and len(result) == 2):
        raise InvalidInputError(f"a fold must return (count, summary) or None, got {result!r}")
    count, new_summary = result
    if type(count) is not int or not 0 < count < len(history):
        raise InvalidInputError(
            f"a fold must fold 1 to {len(history) - 1} of the {len(history)} messages (at least "
            f"one stays), got {count!r}"
        )
    if not isinstance(new_summary, Message):
        raise InvalidInputError(
            f"a fold's summary must be a chatstate.Message, got {type(new_summary).__name__}"
        )
    return count, new_summary


def check_snapshot(snapshot: object) -> tuple[list[Message], Message | None, float | None]:
    """A snapshot's messages, summary and TTL in seconds, checked (stores share this; see
    :func:`snapshot_numbers` for its ids)."""
    if not isinstance(snapshot, SessionSnapshot):
        raise InvalidInputError(f"expected a SessionSnapshot, got {type(snapshot).__name__}")
    messages = as_messages(snapshot.messages)
    if not messages:
        raise InvalidInputError("a snapshot to restore must hold at least one message")
    if snapshot.summary is not None and not isinstance(snapshot.summary, Message):
        raise InvalidMessageError(
            f"a snapshot's summary must be a chatstate.Message or None, got "
            f"{type(snapshot.summary).__name__}"
        )
    return messages, snapshot.summary, check_ttl(snapshot.ttl)


MAX_ID_DIGITS = 15
"""The most digits of a message id: every backend keeps numbers below 10**15 exactly (Redis's
scripts count in doubles)."""


def snapshot_numbers(snapshot: SessionSnapshot) -> list[int] | None:
    """The sequence numbers a snapshot's ``ids`` name, checked: one per message, each a message
    id (decimal digits), strictly increasing; None for no ids."""
    ids = snapshot.ids
    if ids is None:
        return None
    if not isinstance(ids, list | tuple) or len(ids) != len(snapshot.messages):
        raise InvalidInputError(
            f"a snapshot's ids must be a list of one id per message ({len(snapshot.messages)}), "
            f"got {type(ids).__name__}"
            + (f" of {len(ids)}" if isinstance(ids, list | tuple) else "")
        )
    numbers = []
    for index, each in enumerate(ids):
        if (
            type(each) is not str
            or not (each.isascii() and each.isdigit())
            or len(each) > MAX_ID_DIGITS
        ):
            raise InvalidInputError(f"a snapshot's ids[{index}] is not a message id: {each!r}")
        numbers.append(int(each))
    if any(later <= earlier for earlier, later in pairwise(numbers)):
        raise InvalidInputError("a snapshot's ids must grow from the first message to the last")
    return numbers
