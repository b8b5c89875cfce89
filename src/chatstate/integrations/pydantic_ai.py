"""pydantic-ai's message history in a chatstate store: ``pip install 'chatstate[pydantic-ai]'``.

::

    from chatstate.integrations.pydantic_ai import ChatStateMessageHistory

    history = ChatStateMessageHistory(store, max_messages=200)
    result = await agent.run(prompt, message_history=await history.load("user-42"))
    await history.append("user-42", result.new_messages())

Each ``ModelMessage`` (a ``ModelRequest`` or a ``ModelResponse``, with every part) is stored
through pydantic-ai's own ``ModelMessagesTypeAdapter`` and comes back equal. See
docs/integrations/pydantic-ai.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from chatstate.integrations._items import item_store
from chatstate.stores import ItemStore, StateStore
from chatstate.stores.base import TTL

try:
    from pydantic_ai.messages import (
        ModelMessage,
        ModelMessagesTypeAdapter,
        ModelRequest,
        SystemPromptPart,
        UserPromptPart,
    )
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "chatstate.integrations.pydantic_ai needs pydantic-ai: pip install 'chatstate[pydantic-ai]'"
    ) from exc

__all__ = ["ChatStateMessageHistory", "ModelMessages"]


class ModelMessages:
    """The :class:`~chatstate.stores.ItemFormat` of pydantic-ai's messages: each one's JSON
    as ``ModelMessagesTypeAdapter`` writes it (a list of one), read back by it."""

    def dump(self, item: ModelMessage) -> bytes:
        return ModelMessagesTypeAdapter.dump_json([item])

    def load(self, data: bytes) -> ModelMessage:
        (message,) = ModelMessagesTypeAdapter.validate_json(data)
        return message


class ChatStateMessageHistory:
    """Sessions of pydantic-ai ``ModelMessage`` lists in a chatstate store. A history read from a
    bounded session (or with ``limit``) starts at its first turn: the messages before its first
    user or system prompt are left out. See docs/integrations/pydantic-ai.md.

    :param store: any chatstate store (its backend, keys, compression), or an
        :class:`~chatstate.stores.ItemStore` of :class:`ModelMessages`.
    :param max_messages: keep only the newest that many messages of a session (``None``: all),
        trimmed in the append's own step. With a store only: an item store has its own.
    :param ttl: forget a session that long after its last write (``None``: never). With a store
        only, likewise.
    """

    def __init__(
        self,
        store: ItemStore[ModelMessage] | StateStore,
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> None:
        self.items: ItemStore[ModelMessage] = item_store(
            store, ModelMessages(), max_items=max_messages, ttl=ttl
        )
        """The item store the messages are kept in."""

    def __repr__(self) -> str:
        return f"ChatStateMessageHistory({self.items!r})"

    async def load(self, session_id: str, *, limit: int | None = None) -> list[ModelMessage]:
        """The session's messages (the newest ``limit``, from the first turn among them),
        oldest first: what ``agent.run(..., message_history=...)`` takes."""
        messages = await self.items.get(session_id, limit=limit)
        for index, message in enumerate(messages):
            if _starts_a_turn(message):
                return messages[index:]
        return []

    async def append(self, session_id: str, messages: Sequence[ModelMessage]) -> int:
        """Append ``messages`` (a run's ``result.new_messages()``) in one atomic step; the
        session's length after it."""
        return await self.items.append(session_id, list(messages))

    async def save(self, session_id: str, messages: Sequence[ModelMessage]) -> None:
        """Make ``messages`` (a run's ``result.all_messages()``) the whole session, atomically
        (none: forget it)."""
        await self.items.replace(session_id, list(messages))

    async def clear(self, session_id: str) -> bool:
        """Forget the session; whether it existed."""
        return await self.items.delete(session_id)


def _starts_a_turn(message: ModelMessage) -> bool:
    return isinstance(message, ModelRequest) and any(
        isinstance(part, UserPromptPart | SystemPromptPart) for part in message.parts
    )
