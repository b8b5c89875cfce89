"""The history operations of the store core: what a chat product's users click every day.

Every stored message has an id, the text of its sequence number (see
:mod:`chatstate.stores._backend`): unique within the session, never given twice in its life, kept
through trims, compaction and the edits and removals of other messages. On them:
:meth:`HistoryOps.history` (a page before or after an id, stable while turns arrive and old ones
are trimmed), :meth:`HistoryOps.pop`, :meth:`HistoryOps.undo` (the last whole turn),
:meth:`HistoryOps.edit_message` and :meth:`HistoryOps.delete_message` (by id, optionally
conditional on the session's version, never breaking a tool exchange).

Each write is one atomic step of the backend (one script, one transaction). Undo, edit and delete
first read the session to check what they change (one round trip), then write conditionally on
the version they read, so a turn that lands in between is never overwritten: the step is tried
again on the new history, or, with ``if_version``, refused with
:class:`~chatstate.errors.VersionConflictError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from chatstate._checks import check_session_id
from chatstate.errors import (
    ConfigurationError,
    CorruptEntryError,
    InvalidInputError,
    MessageNotFoundError,
    StateLoadError,
    StateSaveError,
    ToolExchangeError,
    VersionConflictError,
)
from chatstate.messages import Message, as_messages
from chatstate.stores._backend import Backend, Editing, Page, Written
from chatstate.stores._codec import Codec
from chatstate.stores._events import Operation
from chatstate.stores._reporting import Reporting
from chatstate.stores._reporting import clock as _clock
from chatstate.stores._writes import check_write_id, fence_for, new_write_id
from chatstate.stores.base import MAX_ID_DIGITS
from chatstate.window import is_valid_window

__all__ = ["HistoryOps", "HistoryPage", "StoredMessage"]

E = TypeVar("E")

_TRIES = 8
"""How many times undo, edit and delete read and write again when a turn landed in between."""

_MAX_PAGE = 10_000
"""The most messages a page of :meth:`HistoryOps.history` holds."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message of a session's history, with its id (unique within the session, and never
    given to another message of it)."""

    id: str
    message: Message


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of a session's history, oldest first, from :meth:`HistoryOps.history`.

    ``has_more``: whether the session holds more messages beyond the page in the direction it was
    read (older ones for a page of the newest or ``before`` an id, newer ones ``after`` an id).
    ``version``: the session's version when it was read (0: no session), to make an edit
    conditional on it.
    """

    messages: list[StoredMessage]
    version: int
    has_more: bool

    @property
    def ids(self) -> list[str]:
        """The ids of the page's messages, oldest first."""
        return [stored.id for stored in self.messages]

    @property
    def oldest_id(self) -> str | None:
        """The id to read the page before this one with (``before=``); None for an empty page."""
        return self.messages[0].id if self.messages else None

    @property
    def newest_id(self) -> str | None:
        """The id to read the page after this one with (``after=``); None for an empty page."""
        return self.messages[-1].id if self.messages else None


def _number(message_id: object, name: str = "message_id") -> int:
    """The sequence number an id names; InvalidInputError for anything that is not an id."""
    if type(message_id) is str and message_id.isascii() and message_id.isdigit():
        if len(message_id) <= MAX_ID_DIGITS:
            return int(message_id)
    raise InvalidInputError(
        f"{name} must be a message id as the store gives them (decimal digits), got {message_id!r}"
    )


class HistoryOps(Reporting, Generic[E]):
    """History pages, pops, undo, edits and removals by id: mixed into
    :class:`~chatstate.stores.BackendStore`."""

    backend: Backend[E]
    _codec: Codec[E]
    _on_corrupt: Literal["skip", "raise"]
    _touch: float | None

    def _wrote(self, session_id: str) -> None:  # given by BackendStore (the near cache)
        raise NotImplementedError

    # -- reads -----------------------------------------------------------------------------------

    async def history(
        self,
        session_id: str,
        *,
        limit: int = 50,
        before: str | None = None,
        after: str | None = None,
    ) -> HistoryPage:
        """A page of the session's history with the messages' ids, oldest first: the newest
        ``limit`` messages, or the newest ``limit`` older than the message ``before`` names, or
        the oldest ``limit`` newer than the one ``after`` names (one round trip). The page stays
        stable while turns are appended and old messages are trimmed: read the next one with
        ``before=page.oldest_id``. An id no longer stored still works as a cursor (the page
        starts where it was)."""
        session_id = check_session_id(session_id)
        if type(limit) is not int or not 1 <= limit <= _MAX_PAGE:
            raise ConfigurationError(f"limit must be an int from 1 to {_MAX_PAGE}, got {limit!r}")
        if before is not None and after is not None:
            raise InvalidInputError("give before= or after=, not both")
        below = None if before is None else _number(before, "before")
        above = None if after is None else _number(after, "after")
        started = _clock()
        try:
            page = await self._editing("load", session_id, started).read_range(
                session_id, before=below, after=above, limit=limit + 1, touch=self._touch
            )
        except Exception as exc:
            self._fail(exc, "load", session_id, started, StateLoadError, "loading")
        stored = self._numbered(page, session_id, self._on_corrupt)
        has_more = len(page.entries) > limit
        if has_more:
            stored = stored[:limit] if above is not None else stored[-limit:]
        self._report("load", session_id, started, len(stored))
        return HistoryPage(stored, page.version, has_more)

    # -- writes ----------------------------------------------------------------------------------

    async def pop(
        self, session_id: str, count: int = 1, *, write_id: str | None = None
    ) -> list[Message]:
        """Remove the newest ``count`` messages, atomically, and return them, oldest first (the
        expiry kept; their ids are not given again). A pop that empties the session deletes it.
        ``write_id`` as for :meth:`~chatstate.stores.BackendStore.append`: a retried pop is not
        applied twice (it returns what its first run removed where the backend keeps that, else
        nothing). To remove a whole turn, never half a tool exchange, use :meth:`undo`."""
        session_id = check_session_id(session_id)
        if type(count) is not int or count < 1:
            raise ConfigurationError(f"count must be a positive int, got {count!r}")
        token = new_write_id() if write_id is None else check_write_id(write_id)
        pop = getattr(self.backend, "pop", None)
        if pop is None:
            raise ConfigurationError(f"the backend {self.backend.name!r} has no pop()")
        started = _clock()
        try:
            popped = await pop(session_id, count, write_id=token, fence=fence_for(self, session_id))
        except Exception as exc:
            self._fail(
                exc, "pop", session_id, started, StateSaveError, "popping from", (),
                write_id or token,
            )  # fmt: skip
        finally:
            self._wrote(session_id)
        messages, skipped = self._codec.decode(
            popped.entries, on_corrupt="skip", session_id=session_id
        )
        if skipped:
            self._skipped(skipped, session_id)
        self._report("pop", session_id, started, len(messages))
        return messages

    async def undo(self, session_id: str, *, write_id: str | None = None) -> list[Message]:
        """Remove the last whole turn: the newest ``user`` message and everything after it (the
        reply, and any tool exchange), atomically; return what it removed, oldest first. A
        session without a user message is left as it is (and ``[]`` returned). A turn that
        lands meanwhile is never removed in its place: the undo reads again and removes the
        newest turn then. A retried undo (``write_id`` as for
        :meth:`~chatstate.stores.BackendStore.append`) whose first run was applied removes
        nothing more and returns ``[]``."""
        session_id = check_session_id(session_id)
        token = new_write_id() if write_id is None else check_write_id(write_id)
        for _ in range(_TRIES):
            started = _clock()
            numbered, version = await self._whole(session_id, started)
            turn = next(
                (at for at in range(len(numbered) - 1, -1, -1) if numbered[at][1].role == "user"),
                None,
            )
            if turn is None:
                return []
            done = await self._edit(
                "pop", session_id, numbered[turn][0], None, True, version, token, started
            )
            if isinstance(done, Written):
                removed = [message for _, message in numbered[turn:]] if done.applied else []
                self._report("pop", session_id, started, len(removed))
                return removed
        raise self._busy(session_id, token)

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
        """Replace the message ``message_id`` names with ``message`` (it keeps the id), and with
        ``truncate_after`` remove every message after it (the "edit and resend" flow: then run
        the turn again, as :meth:`~chatstate.Pipeline.regenerate` does). Returns the session's
        new version. The expiry and the other messages' ids stay.

        An edit that would break a tool exchange (a call whose result follows it, changed or
        left without it; a result changed to answer another call) raises
        :class:`~chatstate.errors.ToolExchangeError`; an id that names no stored message
        :class:`~chatstate.errors.MessageNotFoundError`; with ``if_version``, a session written
        since that version :class:`~chatstate.errors.VersionConflictError`. Nothing is written
        in any of these cases."""
        (new,) = as_messages([message])
        return await self._change(session_id, message_id, new, truncate_after, if_version, write_id)

    async def delete_message(
        self,
        session_id: str,
        message_id: str,
        *,
        if_version: int | None = None,
        write_id: str | None = None,
    ) -> int:
        """Remove the one message ``message_id`` names; the others keep their ids. Returns the
        session's new version (0: it was the last message, and the session is deleted). Errors
        as for :meth:`edit_message`: a call or a result of a tool exchange cannot be removed
        alone (remove the exchange's turn with :meth:`undo`, or edit with
        ``truncate_after``)."""
        return await self._change(session_id, message_id, None, False, if_version, write_id)

    # -- internals -------------------------------------------------------------------------------

    async def _change(
        self,
        session_id: str,
        message_id: str,
        new: Message | None,
        truncate: bool,
        if_version: int | None,
        write_id: str | None,
    ) -> int:
        session_id = check_session_id(session_id)
        seq = _number(message_id)
        if if_version is not None and (type(if_version) is not int or if_version < 0):
            raise ConfigurationError(f"if_version must be a version (an int), got {if_version!r}")
        token = new_write_id() if write_id is None else check_write_id(write_id)
        entry = None if new is None else self._codec.encode([new], session_id=session_id)[0]
        for _ in range(_TRIES):
            started = _clock()
            numbered, version = await self._whole(session_id, started)
            if if_version is not None and version != if_version:
                raise self._conflict(session_id, if_version, version)
            at = next((i for i, (number, _) in enumerate(numbered) if number == seq), None)
            if at is not None:
                history = [message for _, message in numbered]
                changed = history[:at] + ([] if new is None else [new])
                if not truncate:
                    changed += history[at + 1 :]
                if is_valid_window(history) and not is_valid_window(changed):
                    raise ToolExchangeError(
                        f"{'editing' if new is not None else 'removing'} message {message_id!r} "
                        f"of session {session_id!r} would break a tool exchange (a call without "
                        "its result, or a result without its call); nothing was written"
                    )
            # Not found, the write still goes: a retry whose first run removed the message is
            # recognised by its write id; anything else is "missing".
            done = await self._edit(
                "edit", session_id, seq, entry, truncate, version, token, started
            )
            if isinstance(done, Written):
                self._report("edit", session_id, started, 1)
                return done.version
            if done == "missing":
                raise MessageNotFoundError(
                    f"session {session_id!r} has no message {message_id!r} (removed, trimmed or "
                    "folded into its summary, or never stored); nothing was written",
                    session_id=session_id,
                    message_id=message_id,
                )
            if if_version is not None:
                raise self._conflict(session_id, if_version, None)
        raise self._busy(session_id, token)

    async def _whole(
        self, session_id: str, started: float
    ) -> tuple[list[tuple[int, Message]], int]:
        """The session's messages with their numbers (unreadable ones left out), and its
        version: what an undo or an edit checks before it writes."""
        try:
            page = await self.backend.read(
                session_id, limit=None, summary=False, touch=None, numbers=True
            )
        except Exception as exc:
            self._fail(exc, "load", session_id, started, StateLoadError, "loading")
        return [(int(s.id), s.message) for s in self._numbered(page, session_id, "skip")], (
            page.version
        )

    async def _edit(
        self,
        operation: Operation,
        session_id: str,
        seq: int,
        entry: E | None,
        truncate: bool,
        version: int,
        token: str,
        started: float,
    ) -> Written | Literal["missing", "stale"]:
        backend = self._editing(operation, session_id, started)
        try:
            return await backend.edit(
                session_id,
                seq,
                entry,
                truncate=truncate,
                version=version,
                write_id=token,
                fence=fence_for(self, session_id),
            )
        except Exception as exc:
            self._fail(exc, operation, session_id, started, StateSaveError, "editing", (), token)
        finally:
            self._wrote(session_id)

    def _editing(self, operation: Operation, session_id: str, started: float) -> Editing[E]:
        """The backend's Editing half; ConfigurationError for a backend without it."""
        backend: Any = self.backend
        if not callable(getattr(backend, "edit", None)) or not callable(
            getattr(backend, "read_range", None)
        ):
            raise ConfigurationError(
                f"the backend {self.backend.name!r} has no read_range() and edit() (the "
                "chatstate.stores.Editing protocol): it has no history operations"
            )
        editing: Editing[E] = backend
        return editing

    def _numbered(
        self, page: Page[E], session_id: str, on_corrupt: Literal["skip", "raise"]
    ) -> list[StoredMessage]:
        """The page's messages with their ids; an unreadable entry skipped (counted) or raised,
        as ``on_corrupt`` says."""
        seqs = page.seqs()
        try:
            messages, _ = self._codec.decode(
                page.entries, on_corrupt="raise", session_id=session_id
            )
        except CorruptEntryError:
            if on_corrupt == "raise":
                raise
            kept = []
            for seq, entry in zip(seqs, page.entries, strict=True):
                decoded, skipped = self._codec.decode(
                    [entry], on_corrupt="skip", session_id=session_id
                )
                if skipped:
                    self._skipped(skipped, session_id)
                kept += [StoredMessage(str(seq), message) for message in decoded]
            return kept
        return [StoredMessage(str(seq), m) for seq, m in zip(seqs, messages, strict=True)]

    def _conflict(self, session_id: str, expected: int, actual: int | None) -> VersionConflictError:
        now = "" if actual is None else f" (it is {actual} now)"
        return VersionConflictError(
            f"session {session_id!r} is no longer at version {expected}{now}: it was written "
            "since it was read; nothing was written",
            session_id=session_id,
            expected=expected,
            actual=actual,
        )

    def _busy(self, session_id: str, token: str) -> StateSaveError:
        return StateSaveError(
            f"session {session_id!r} was written by other turns on each of {_TRIES} tries; "
            "nothing was written (retry later, with the same write_id)",
            session_id=session_id,
            write_id=token,
        )
