"""LlamaIndex's ``BaseChatStore`` over a chatstate store: ``pip install
'chatstate[llama-index]'``.

::

    from llama_index.core.memory import ChatMemoryBuffer
    from chatstate.integrations.llama_index import ChatStateChatStore

    chat_store = ChatStateChatStore(SQLiteStateStore("chat.db"), max_messages=200)
    memory = ChatMemoryBuffer.from_defaults(chat_store=chat_store, chat_store_key="user-42")

Messages (``ChatMessage``: role, blocks, additional kwargs) are kept as LlamaIndex writes them
(``model_dump_json``) and come back equal. See docs/integrations/llama-index.md.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
from pydantic import PrivateAttr

from chatstate.errors import ChatStateError, StoreError
from chatstate.integrations._items import item_store
from chatstate.stores import ItemStore, StateStore
from chatstate.stores.base import TTL
from chatstate.stores.urls import open_store

try:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.storage.chat_store.base import BaseChatStore
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "chatstate.integrations.llama_index needs llama-index-core: "
        "pip install 'chatstate[llama-index]'"
    ) from exc

__all__ = ["ChatStateChatStore", "LlamaIndexMessages"]

R = TypeVar("R")

_ALL = 1 << 62
"""A pop of every entry: more than any session holds."""


class LlamaIndexMessages:
    """The :class:`~chatstate.stores.ItemFormat` of LlamaIndex's ``ChatMessage``: its
    ``model_dump_json``, read back by ``model_validate_json``."""

    def dump(self, item: ChatMessage) -> bytes:
        if not isinstance(item, ChatMessage):
            raise TypeError(f"a LlamaIndex ChatMessage, got {type(item).__name__}")
        return item.model_dump_json().encode()

    def load(self, data: bytes) -> ChatMessage:
        return ChatMessage.model_validate_json(data)


class ChatStateChatStore(BaseChatStore):
    """A LlamaIndex chat store (its ``BaseChatStore``) kept in a chatstate store: a key is a
    chatstate session. Every method has its async twin; the sync ones run on the event loop the
    chat store was last used on from async code, if it still runs, else on one of its own in a
    thread (:meth:`close` ends it). A Redis store's connections belong to one event loop: use a
    chat store on Redis from async code, or from sync code only. See
    docs/integrations/llama-index.md.

    :param store: any chatstate store (its backend, keys, compression), or an
        :class:`~chatstate.stores.ItemStore` of :class:`LlamaIndexMessages`.
    :param max_messages: keep only the newest that many messages of a key (``None``: all), trimmed
        in the append's own step. With a store only: an item store has its own.
    :param ttl: forget a key that long after its last write (``None``: never). With a store only,
        likewise.
    :param owns_store: :meth:`close` (or :meth:`aclose`) closes ``store`` too.
    """

    _items: ItemStore[ChatMessage] = PrivateAttr()
    _token: Any = PrivateAttr(default=None)
    _portal: Any = PrivateAttr(default=None)
    _portal_manager: AbstractContextManager[Any] | None = PrivateAttr(default=None)
    _owned: Any = PrivateAttr(default=None)

    def __init__(
        self,
        store: ItemStore[ChatMessage] | StateStore,
        *,
        max_messages: int | None = None,
        ttl: TTL = None,
        owns_store: bool = False,
    ) -> None:
        super().__init__()
        self._items = item_store(store, LlamaIndexMessages(), max_items=max_messages, ttl=ttl)
        if owns_store:
            self._owned = store

    @classmethod
    def from_url(cls, url: str, **options: Any) -> ChatStateChatStore:
        """A chat store on a store of its own, from a URL (``sqlite:///chat.db``,
        ``redis://...``: see :func:`chatstate.open_store`), closed by :meth:`close` (or
        :meth:`aclose`). ``options`` as for the constructor."""
        return cls(open_store(url), owns_store=True, **options)

    @classmethod
    def class_name(cls) -> str:
        return "ChatStateChatStore"

    @property
    def items(self) -> ItemStore[ChatMessage]:
        """The item store the messages are kept in."""
        return self._items

    # -- async -----------------------------------------------------------------------------------

    async def aset_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """Make ``messages`` the whole history of ``key``, atomically."""
        self._seen_loop()
        await self._items.replace(key, messages)

    async def aget_messages(self, key: str) -> list[ChatMessage]:
        """The messages of ``key``, oldest first (none for an unknown key)."""
        self._seen_loop()
        return await self._items.get(key)

    async def async_add_message(self, key: str, message: ChatMessage) -> None:
        """Append ``message`` to ``key``'s history."""
        self._seen_loop()
        await self._items.append(key, [message])

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        """Remove every message of ``key`` and return them, in one atomic step; None if it has
        none."""
        self._seen_loop()
        return await self._items.pop(key, _ALL) or None

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Remove the message at ``idx`` and return it; None if ``key`` has no messages or
        ``idx`` is past its end. The last message is removed by one atomic pop; another by
        reading the history and writing it back without it, under the key's lease (atomic
        against other writers that hold the lease, not against plain appends)."""
        self._seen_loop()
        messages = await self._items.get(key)
        if not messages or idx >= len(messages):
            return None
        if idx in (-1, len(messages) - 1):
            return await self.adelete_last_message(key)
        async with self._items.lease(key, ttl=30, timeout=30):
            messages = await self._items.get(key)
            if idx >= len(messages):
                return None
            removed = messages.pop(idx)
            await self._items.replace(key, messages)
        return removed

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        """Remove the newest message of ``key`` and return it, in one atomic step; None if it
        has none."""
        self._seen_loop()
        popped = await self._items.pop(key)
        return popped[0] if popped else None

    async def aget_keys(self) -> list[str]:
        """Every key (session) of the store."""
        self._seen_loop()
        try:
            return [key async for key in self._items.backend.session_ids()]
        except ChatStateError:
            raise
        except Exception as exc:
            if self._items.backend.error_kind(exc) is None:
                raise
            raise StoreError(f"listing the sessions failed: {type(exc).__name__}: {exc}") from exc

    # -- sync ------------------------------------------------------------------------------------

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """:meth:`aset_messages`, from sync code."""
        self._call(self.aset_messages, key, messages)

    def get_messages(self, key: str) -> list[ChatMessage]:
        """:meth:`aget_messages`, from sync code."""
        return self._call(self.aget_messages, key)

    def add_message(self, key: str, message: ChatMessage) -> None:
        """:meth:`async_add_message`, from sync code."""
        self._call(self.async_add_message, key, message)

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """:meth:`adelete_messages`, from sync code."""
        return self._call(self.adelete_messages, key)

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """:meth:`adelete_message`, from sync code."""
        return self._call(self.adelete_message, key, idx)

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """:meth:`adelete_last_message`, from sync code."""
        return self._call(self.adelete_last_message, key)

    def get_keys(self) -> list[str]:
        """:meth:`aget_keys`, from sync code."""
        return self._call(self.aget_keys)

    def close(self) -> None:
        """From sync code: close the store it owns (``owns_store``, :meth:`from_url`), and end
        the event loop thread of the sync methods, if one was started. Idempotent."""
        owned, self._owned = self._owned, None
        try:
            if owned is not None:
                self._call(owned.aclose)
        finally:
            manager, self._portal_manager, self._portal = self._portal_manager, None, None
            if manager is not None:
                manager.__exit__(None, None, None)

    async def aclose(self) -> None:
        """From async code: close the store it owns (``owns_store``, :meth:`from_url`).
        Idempotent."""
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.aclose()

    def _seen_loop(self) -> None:
        self._token = anyio.lowlevel.current_token()

    def _call(self, function: Callable[..., Coroutine[Any, Any, R]], *args: Any) -> R:
        try:
            anyio.lowlevel.current_token()
        except RuntimeError:
            pass  # no event loop in this thread: waiting here blocks nothing
        else:
            raise RuntimeError(
                "a sync method of ChatStateChatStore was called on a thread that runs an event "
                "loop, which waiting would block: use its async twin (aget_messages, "
                "async_add_message...), or the async methods of LlamaIndex (achat, aget)"
            )
        token = self._token
        if token is not None and _running(token):
            return anyio.from_thread.run(function, *args, token=token)
        if self._portal is None:
            self._portal_manager = anyio.from_thread.start_blocking_portal()
            self._portal = self._portal_manager.__enter__()
        result: R = self._portal.call(function, *args)
        return result


def _running(token: Any) -> bool:
    """Whether the event loop of ``token`` still runs (asyncio: the loop itself; trio: its
    token, which says nothing of that, so it is taken as running)."""
    is_running = getattr(token.native_token, "is_running", None)
    return True if is_running is None else bool(is_running())
