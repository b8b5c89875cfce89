"""The OpenAI Agents SDK's ``Session`` over a chatstate store: ``pip install
'chatstate[openai-agents]'``.

::

    from agents import Agent, Runner
    from chatstate.integrations.openai_agents import ChatStateSession
    from chatstate.stores import SQLiteStateStore

    async with SQLiteStateStore("agents.db") as store:
        session = ChatStateSession("user-42", store, max_items=500, ttl=timedelta(days=7))
        result = await Runner.run(agent, "Hello", session=session)

The session's items (the Responses API's input items: messages, function calls and their
outputs, reasoning items...) are stored exactly as the SDK gives them, as JSON, and come back
equal, in order; each ``add_items`` call is one atomic append, never interleaved with another
instance's. See docs/integrations/openai-agents.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from chatstate.integrations._items import item_store
from chatstate.stores import ItemStore, JsonItems, StateStore
from chatstate.stores.base import TTL

try:
    from agents.memory.session_settings import (
        SessionSettings,
        coerce_session_settings,
        resolve_session_limit,
    )
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "chatstate.integrations.openai_agents needs the OpenAI Agents SDK: "
        "pip install 'chatstate[openai-agents]'"
    ) from exc

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

__all__ = ["ChatStateSession"]


class ChatStateSession:
    """A session of the OpenAI Agents SDK (its ``Session`` protocol) kept in a chatstate store.
    Writes run to completion even if the caller is cancelled meanwhile (the cancellation is raised
    after), as the SDK's own sessions do. See docs/integrations/openai-agents.md.

    :param session_id: the conversation (a chatstate session id: 1 to 256 printable characters).
    :param store: any chatstate store (its backend, keys, compression), or an
        :class:`~chatstate.stores.ItemStore` to share among many sessions.
    :param max_items: keep only the newest that many items (``None``: all), trimmed in the
        append's own step. With a store only: an item store has its own.
    :param ttl: forget the session that long after its last write (``None``: never). With a store
        only, likewise.
    :param session_settings: the SDK's ``SessionSettings`` (or a dict of them): its ``limit`` is
        what :meth:`get_items` returns when called without one.
    """

    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        store: ItemStore[Any] | StateStore,
        *,
        max_items: int | None = None,
        ttl: TTL = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        self.session_id = session_id
        self.items: ItemStore[Any] = item_store(store, JsonItems(), max_items=max_items, ttl=ttl)
        """The item store the session's items are kept in."""
        self.session_settings = (
            SessionSettings()
            if session_settings is None
            else coerce_session_settings(session_settings)
        )

    def __repr__(self) -> str:
        return f"ChatStateSession({self.session_id!r}, {self.items!r})"

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The latest ``limit`` items in chronological order (``limit`` None: the session
        settings' ``limit``, and if that is None too, every item; 0 or less: none)."""
        resolved = resolve_session_limit(limit, self.session_settings)
        if resolved is not None and resolved <= 0:
            return []
        return await self.items.get(self.session_id, limit=resolved)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append ``items`` to the history, in one atomic step."""
        if not items:
            return
        with anyio.CancelScope(shield=True):
            await self.items.append(self.session_id, items)
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the most recent item; None if the session is empty."""
        with anyio.CancelScope(shield=True):
            popped = await self.items.pop(self.session_id)
        await anyio.lowlevel.checkpoint_if_cancelled()
        return popped[0] if popped else None

    async def clear_session(self) -> None:
        """Remove every item of the session."""
        with anyio.CancelScope(shield=True):
            await self.items.delete(self.session_id)
        await anyio.lowlevel.checkpoint_if_cancelled()
