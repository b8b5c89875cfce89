"""Session ids for the three usual patterns, and the conversations of a user.

- per user: ``user-{id}``, one history per user (:meth:`Conversations.user_session`);
- per conversation: ``user-{id}-conv-{cid}``, a user's separate chats
  (:meth:`Conversations.session_id`);
- temporary: ``tmp-`` and 128 random bits, unguessable, for anonymous visitors
  (:func:`temporary_session`).

:class:`Conversations` keeps an index of each user's conversations in the store, so listing them
(most recent first, paginated) never scans the keyspace, and erasing a user's data is one call.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from chatstate._background import concurrently
from chatstate._checks import MAX_SESSION_ID_LENGTH, check_session_id, check_ttl
from chatstate.errors import ConfigurationError, InvalidSessionIdError

__all__ = ["ConversationIndex", "ConversationSummary", "Conversations", "temporary_session"]

_CONV = "-conv-"


def temporary_session() -> str:
    """A fresh, unguessable session id (``tmp-`` and 128 random bits)."""
    return "tmp-" + secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A conversation of a user, as the index knows it."""

    conversation_id: str
    session_id: str
    last_active: datetime


@runtime_checkable
class ConversationIndex(Protocol):
    """What a store does to index conversations by user (both built-in stores do)."""

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        """Record activity of a conversation now; it leaves the index ``ttl`` seconds later."""

    async def list_conversations(
        self, user_session: str, *, now: float, offset: int, limit: int
    ) -> list[tuple[str, float]]:
        """``(conversation id, last active)`` pairs, most recent first; expired ones never."""

    async def drop_conversations(self, user_session: str) -> list[str]:
        """Forget the index; returns every conversation id it held."""


class Conversations:
    """The conversations of each user, over a store that can index them.

    After each turn of a conversation, :meth:`record` it (with the TTL the conversation's
    history has, so that no index entry outlives its session); :meth:`list` returns a user's
    conversations, most recent first, a page at a time, without scanning the keyspace;
    :meth:`erase` deletes every conversation of a user, the per-user history and the index.
    """

    def __init__(
        self,
        store: Any,
        *,
        ttl: timedelta | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(store, ConversationIndex):
            raise ConfigurationError(
                f"{type(store).__name__} cannot index conversations (no index_conversation())"
            )
        self.store: Any = store  # a StateStore that is a ConversationIndex too
        self.ttl = check_ttl(ttl)
        self._clock = clock

    @staticmethod
    def user_session(user_id: str) -> str:
        """The per-user session id: ``user-{id}``."""
        if not isinstance(user_id, str) or not user_id or _CONV in user_id:
            raise InvalidSessionIdError(
                f"a user id must be a non-empty str without {_CONV!r}, got {user_id!r}"
            )
        return check_session_id(f"user-{user_id}")

    def session_id(self, user_id: str, conversation_id: str) -> str:
        """The session id of one conversation of a user: ``user-{id}-conv-{cid}``."""
        if not isinstance(conversation_id, str) or not conversation_id:
            raise InvalidSessionIdError("a conversation id must be a non-empty str")
        session_id = f"{self.user_session(user_id)}{_CONV}{conversation_id}"
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            raise InvalidSessionIdError(
                f"user and conversation ids together are too long ({len(session_id)} characters "
                f"with the pattern; the limit is {MAX_SESSION_ID_LENGTH})"
            )
        return check_session_id(session_id)

    async def record(self, user_id: str, conversation_id: str) -> str:
        """Note that the conversation was active now; returns its session id."""
        session_id = self.session_id(user_id, conversation_id)
        await self.store.index_conversation(
            self.user_session(user_id), conversation_id, now=self._clock(), ttl=self.ttl
        )
        return session_id

    async def session_ids(self, user_id: str) -> list[str]:
        """The session ids of every live conversation of the user, most recent first, and the
        per-user session's last: what to export for a user (``export_sessions``)."""
        user_session = self.user_session(user_id)
        pairs = await self.store.list_conversations(
            user_session, now=self._clock(), offset=0, limit=1 << 30
        )
        return [*(self.session_id(user_id, cid) for cid, _ in pairs), user_session]

    async def list(
        self, user_id: str, *, limit: int = 20, offset: int = 0
    ) -> list[ConversationSummary]:
        """A page of the user's live conversations, most recently active first."""
        if type(limit) is not int or limit < 1 or type(offset) is not int or offset < 0:
            raise ConfigurationError(f"limit must be >= 1 and offset >= 0, got {limit}, {offset}")
        pairs = await self.store.list_conversations(
            self.user_session(user_id), now=self._clock(), offset=offset, limit=limit
        )
        return [
            ConversationSummary(cid, self.session_id(user_id, cid), datetime.fromtimestamp(at, UTC))
            for cid, at in pairs
        ]

    async def erase(self, user_id: str) -> int:
        """Delete every conversation of the user, the per-user history and the index (for a
        privacy request); returns how many conversations there were. Safe to repeat: the index
        goes last, so a failure halfway leaves nothing unlisted."""
        user_session = self.user_session(user_id)
        pairs = await self.store.list_conversations(user_session, now=0.0, offset=0, limit=1 << 30)
        ids = [cid for cid, _ in pairs]
        delete = self.store.delete
        await concurrently(delete, [*(self.session_id(user_id, cid) for cid in ids), user_session])
        dropped = await self.store.drop_conversations(user_session)
        known = set(ids)
        stragglers = [cid for cid in dropped if cid not in known]  # recorded meanwhile
        await concurrently(delete, [self.session_id(user_id, cid) for cid in stragglers])
        return len(ids) + len(stragglers)
