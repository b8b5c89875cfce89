"""LangChain's ``BaseChatMessageHistory`` over a chatstate store: ``pip install
'chatstate[langchain]'``.

::

    from langchain_core.runnables.history import RunnableWithMessageHistory
    from chatstate.integrations.langchain import ChatStateMessageHistory

    store = SQLiteStateStore("chat.db")
    chain = RunnableWithMessageHistory(
        prompt | model, lambda session_id: ChatStateMessageHistory(session_id, store), ...
    )
    await chain.ainvoke({"question": "Hi"}, config={"configurable": {"session_id": "u1"}})

Messages are kept as LangChain writes them (``message_to_dict``: their type, content, id, name,
tool calls, additional kwargs, response metadata...) and come back equal. See
docs/integrations/langchain.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NoReturn

from chatstate.integrations._items import item_store
from chatstate.stores import ItemStore, StateStore
from chatstate.stores.base import TTL

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "chatstate.integrations.langchain needs langchain-core: pip install 'chatstate[langchain]'"
    ) from exc

__all__ = ["ChatStateMessageHistory", "LangChainMessages"]


class LangChainMessages:
    """The :class:`~chatstate.stores.ItemFormat` of LangChain's messages: the JSON of
    ``message_to_dict``, read back by ``messages_from_dict``."""

    def dump(self, item: BaseMessage) -> bytes:
        if not isinstance(item, BaseMessage):
            raise TypeError(f"a LangChain message, got {type(item).__name__}")
        data = message_to_dict(item)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()

    def load(self, data: bytes) -> BaseMessage:
        return messages_from_dict([json.loads(data)])[0]


class ChatStateMessageHistory(BaseChatMessageHistory):
    """A LangChain chat message history kept in a chatstate store. The async methods are the
    interface (``RunnableWithMessageHistory`` calls them from ``ainvoke`` and ``astream``); the
    sync ones raise TypeError rather than block an event loop. See docs/integrations/langchain.md.

    :param session_id: the conversation (a chatstate session id).
    :param store: any chatstate store (its backend, keys, compression), or an
        :class:`~chatstate.stores.ItemStore` of :class:`LangChainMessages` to share.
    :param max_messages: keep only the newest that many (``None``: all), trimmed in the append's
        own step. With a store only: an item store has its own.
    :param ttl: forget the session that long after its last write (``None``: never). With a store
        only, likewise.
    """

    def __init__(
        self,
        session_id: str,
        store: ItemStore[BaseMessage] | StateStore,
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
    ) -> None:
        super().__init__()
        self.session_id = session_id
        self.items: ItemStore[BaseMessage] = item_store(
            store, LangChainMessages(), max_items=max_messages, ttl=ttl
        )
        """The item store the messages are kept in."""

    def __repr__(self) -> str:
        return f"ChatStateMessageHistory({self.session_id!r}, {self.items!r})"

    async def aget_messages(self) -> list[BaseMessage]:
        """The session's messages, oldest first."""
        return await self.items.get(self.session_id)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` in one atomic step (a turn's input and output together, as
        ``RunnableWithMessageHistory`` gives them, never interleaved with another writer's)."""
        if messages:
            await self.items.append(self.session_id, list(messages))

    async def aclear(self) -> None:
        """Forget every message of the session."""
        await self.items.delete(self.session_id)

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]  # a property, read-only
        """Not available: use ``await history.aget_messages()``."""
        _sync("messages", "aget_messages()")

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Not available: use ``await history.aadd_messages(messages)``."""
        _sync("add_messages()", "aadd_messages()")

    def clear(self) -> None:
        """Not available: use ``await history.aclear()``."""
        _sync("clear()", "aclear()")

    def __str__(self) -> str:
        return repr(self)


def _sync(name: str, instead: str) -> NoReturn:
    raise TypeError(
        f"ChatStateMessageHistory.{name} is not available: chatstate's stores are async; use "
        f"{instead} (RunnableWithMessageHistory does, from ainvoke and astream)"
    )
