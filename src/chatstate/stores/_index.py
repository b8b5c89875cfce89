"""The conversation index and the listing of sessions, for a core store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from chatstate._checks import check_session_id
from chatstate.errors import StoreError
from chatstate.stores._reporting import Reporting, clock

__all__ = ["Listing"]

T = TypeVar("T")


class Listing(Reporting):
    """What a core store (:class:`~chatstate.stores.BackendStore`) lists: the conversations of a
    user (see :class:`~chatstate.sessions.Conversations`) and every session."""

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        """Record a conversation of a user."""
        user_session = check_session_id(user_session)
        await self._index(
            user_session,
            self.backend.index_conversation(user_session, conversation_id, now=now, ttl=ttl),
        )

    async def list_conversations(
        self,
        user_session: str,
        *,
        now: float,
        offset: int,
        limit: int,
        after: tuple[float, str] | None = None,
    ) -> list[tuple[str, float]]:
        """A user's live sessions, most recent first (see ``Conversations.page``); with
        ``after``, those after that ``(last active, member)``."""
        user_session = check_session_id(user_session)
        # Only when given: a backend of one's own may take no cursor.
        cursor = {} if after is None else {"after": after}
        return await self._index(
            user_session,
            self.backend.list_conversations(
                user_session, now=now, offset=offset, limit=limit, **cursor
            ),
        )

    async def drop_conversations(self, user_session: str) -> list[str]:
        """Forget a user's index; returns the conversation ids it held."""
        user_session = check_session_id(user_session)
        return await self._index(user_session, self.backend.drop_conversations(user_session))

    async def _index(self, user_session: str, call: Awaitable[T]) -> T:
        started = clock()
        try:
            result = await call
        except Exception as exc:
            doing = "indexing the conversations of"
            self._fail(exc, "index", user_session, started, StoreError, doing)
        self._report("index", user_session, started)
        return result

    async def session_ids(self) -> AsyncIterator[str]:
        """The ids of every live session, in no particular order."""
        try:
            async for session_id in self.backend.session_ids():
                yield session_id
        except Exception as exc:
            if self.backend.error_kind(exc) is None:
                raise
            raise StoreError(f"listing the sessions failed: {type(exc).__name__}: {exc}") from exc
