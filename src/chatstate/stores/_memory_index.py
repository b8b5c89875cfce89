"""The conversation index of the in-memory backend: a user's conversations, with their last
activity and deadline, in a dict of this process."""

from __future__ import annotations

__all__ = ["ConversationIndex"]


class ConversationIndex:
    """Mixed into :class:`~chatstate.stores.memory.MemoryBackend`: its index methods."""

    # user session -> conversation id -> (last active, deadline): wall-clock seconds
    _conversations: dict[str, dict[str, tuple[float, float | None]]]

    async def index_conversation(
        self, user_session: str, conversation_id: str, *, now: float, ttl: float | None
    ) -> None:
        entries = self._conversations.setdefault(user_session, {})
        entries[conversation_id] = (now, None if ttl is None else now + ttl)

    async def list_conversations(
        self,
        user_session: str,
        *,
        now: float,
        offset: int,
        limit: int,
        after: tuple[float, str] | None = None,
    ) -> list[tuple[str, float]]:
        entries = self._conversations.get(user_session)
        if not entries:
            return []
        for conversation_id, (_, deadline) in list(entries.items()):
            if deadline is not None and deadline <= now:
                del entries[conversation_id]  # no entry outlives its conversation
        if not entries:
            del self._conversations[user_session]
            return []
        ordered = sorted(((at, member) for member, (at, _) in entries.items()), reverse=True)
        if after is not None:
            ordered = [pair for pair in ordered if pair < after]
        return [(member, at) for at, member in ordered[offset : offset + limit]]

    async def drop_conversations(self, user_session: str) -> list[str]:
        return list(self._conversations.pop(user_session, {}))
