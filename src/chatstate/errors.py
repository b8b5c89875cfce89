"""The exceptions chatstate raises.

Every error is a :class:`ChatStateError`, so one ``except`` catches them all; errors of the layers
below (pydantic, a store's client library, a provider's HTTP client) are translated at the boundary
and chained with ``raise ... from exc``, so callers never have to catch a dependency's exceptions.

::

    ChatStateError
    ├── InvalidInputError (also ValueError): bad input, rejected before anything is stored
    │   ├── InvalidSessionIdError
    │   ├── InvalidMessageError
    │   ├── ToolExchangeError: an edit or removal would break a tool exchange
    │   └── ConfigurationError
    ├── StoreError: a state store failed
    │   ├── StateLoadError: history could not be loaded
    │   ├── StateSaveError: a write was not applied (carries its messages and write id)
    │   │   └── OutcomeUnknownError: a write was sent and no reply came: it may have been applied
    │   ├── WrongTypeError: a session's key holds data that chatstate did not write
    │   ├── LeaseTimeoutError: another instance held a session's lease for too long
    │   ├── LeaseLostError: a turn's lease ran out while the turn ran; the turn was cancelled
    │   ├── SessionExistsError: a session to be created already exists (an import, a fork)
    │   ├── SessionNotFoundError (also LookupError): a session to be read does not exist
    │   ├── MessageNotFoundError (also LookupError): no message of the session has the id
    │   ├── VersionConflictError: a write conditional on a version found another one
    │   └── CorruptEntryError: a stored entry cannot be decoded
    │       ├── UnsupportedFormatError: an entry written by a newer format version
    │       └── DecryptionError: an encrypted entry was tampered with or needs another key
    │           └── UnknownKeyError: an encrypted entry names a key that is not given
    ├── ProviderError: the model provider failed or answered with something that is not a reply
    ├── PipelineError: the middleware chain is misassembled (for example, nothing produced a reply)
    └── ToolRoundsError: the model still called tools after the turn's last round of them
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatstate.messages import Message

__all__ = [
    "ChatStateError",
    "ConfigurationError",
    "CorruptEntryError",
    "DecryptionError",
    "InvalidInputError",
    "InvalidMessageError",
    "InvalidMetadataError",
    "InvalidSessionIdError",
    "LeaseLostError",
    "LeaseTimeoutError",
    "MessageNotFoundError",
    "OutcomeUnknownError",
    "PipelineError",
    "ProviderError",
    "SessionExistsError",
    "SessionNotFoundError",
    "StateLoadError",
    "StateSaveError",
    "StoreError",
    "ToolExchangeError",
    "ToolRoundsError",
    "UnknownKeyError",
    "UnsupportedFormatError",
    "VersionConflictError",
    "WrongTypeError",
]


class ChatStateError(Exception):
    """Root of every error raised by chatstate."""


class InvalidInputError(ChatStateError, ValueError):
    """Input was rejected before anything was read or stored."""


class InvalidSessionIdError(InvalidInputError):
    """A session id is empty, too long, not a string or holds control characters."""


class InvalidMessageError(InvalidInputError):
    """Something that should be a valid :class:`~chatstate.Message` is not."""


class InvalidMetadataError(InvalidInputError):
    """A session's metadata is not a JSON object the store can keep (see
    :func:`chatstate.stores.check_metadata`)."""


class ConfigurationError(InvalidInputError):
    """An option or a configuration value is out of its range."""


class StoreError(ChatStateError):
    """A state store failed. ``session_id`` names the session, where one was involved."""

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


class StateLoadError(StoreError):
    """The history of a session could not be loaded."""


class StateSaveError(StoreError):
    """A write (an append, save, delete or restore) was certainly not applied: nothing of it is
    stored. ``messages`` holds the messages it was to store, in order, and ``write_id`` its
    identity: retry with both (``store.append(session_id, error.messages,
    write_id=error.write_id)``).

    Its subclass :class:`OutcomeUnknownError` says that the write may have been applied; the
    same retry is right for both, since a store applies a write id at most once.
    """

    def __init__(
        self,
        message: str,
        *,
        session_id: str | None = None,
        messages: Sequence[Message] = (),
        write_id: str | None = None,
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.messages: tuple[Message, ...] = tuple(messages)
        self.write_id = write_id


class OutcomeUnknownError(StateSaveError):
    """A write was sent and no reply came (a timeout, a connection lost after sending): it may or
    may not have been applied. Retrying it with its ``write_id`` is safe: a write the store has
    already applied is recognised and not applied again (within the last 32 writes of the
    session; see :func:`chatstate.stores.BackendStore.append`)."""


class WrongTypeError(StoreError):
    """A session's key holds data of another type (not written by chatstate); it is left as is."""


class LeaseLostError(StoreError):
    """A turn's lease ran out while the turn ran (renewals refused, or failing for its whole
    ttl): another instance may hold it now, so the turn was cancelled."""


class LeaseTimeoutError(StoreError):
    """A session's turn lease could not be taken in time: another turn of the session (perhaps in
    another instance) held it all along."""


class CorruptEntryError(StoreError):
    """A stored entry cannot be decoded into a message."""


class UnsupportedFormatError(CorruptEntryError):
    """A stored entry was written in a format this version of chatstate does not know."""


class DecryptionError(CorruptEntryError):
    """An encrypted entry failed authentication: it was changed after it was written, moved from
    another session, or encrypted with a key other than the one its key id names here."""


class UnknownKeyError(DecryptionError):
    """An encrypted entry names a key id that the store was not given. ``key_id`` names it."""

    def __init__(self, message: str, *, session_id: str | None = None, key_id: str) -> None:
        super().__init__(message, session_id=session_id)
        self.key_id = key_id


class SessionNotFoundError(StoreError, LookupError):
    """A session that had to exist (the source of a fork) does not, or has expired."""


class SessionExistsError(StoreError):
    """A session that was to be created (by an import or a fork) already exists; nothing was
    written. Pass ``overwrite=True`` to replace it."""


class MessageNotFoundError(StoreError, LookupError):
    """No message of the session has the id given (it was removed, trimmed or folded into the
    summary, or never was); nothing was written. ``message_id`` names it."""

    def __init__(self, message: str, *, session_id: str | None = None, message_id: str) -> None:
        super().__init__(message, session_id=session_id)
        self.message_id = message_id


class VersionConflictError(StoreError):
    """A write made conditional on the session's version (``if_version=``) found another version:
    someone wrote the session since it was read; nothing was written. ``expected`` is the version
    the caller gave, ``actual`` the session's when the write was refused (0: no session; None:
    not known, when the write found it changed)."""

    def __init__(
        self, message: str, *, session_id: str | None = None, expected: int, actual: int | None
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.expected = expected
        self.actual = actual


class ToolExchangeError(InvalidInputError):
    """An edit or removal would break a tool exchange (a call left without its result, or a
    result without its call); nothing was written. Remove or edit the whole exchange (for
    example with ``truncate_after=True``)."""


class ProviderError(ChatStateError):
    """The model provider failed, or answered with something that is not an assistant message.

    ``status`` is the HTTP status of a provider that answered with an error (None otherwise), and
    ``provider_message`` the error message it gave; neither ever holds the API key.
    """

    def __init__(
        self, message: str, *, status: int | None = None, provider_message: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.provider_message = provider_message


class PipelineError(ChatStateError):
    """The middleware chain did not produce a reply, or is assembled wrongly."""


class ToolRoundsError(ChatStateError):
    """A turn's model still called tools after ``max_tool_rounds`` rounds of them
    (``ProviderMiddleware(tools=..., max_tool_rounds=...)``); nothing of the turn was stored.
    ``messages`` holds the turn so far (whole exchanges), for a caller that wants to see it."""

    def __init__(self, message: str, *, messages: Sequence[Message] = ()) -> None:
        super().__init__(message)
        self.messages: tuple[Message, ...] = tuple(messages)
